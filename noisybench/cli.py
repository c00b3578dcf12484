"""`noisybench <subcommand>`: train (a Hydra app), noise, report."""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import shlex
import signal
import sys
import time
from pathlib import Path

from noisybench import __version__, cluster
from noisybench.completion import completion_main, hydra_shell_completion
from noisybench.config import CONFIG_NAME, config_path, hydra_context, register_resolvers
from noisybench.errors import ConfigError, NoisybenchError, one_line
from noisybench.hydra_errors import condense, missing_key_hint
from noisybench.locks import Refused, release_all

# preflight(args) -> (error line or None, number of jobs or None): every job checked first
from noisybench.preflight import preflight
from noisybench.resume import HYDRA_FLAGS as _HYDRA_FLAGS
from noisybench.resume import resume_args
from noisybench.rundir import Interrupted
from noisybench.threads import ThreadsCallback
from noisybench.utils import atomic_write_json

USAGE = """usage: noisybench <command> [args]

commands:
  train [overrides]   train one run; `train -m a=1,2 b=x,y` sweeps the grid (Hydra multirun)
                      e.g. noisybench train method=dal noise.rate=0.4
                      `noisybench train --help` lists the config groups and options
  noise [overrides]   build the dataset and the noise only: print the realised noise rate and
                      transition matrix, write noise.json and transition_matrix.png (no training)
                      e.g. noisybench noise dataset=fashion_mnist noise=instance noise.rate=0.4
  report PATH...      rebuild summary.csv and tables from run or sweep directories
                      (`--tune optim.optimizer.lr`: pick the lr per cell by validation;
                      `-f html -o DIR`: one self-contained report.html with tables and figures)
  plot PATH...        figures from run or sweep directories into PATH/figures (or -o DIR): accuracy
                      vs noise, learning curves and memorisation, method diagnostics, PDF and PNG
  status SWEEP_DIR    every job of a sweep with its state (finished, diverged, failed, running,
                      unfinished, not started), counts, and the command that runs what is left;
                      `train -m ... --dry-run` lists the jobs a command would run (nothing runs)
  completion bash     print a bash completion script: eval "$(noisybench completion bash)"

Interrupted? Run the same command again (or `noisybench train --resume DIR`): finished runs are
skipped, interrupted ones continue from their checkpoint, failed ones are retried.

Results: each run directory gets result.json, metrics.csv and noise.json; each sweep
directory gets summary.csv and table.md.
"""

log = logging.getLogger("noisybench")
_FAILURES: list[tuple[str, str, int]] = []  # (run_dir, message, exit code) of this process's failed runs
# Exit codes, everywhere: 0 success; 2 the command or the config is wrong (fix the command line);
# 1 the data, the environment or a run failed (or diverged); 128+N a signal N stopped it (130 Ctrl-C).
EXIT_USAGE, EXIT_FAILED = 2, 1


def exit_code(e: BaseException) -> int:
    return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAILED


def _output_error(e: Exception, what: str, out) -> int:
    """`report` / `plot` failing while reading runs (NoisybenchError) or writing `what` to `out` (OSError):
    one error line, exit 1."""
    if isinstance(e, OSError):
        print(f"noisybench: error: cannot write {what} to {out} ({e.strerror or e}); give a writable "
              "directory with -o DIR", file=sys.stderr)
    else:
        print(f"noisybench: error: {one_line(e)}", file=sys.stderr)
    return EXIT_FAILED


def _train_task(cfg) -> float:
    """One job; returns its objective (`objective`, default val_selected; NaN when the run failed),
    which Hydra sweepers that optimise (Optuna) read."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from noisybench.class_weights import starved_line
    from noisybench.targets import check_config, registered, sources_of
    from noisybench.train import run  # here: the runner imports torch (not for --help or TAB)

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    try:  # preflight checked the jobs it could foresee; an optimising sweeper's are checked here
        check_config(cfg, registered(sources_of(hc)))
        record = run(cfg, out_dir, progress=bool(cfg.trainer.progress) and not multirun)
    except NoisybenchError as e:  # run() wrote failed.json (not for a directory of another config)
        _FAILURES.append((str(out_dir), one_line(e), exit_code(e)))
        if multirun:  # into the job's log; the parent prints the sweep's failures at the end
            log.error("run failed: %s", one_line(e))
        return float("nan")
    except Exception as e:
        if not multirun:
            raise  # a crash of a single run: the traceback helps (failed.json is written)
        _FAILURES.append((str(out_dir), f"{type(e).__name__}: {one_line(e)}", EXIT_FAILED))
        log.exception("run crashed (failed.json written); the sweep goes on")
        return float("nan")
    sel = record["test_selected"]
    head = "already finished, skipped: " if record.get("skipped") else ""
    head += "DIVERGED: " if record.get("diverged") else ""
    print(f"{head}result: {out_dir / 'result.json'}  test_last={record['test_last']:.4f}  "
          f"test_selected={'n/a' if sel is None else f'{sel:.4f}'} (epoch {record['selected_epoch']})  "
          f"test_best[oracle]={record['test_best']:.4f}  noise={record['realized_noise_rate']:.4f} realised  "
          f"{record['train_time_s']:.1f}s", flush=True)
    starved = starved_line(record.get("class_weights"))  # a weighting that switched off whole classes
    if starved:
        print(starved, flush=True)
    if record.get("diverged"):  # a result, marked: the tables show it, the exit code says it
        msg = record["diverged"]["message"]
        _FAILURES.append((str(out_dir), msg, EXIT_FAILED))
        if multirun:
            log.error("%s", msg)
    value = record.get(str(cfg.get("objective", "val_selected")))
    return float("nan") if value is None else float(value)


def train_main(args: list[str]) -> int:
    import hydra  # here: Hydra's app machinery is not needed for --help or TAB

    from noisybench.report.callback import SweepTablesCallback  # pandas, as above

    if "--resume" in args:
        try:
            args = resume_args(args)
        except NoisybenchError as e:
            print(f"noisybench: error: {one_line(e)}", file=sys.stderr)
            return 2
        print(f"noisybench: resuming: noisybench train {shlex.join(args)}", file=sys.stderr)
    if _HYDRA_FLAGS & set(args) and {"-c", "--cfg"} & set(args):
        print("noisybench: error: --cfg prints one composed config; drop -m (e.g. noisybench train "
              "hydra/launcher=slurm --cfg hydra shows the launcher a sweep would use)", file=sys.stderr)
        return 2
    prints = {"-c", "--cfg", "-h", "--help", "--hydra-help", "-i", "--info", "-sc", "--shell-completion"}
    dry = "--dry-run" in args and not prints & set(args)  # a command that prints runs nothing anyway
    args = [a for a in args if a != "--dry-run"]
    register_resolvers()
    err, planned = preflight(args)
    if dry and not err:  # every job checked; list them with the state each would find, write nothing
        return _dry_run(args)
    SweepTablesCallback.planned = planned  # the "k/N done, ETA" line of a sweep (None: unknown)
    ThreadsCallback.planned = planned  # jobs at once = min(n_jobs, planned): threads per job
    if err:
        print(f"noisybench: error: {err}", file=sys.stderr)
        return 2
    app = hydra.main(version_base="1.3", config_path=config_path(), config_name=CONFIG_NAME)(_train_task)
    _FAILURES.clear()
    SweepTablesCallback.last = None
    cluster.left = None
    saved = sys.argv
    sys.argv = ["noisybench train", *args]
    try:
        app()
    except Refused as e:  # another process holds the run or sweep directory: nothing was written
        print(f"noisybench: error: {one_line(e.message)}", file=sys.stderr)
        return EXIT_FAILED
    except Interrupted as e:
        print(_interrupted_line(e, args), file=sys.stderr)
        return e.exit_code
    finally:
        sys.argv = saved
        release_all()
    if cluster.left is not None:  # hydra.launcher.wait=false: submitted, nothing to count yet
        print("\n".join(cluster.leaving_lines(cluster.left)), file=sys.stderr)
        return 0
    sweep = SweepTablesCallback.last
    if sweep is not None:  # a multirun: the parent's view, from the run directories on disk
        print(f"noisybench: sweep {sweep['dir']}: {sweep['line']}", file=sys.stderr)
        for run_dir, msg in sweep["failed"][:10]:
            print(f"noisybench: error: {msg} (failed.json in {run_dir})", file=sys.stderr)
        if len(sweep["failed"]) > 10:
            print(f"noisybench: error: ... and {len(sweep['failed']) - 10} more failed runs", file=sys.stderr)
        for run_dir, msg in sweep.get("diverged", [])[:3]:
            print(f"noisybench: error: {msg} ({run_dir})", file=sys.stderr)
        return 1 if sweep["failed"] or sweep["unfinished"] or sweep.get("diverged") else 0
    if _FAILURES:
        print(f"noisybench: error: {_FAILURES[0][1]}", file=sys.stderr)
        return _FAILURES[0][2]
    return 0


def _dry_run(args: list[str]) -> int:
    from noisybench.status import dry_run

    try:
        return dry_run(args)
    except NoisybenchError as e:
        print(f"noisybench: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE


def status_main(args: list[str]) -> int:
    from noisybench.status import status_main as main_  # here: reads the preflight's machinery

    return main_(args)


def _interrupted_line(e: Interrupted, args: list[str]) -> str:
    """What a stopped `train` prints: where it stopped and the command that continues it. `the same
    command` continues only when it names the directory (a default directory is new every time)."""
    where = f" in {e.run_dir}" if e.run_dir else ""
    if e.run_dir is None:
        return f"noisybench: interrupted {e.where}"
    target = _resume_target(e.run_dir)
    named = any(a.split("=", 1)[0].lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") for a in args)
    again = "run the same command to resume" + (" it" if target != e.run_dir else "") + " (or "
    cont = f"{again if named else 'continue with: '}noisybench train --resume {target}{')' if named else ''}"
    if target != e.run_dir:  # a job of a sweep
        return f"noisybench: sweep interrupted (a job stopped at {e.where}, checkpoint saved{where}); {cont}"
    return f"noisybench: interrupted at {e.where}; checkpoint saved{where}; {cont}"


def _resume_target(run_dir: Path) -> Path:
    """The directory `--resume` should get: the sweep's, when the run is a job of a sweep."""
    parent = Path(run_dir).parent
    return parent if (parent / "multirun.yaml").is_file() else Path(run_dir)


def _noise_run_dir() -> Path:
    """A fresh directory under $NOISYBENCH_OUTPUT_DIR (default outputs/)/noise/, like a train run's."""
    base = Path(os.environ.get("NOISYBENCH_OUTPUT_DIR") or "outputs")
    return base / "noise" / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{secrets.token_hex(3)}"


def noise_main(args: list[str]) -> int:
    """Compose the same config as `train`, build the dataset and the noise, report, write."""
    if any(a in ("-h", "--help") for a in args):
        print("usage: noisybench noise [-o DIR] [overrides]\n\nSame overrides as `noisybench train` (e.g. "
              "dataset=cifar10 noise=asymmetric noise.rate=0.4); nothing is trained. Writes noise.json and "
              "transition_matrix.png into DIR (default: a new directory under outputs/noise/).")
        return 0
    out = None
    for flag in ("-o", "--out"):
        if flag in args:
            i = args.index(flag)
            if i + 1 >= len(args):
                print(f"noisybench: error: {flag} needs a directory", file=sys.stderr)
                return 2
            out, args = Path(args[i + 1]), args[:i] + args[i + 2:]
    if any(a in _HYDRA_FLAGS for a in args):
        print("noisybench: error: `noise` makes one noise realisation; run it once per setting "
              "(sweeps are for `noisybench train -m`)", file=sys.stderr)
        return 2
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # here: checks and the pipeline import torch (not for --help or TAB)
    from noisybench.checks import validate
    from noisybench.pipeline import build_noise
    from noisybench.targets import check_config, registered, sources_of

    register_resolvers()
    overrides = [a for a in args if not a.lstrip("+~").startswith("hydra")]
    try:
        with hydra_context():
            cfg = compose(CONFIG_NAME, overrides=overrides)
        check_config(cfg, registered(sources_of(None)))  # the package's config tree (no -cd here)
        validate(cfg)
        pool, noisy, report, _ = build_noise(cfg)
    except NoisybenchError as e:
        print(f"noisybench: error: {one_line(e)}", file=sys.stderr)
        return exit_code(e)
    except (HydraException, OmegaConfBaseException) as e:
        def app_config(overrides):
            with hydra_context():
                return compose(CONFIG_NAME, overrides=overrides)

        print(f"noisybench: error: {missing_key_hint(e, overrides, app_config) or condense(e)}",
              file=sys.stderr)
        return EXIT_USAGE
    out = out or _noise_run_dir()
    try:
        _write_noise(out, cfg, pool, report)
    except OSError as e:
        print(f"noisybench: error: cannot write to {out} ({e.strerror or e}); give a writable directory with "
              "-o DIR", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _write_noise(out: Path, cfg, pool, report) -> None:
    import numpy as np

    # here: numpy and matplotlib, for `noise` only
    from noisybench.noise.report import format_matrix, save_heatmap

    counts, T = np.array(report["transition_counts"]), np.array(report["transition_matrix"])
    atomic_write_json(out / "noise.json", {"dataset": cfg.dataset.name, **report})
    spec = ", ".join(f"{k}={v}" for k, v in report.items() if k not in (
        "type", "realized_noise_rate", "expected_noise_rate", "applied_to", "num_samples", "cache_key",
        "from_cache", "class_names", "transition_matrix", "transition_counts"))
    title = f"{cfg.dataset.name}: {report['type']} ({spec}); realised {report['realized_noise_rate']:.4f}"
    save_heatmap(T, out / "transition_matrix.png", pool.class_names, title)
    expected = report.get("expected_noise_rate")
    print(f"{cfg.dataset.name}: {report['type']} noise ({spec}) on {report['num_samples']} training-pool labels")
    print(f"realised noise rate: {report['realized_noise_rate']:.4f}"
          + (f" (expected {expected:.4f})" if expected is not None else "")
          + ("  [from cache]" if report["from_cache"] else ""))
    print(format_matrix(T, counts, pool.class_names))
    print(f"wrote {out / 'noise.json'} and {out / 'transition_matrix.png'}")


def _bad_tune(df, tune: list[str]) -> bool:
    """`--tune KEY` naming a key no run has: say so in one line (with the keys that do vary)."""
    from noisybench.report.layout import CONFIG_COL, varied_keys

    unknown = [k for k in tune if not df[CONFIG_COL].str.contains(f'"{k}":', regex=False).any()]
    if unknown:
        keys = ", ".join(varied_keys(df)) or "none"
        print(f"noisybench: error: --tune {','.join(unknown)}: no run has this config key (as in "
              f"noisybench train --cfg job); keys that vary across these runs: {keys}", file=sys.stderr)
    return bool(unknown)


def report_main(args: list[str]) -> int:
    # here, not at the top: the report package imports pandas (not for --help or TAB)
    from noisybench.report.records import left_out_note, load_runs
    from noisybench.report.tables import DEFAULT_KINDS, KINDS
    from noisybench.report.writers import WRITERS, write_report

    p = argparse.ArgumentParser(prog="noisybench report",
                                description="Tables (mean ± std over seeds) from run or sweep directories.")
    p.add_argument("paths", nargs="+", type=Path, help="run directories, sweep directories or result.json files")
    p.add_argument("-o", "--out", type=Path, help="write summary.csv and the tables here (default: print Markdown)")
    p.add_argument("-f", "--format", default="md", help=f"comma-separated: {','.join(WRITERS)} (default md)")
    p.add_argument("-k", "--kinds", default=",".join(DEFAULT_KINDS),
                   help=f"which tables, comma-separated: {','.join(KINDS)} (best is the oracle; detection*: "
                        "how well the training loss separates clean from corrupted samples)")
    p.add_argument("--tune", default="", metavar="KEY[,KEY...]",
                   help="config keys swept as hyperparameters (e.g. optim.optimizer.lr): each cell shows the "
                        "value(s) with the best mean validation score over seeds, and that setting's test score")
    p.add_argument("--no-marks", dest="marks", action="store_false",
                   help="do not mark each column's best mean (bold) and second (underlined) in md, latex, html")
    a = p.parse_args(args)
    formats = [f for f in a.format.split(",") if f]
    kinds = [k for k in a.kinds.split(",") if k]
    bad = [f for f in formats if f not in WRITERS] + [k for k in kinds if k not in KINDS]
    if bad:
        print(f"noisybench: error: unknown format or kind {', '.join(bad)}; formats: {', '.join(WRITERS)}; "
              f"kinds: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    missing = [str(x) for x in a.paths if not x.exists()]
    if missing:
        print(f"noisybench: error: no such path: {', '.join(missing)}", file=sys.stderr)
        return 2
    df, left_out = load_runs(a.paths)
    if df.empty:
        print("noisybench: error: no finished run under the given paths (finished runs have a result.json); "
              + left_out_note(left_out), file=sys.stderr)
        return 1
    tune = [k for k in a.tune.split(",") if k]
    if _bad_tune(df, tune):
        return 2
    try:
        if a.out:
            if a.out.exists() and not a.out.is_dir():
                print(f"noisybench: error: -o {a.out} is a file; give a directory for summary.csv and the tables",
                      file=sys.stderr)
                return EXIT_USAGE
            df = write_report(a.paths, a.out, formats, kinds, tune, a.marks)
            print(f"{len(df)} runs -> {a.out}/summary.csv, "
                  + ", ".join(str(a.out / WRITERS[f][0]) for f in formats))
        else:
            for f in formats:
                print(WRITERS[f][1](df, kinds, tune, a.marks))
    except (NoisybenchError, OSError) as e:
        return _output_error(e, "the report", a.out)
    print(left_out_note(left_out))
    return 0


def _a_path_without_runs(paths: list[Path]) -> bool:
    """Every PATH must hold a finished run (a typo'd sweep dir is not silently empty): say which does not."""
    from noisybench.report.records import find_runs

    for path in paths:
        found = find_runs([path])
        if not any(state == "finished" for _, state in found):
            states = ", ".join(f"{sum(s == k for _, s in found)} {k}"
                               for k in ("failed", "unfinished", "unreadable", "symlinked")
                               if any(s == k for _, s in found))
            print(f"noisybench: error: {path} holds no finished run (finished runs have a result.json)"
                  + (f"; it has {states} run(s)" if states else "; it holds no run directory at all"),
                  file=sys.stderr)
            return True
    return False


def plot_main(args: list[str]) -> int:
    # here, not at the top: the report package imports pandas (not for --help or TAB)
    from noisybench.report.figures import DPI, FORMATS

    p = argparse.ArgumentParser(prog="noisybench plot",
                                description="Figures from run or sweep directories, grouped as `noisybench report` "
                                            "groups its tables: accuracy vs noise rate, learning curves and "
                                            "memorisation, method diagnostics, per-sample weights, transition "
                                            "matrices.")
    p.add_argument("paths", nargs="+", type=Path, help="run directories, sweep directories or result.json files")
    p.add_argument("-o", "--out", type=Path,
                   help="directory for the figures (default: PATH/figures for a single directory PATH)")
    p.add_argument("-f", "--format", default=",".join(FORMATS),
                   help=f"comma-separated: {','.join(FORMATS)}, svg (default {','.join(FORMATS)})")
    p.add_argument("--dpi", type=int, default=DPI, help=f"resolution of the PNG files (default {DPI})")
    p.add_argument("--titles", action="store_true",
                   help="draw each figure's title into it (default: none; figures.md holds the captions)")
    p.add_argument("--tune", default="", metavar="KEY[,KEY...]",
                   help="as `noisybench report --tune`: the tuned figures, each cell drawn with the value(s) "
                        "of KEY with the best mean validation score over seeds (files end in _tuned)")
    a = p.parse_args(args)
    formats = [f for f in a.format.split(",") if f]
    bad = [f for f in formats if f not in (*FORMATS, "svg")]
    if bad or not formats:
        print(f"noisybench: error: unknown format {', '.join(bad) or '(none)'}; use png, pdf or svg "
              "(comma-separated)", file=sys.stderr)
        return EXIT_USAGE
    if a.dpi < 30:
        print(f"noisybench: error: --dpi {a.dpi} is too small to read; use e.g. --dpi 150", file=sys.stderr)
        return EXIT_USAGE
    missing = [str(x) for x in a.paths if not x.exists()]
    if missing:
        print(f"noisybench: error: no such path: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    out = a.out
    if out is None:
        if len(a.paths) != 1 or not a.paths[0].is_dir():
            print("noisybench: error: several paths (or a file): say where the figures go with -o DIR",
                  file=sys.stderr)
            return EXIT_USAGE
        out = a.paths[0] / "figures"
    if out.exists() and not out.is_dir():
        print(f"noisybench: error: -o {out} is a file; give a directory for the figures", file=sys.stderr)
        return EXIT_USAGE
    from noisybench.report.records import left_out_note, load_runs

    if _a_path_without_runs(a.paths):
        return EXIT_FAILED
    df, left_out = load_runs(a.paths)
    if df.empty:
        print("noisybench: error: no finished run under the given paths; " + left_out_note(left_out), file=sys.stderr)
        return EXIT_FAILED
    tune = [k for k in a.tune.split(",") if k]
    if _bad_tune(df, tune):
        return EXIT_USAGE
    from noisybench.report.figures import CAPTIONS, CAPTIONS_TUNED, figures, save_all
    from noisybench.report.runfiles import figures_note

    captions = out / (CAPTIONS_TUNED if tune else CAPTIONS)

    try:
        plots = figures(df, titles=a.titles, tune=tune)
        if not plots:
            print("noisybench: error: nothing to draw: the runs have no noisy setting, no metrics.csv and no "
                  "noise.json", file=sys.stderr)
            return EXIT_FAILED
        command = " ".join(["noisybench plot", *map(str, a.paths), *(["--tune", a.tune] if tune else []),
                            *(["--titles"] if a.titles else [])])
        save_all(plots, out, formats, a.dpi, command, captions.name)
        for plot in plots:
            print(", ".join(str(out / f"{plot.name}.{f}") for f in formats))
    except (NoisybenchError, OSError) as e:
        return _output_error(e, "the figures", out)
    diverged = df["diverged"].astype(bool).sum() if "diverged" in df else 0
    print(f"{len(plots)} figures from {len(df) - diverged} runs -> {out} (captions: {captions})"
          + (f" ({diverged} diverged runs left out of the figures)" if diverged else ""))
    print(figures_note(df["run_dir"], left_out))  # and the runs a file of which could not be read
    return 0


COMMANDS = {"train": train_main, "noise": noise_main, "report": report_main, "plot": plot_main,
            "status": status_main, "completion": completion_main}


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `noisybench report ... | head -3`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # 128 + SIGPIPE, as a program killed by it


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("-V", "--version"):
        print(__version__)
        return 0
    if cmd not in COMMANDS:
        print(f"noisybench: error: unknown command {cmd!r}; use one of {', '.join(COMMANDS)} "
              "(noisybench --help)", file=sys.stderr)
        return 2
    if cmd == "train" and {"-sc", "--shell-completion"} & set(rest):  # Hydra's flag: see noisybench.completion
        return hydra_shell_completion(rest)
    def on_term(signum, frame):  # outside the training loop (which stops at a safe point itself)
        raise Interrupted(signum, "before training started (nothing to resume from yet)", None)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        return COMMANDS[cmd](rest)
    except KeyboardInterrupt:
        print("noisybench: interrupted", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"noisybench: interrupted {e.where}", file=sys.stderr)
        return e.exit_code
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
