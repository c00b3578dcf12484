"""`noisybench status SWEEP_DIR` and `noisybench train ... --dry-run` (docs/sweeps.md, "The state of a sweep").

Both list every job of a grid with its state, read from the directories only (so for every launcher,
local or SLURM, and while the sweep runs) and without writing anything:

    finished     result.json                      (its selected-epoch test score)
    diverged     result.json that says diverged   (its message)
    failed       failed.json                      (its one-line reason)
    running      a live lock on the run directory (its epoch, from metrics.csv; who holds it)
    unfinished   a checkpoint, or a start without one (the checkpoint's epoch)
    not started  no run directory yet

The grid is the one `noisybench train` would run: `status` reads the sweep's saved command
(multirun.yaml, as `--resume` does) and expands it with the preflight's own machinery
(noisybench.preflight), so each job's directory name (its overrides and identity hash,
noisybench.rundir.job_dirname) is computed, not guessed. Run directories on disk that are not in the
grid (another grid into the same sweep directory, an Optuna search's trials) are listed too.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from noisybench.errors import NoisybenchError, one_line
from noisybench.locks import holder
from noisybench.rundir import ATTEMPT, CHECKPOINT, CHECKSUM, FAILED, IDENTITY, RESULT, RESULT_KEYS, read_json_object
from noisybench.study import DEFAULT_STUDY, is_study_sweeper, study_line

STATES = ("finished", "diverged", "failed", "running", "unfinished", "not started")
LEFT = ("failed", "unfinished", "not started")  # what rerunning the sweep would run
RUN_FILES = (RESULT, FAILED, CHECKPOINT, IDENTITY, ATTEMPT)  # any of them: a run directory
NOTHING_LEFT = "nothing left to run"


@dataclass
class Job:
    name: str  # the run directory's name (its overrides and identity hash)
    path: Path
    state: str
    detail: str = ""
    in_grid: bool = True


def _epochs_of(d: Path) -> int | None:
    ident = read_json_object(d / IDENTITY, ("config",))[0] or {}
    epochs = ((ident.get("config") or {}).get("trainer") or {}).get("epochs")
    return epochs if isinstance(epochs, int) else None


def _metric_rows(d: Path) -> int:
    try:
        return max(0, len((d / "metrics.csv").read_text().splitlines()) - 1)
    except (OSError, UnicodeDecodeError):
        return 0


def run_state(d: Path) -> tuple[str, str]:
    """(state, detail) of one run directory, from its files and its lock; writes nothing."""
    epochs = _epochs_of(d)
    of = f" of {epochs}" if epochs is not None else ""
    result = read_json_object(d / RESULT, RESULT_KEYS)[0]
    if result is not None:
        div = result.get("diverged")
        if div:
            return "diverged", str(div.get("message", "diverged") if isinstance(div, dict) else div)
        sel, val = result.get("test_selected"), result.get("val_selected")
        score = "n/a" if not isinstance(sel, (int, float)) else f"{sel:.4f}"
        return "finished", f"test_selected={score}" + (f" val_selected={val:.4f}" if isinstance(val, float) else "")
    who = holder(d)
    if who is not None:
        return "running", f"epoch {_metric_rows(d)}{of} done ({who})"
    failed = read_json_object(d / FAILED)[0]
    if failed is not None or (d / FAILED).exists():
        return "failed", one_line((failed or {}).get("error", "failed.json cannot be read"))
    if (d / CHECKPOINT).exists():
        pos = read_json_object(d / CHECKSUM)[0] or {}
        epoch, batch = pos.get("epoch"), pos.get("batch")
        if not isinstance(epoch, int):
            return "unfinished", f"checkpoint (position not recorded; metrics.csv has {_metric_rows(d)}{of} epochs)"
        return "unfinished", f"checkpoint after epoch {epoch}{of}" + (f", batch {batch}" if batch else "")
    if any((d / f).exists() for f in (IDENTITY, ATTEMPT)):
        return "unfinished", "no checkpoint: starts again from epoch 0"
    return "not started", ""


def _run_dirs(root: Path) -> list[Path]:
    """Every run directory under `root` (one with a run's files), itself included."""
    found = {p.parent for name in RUN_FILES for p in root.rglob(name)}
    return sorted(d for d in found if ".submitit" not in d.parts)


@dataclass
class Plan:
    sweep_dir: Path
    jobs: list[tuple[str, Path]]  # (job name, run directory) of the grid, in launch order
    planned: int | None  # None: the sweeper decides the jobs as it goes (Optuna)
    sweeper: object = None  # the sweep's hydra.sweeper config
    single: bool = False


def plan(args: list[str]) -> Plan:
    """The jobs `noisybench train ARGS` would run and their directories (composed as preflight does)."""
    from hydra.types import RunMode

    from noisybench.config import CONFIG_NAME, config_path, register_resolvers
    from noisybench.preflight import _Checker, config_loader, parse_args
    from noisybench.rundir import job_dirname_of

    register_resolvers()
    ns = parse_args(args)
    if ns is None:
        raise NoisybenchError(f"cannot read the command line: noisybench train {' '.join(args)}")
    checker = _Checker(*config_loader(ns, config_path(), CONFIG_NAME))
    overrides = list(ns.overrides)
    if not checker.mode_is_multirun(ns):
        run_dir = Path(str(checker.compose(overrides).hydra.run.dir))
        return Plan(run_dir, [(run_dir.name, run_dir)], 1, single=True)
    master = checker.compose(overrides, RunMode.MULTIRUN)
    sweep_dir = Path(str(master.hydra.sweep.dir))
    hydra_overrides, jobs, planned = checker.jobs(overrides)
    if planned is None:
        return Plan(sweep_dir, [], None, master.hydra.sweeper)
    if OmegaConf.to_container(master.hydra.sweep, resolve=False).get("subdir") != "${nb_job_dir:}":
        return Plan(sweep_dir, [], None, master.hydra.sweeper)  # a subdir of its own: found on disk only
    named = []
    for job in jobs:
        name = job_dirname_of(job, checker.fast_config(hydra_overrides, job))
        named.append((name, sweep_dir / name))
    return Plan(sweep_dir, named, planned, master.hydra.sweeper)


def saved_command(sweep_dir: Path) -> tuple[list[str], list[str]] | None:
    """(the `noisybench train` arguments that made `sweep_dir`, into it again; the saved hydra overrides left
    out). The saved command is a file like any other in the directory: its hydra.* overrides that could load
    code or config folders from elsewhere (noisybench.resume.risky: hydra.searchpath, callbacks, ...) are
    left out. Composing the rest builds nothing: no `_target_` is called, no data is read."""
    from noisybench.resume import _DROPPED, _key, _saved, risky

    if not (sweep_dir / "multirun.yaml").is_file():
        return None
    _, task, hyd = _saved(sweep_dir)
    hyd = [o for o in hyd if not _key(o).startswith(_DROPPED)]
    left_out = [o for o in hyd if risky(o) and _key(o).startswith("hydra.")]
    keep = [o for o in hyd if o not in left_out]
    return ["-m", *task, *keep, f"hydra.sweep.dir={sweep_dir}"], left_out


def collect(p: Plan, root: Path | None = None) -> list[Job]:
    """The grid's jobs with their states, then the run directories under `root` outside the grid."""
    out, seen = [], set()
    for name, d in p.jobs:
        state, detail = run_state(d) if d.is_dir() else ("not started", "")
        out.append(Job(name, d, state, detail))
        seen.add(d.resolve())
    root = p.sweep_dir if root is None else root
    if root.is_dir() and not p.single:
        for d in _run_dirs(root):
            if d.resolve() not in seen:
                state, detail = run_state(d)
                out.append(Job(str(d.relative_to(root)) if d != root else d.name, d, state, detail,
                               in_grid=not p.jobs))
    return out


def counts_line(jobs: list[Job]) -> str:
    n = {s: sum(j.state == s for j in jobs) for s in STATES}
    return f"{len(jobs)} job{'' if len(jobs) == 1 else 's'}: " + ", ".join(f"{n[s]} {s}" for s in STATES)


def table(jobs: list[Job], only: set[str] | None = None) -> list[str]:
    shown = [j for j in jobs if only is None or j.state in only]
    width = max([len(j.name) for j in shown] + [3])
    lines = [f"{'state':<12} {'job':<{width}}  detail"] if shown else []
    for j in shown:
        extra = "" if j.in_grid else " [not in this grid]"
        lines.append(f"{j.state:<12} {j.name:<{width}}  {j.detail}{extra}".rstrip())
    return lines


def _study_summary(p: Plan) -> tuple[str, int] | None:
    """(the Optuna study's line, trials still to run: to ask, or left running by an interrupted search) for a
    sweep whose sweeper is noisybench's; None for another sweeper."""
    if p.sweeper is None or not is_study_sweeper(p.sweeper):
        return None
    try:
        storage = OmegaConf.select(p.sweeper, "storage")
        name = OmegaConf.select(p.sweeper, "study_name") or DEFAULT_STUDY
        n_trials = OmegaConf.select(p.sweeper, "n_trials")
    except Exception:  # an interpolation that cannot be resolved here: say nothing
        return None
    if storage is None:
        return "Optuna study in memory (hydra.sweeper.storage=null): nothing kept between commands", n_trials
    return study_line(storage, name, n_trials) or (f"Optuna study {name}: no trial yet ({storage})", n_trials)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as every bad input (argparse prints its usage first)
        raise NoisybenchError(f"{message}; usage: noisybench status SWEEP_DIR [--only STATE[,STATE]]")


def status_main(args: list[str]) -> int:
    try:
        return _status(args)
    except NoisybenchError as e:
        print(f"noisybench: error: {one_line(e)}", file=sys.stderr)
        return 2


def _status(args: list[str]) -> int:
    ap = _Parser(prog="noisybench status",
                                 description="Every job of a sweep with its state, read from its directories "
                                             "(any launcher, also while the sweep runs); writes nothing.")
    ap.add_argument("sweep_dir", type=Path, help="a sweep directory (or one run directory)")
    ap.add_argument("--only", default="", metavar="STATE[,STATE]",
                    help=f"list only jobs in these states: {', '.join(s.replace(' ', '_') for s in STATES)}")
    ap.add_argument("--json", action="store_true", help="one JSON object (jobs, counts, next step) for scripts")
    a = ap.parse_args(args)
    only = {s.strip().replace("_", " ") for s in a.only.split(",") if s.strip()} or None
    bad = sorted((only or set()) - set(STATES))
    if bad:
        print(f"noisybench: error: --only {','.join(bad)}: not a state; use "
              f"{', '.join(s.replace(' ', '_') for s in STATES)} (comma-separated)", file=sys.stderr)
        return 2
    d = a.sweep_dir
    if not d.is_dir():
        print(f"noisybench: error: {d} is not a directory; give a sweep directory (the one noisybench train -m "
              "printed), e.g. noisybench status multirun/2026-11-30/12-00-00-ab12cd", file=sys.stderr)
        return 2
    try:
        p, note = _plan_of(d)
    except Exception as e:  # a grid that no longer composes (a config removed since): the disk alone
        p, note = Plan(d, [], None), f"grid unknown ({one_line(e)[:200]}); listing the run directories found"
    jobs = collect(p)
    if not jobs:
        print(f"noisybench: error: {d} holds no run directory and no saved sweep (multirun.yaml); give a sweep "
              "or run directory", file=sys.stderr)
        return 1
    who = holder(d) if not p.single else None
    nxt = next_step(p, jobs, d, who)
    if a.json:
        shown = [j for j in jobs if only is None or j.state in only]
        print(json.dumps({"sweep_dir": str(d), "grid": note, "sweep_process": who,
                          "study": (_study_summary(p) or (None,))[0],
                          "counts": {s: sum(j.state == s for j in jobs) for s in STATES}, "next": nxt,
                          "jobs": [{"name": j.name, "dir": str(j.path), "state": j.state, "detail": j.detail,
                                    "in_grid": j.in_grid} for j in shown]}, indent=1))
    else:
        print("\n".join(_report(p, jobs, only, note, d, who, nxt)))
    return 0 if nxt == NOTHING_LEFT else 1


def _plan_of(d: Path) -> tuple[Plan, str]:
    saved = saved_command(d)
    if saved is None:
        if any((d / f).exists() for f in RUN_FILES):
            return Plan(d, [(d.name, d)], 1, single=True), "one run directory"
        return Plan(d, [], None), "no multirun.yaml (grid unknown): the run directories found"
    cmd, left_out = saved
    p = plan(cmd)
    p.sweep_dir = d
    p.jobs = [(name, d / name) for name, _ in p.jobs]
    note = (f"grid of {p.planned} jobs from multirun.yaml" if p.planned is not None
            else "jobs decided by the sweeper as it goes: the run directories found")
    if left_out:
        keys = ", ".join(o.split("=", 1)[0].lstrip("+~") for o in left_out)
        note += f"; its saved {keys} left out (they could load code)"
    return p, note



def _report(p: Plan, jobs: list[Job], only, note: str, d: Path, who: str | None, nxt: str) -> list[str]:
    lines = [f"sweep {d} ({note})"]
    if who is not None:
        lines.append(f"a sweep process works in it: {who}")
    study = _study_summary(p)
    if study:
        lines.append(study[0])
    lines += table(jobs, only)
    lines.append(counts_line(jobs))
    lines.append(nxt)
    return lines


def next_step(p: Plan, jobs: list[Job], d: Path, sweep_holder: str | None) -> str:
    """What runs what is left: the same sweep again (finished jobs are skipped; an Optuna search asks
    for the trials it still lacks)."""
    running = sum(j.state == "running" for j in jobs)
    study = _study_summary(p) if p.planned is None else None
    if study is not None:  # a search: its failed trials are final; interrupted ones are running trials
        left, what = study[1], f"{study[1]} trials of the search left to run (interrupted ones resume)"
    else:
        left = sum(j.state in LEFT for j in jobs)
        what = f"{left} left to run"
    if not left and not running:
        return NOTHING_LEFT
    cmd = f"noisybench train --resume {d}"
    if sweep_holder is not None or running:
        return (f"{what}; {running} running: when the sweep has ended (two processes in one directory are "
                f"refused), run what is left with: {cmd}")
    return f"{what}; run it with: {cmd}"


def dry_run(args: list[str]) -> int:
    """`noisybench train ARGS --dry-run`: every job with the state it would find; nothing runs, nothing is
    written (called after the preflight has checked every job)."""
    p = plan(args)
    jobs = collect(p)
    kind = "run" if p.single else "sweep"
    named = any(a.split("=", 1)[0].lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") for a in args)
    head = f"dry run: {kind} {p.sweep_dir}" + ("" if p.sweep_dir.exists() else " (new: every job would start)")
    if not named and not p.sweep_dir.exists():
        head += f"; a default directory is new for every command: name it (hydra.{kind}.dir=DIR) to resume one"
    lines = [head]
    study = _study_summary(p)
    if study:
        lines.append(study[0])
    if p.planned is None and not p.single:
        lines.append("the sweeper decides its jobs as it goes: " + (f"{len(jobs)} run directories there so far"
                                                                   if jobs else "none there yet"))
    lines += table(jobs)
    skip = sum(j.state in ("finished", "diverged") for j in jobs)
    busy = sum(j.state == "running" for j in jobs)
    if p.planned is None and not p.single:  # the search's own count, not the directories'
        more = f"{study[1]} more trials" if study else "the trials it chooses"
        lines.append(counts_line(jobs) + f"; the search would run {more}")
    else:
        refuse = f", refuse {busy} (running)" if busy else ""
        lines.append(counts_line(jobs) + f"; would skip {skip} (finished){refuse}, run {len(jobs) - skip - busy}")
    print("\n".join(lines))
    return 0
