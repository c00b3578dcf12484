"""`noisybench train --resume DIR [overrides]`: the command that made DIR (a run or a sweep), into DIR
again (docs/runs.md#resuming-someone-elses-directory).

DIR's saved overrides (`.hydra/overrides.yaml` and `hydra.yaml`, or a sweep's `multirun.yaml`) are
files like any other in it: written by someone you may not trust. So the command is shown before it
runs, and saved overrides that would load code or read data from outside DIR are refused unless the
user repeats them (the same key) on the command line: any `_target_`; where data is read from and
whether it is checked (`data_dir`, `dataset.loader.path`, `search_dirs`, `folder`, `file`, `url`,
`verify`, ...); where results are sent (`logger.*`: a tracking server, a directory); and `hydra.*`
keys other than a few plain launcher/sweeper settings (`hydra.searchpath` adds config folders;
`hydra.callbacks`, `hydra.job.env_set` and `hydra.launcher.setup` run code).
Choosing a config-group option (`method=dal`, `hydra/launcher=local`) stays allowed: the options are
the config folders' files, never DIR's.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from omegaconf import OmegaConf

from noisybench.errors import NoisybenchError, one_line

HYDRA_FLAGS = {"-m", "--multirun"}
# hydra.* keys a saved command may set again: plain numbers and names, nothing that runs or reads files
SAFE_HYDRA = {f"hydra.launcher.{k}" for k in (
    "n_jobs", "timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "gpus_per_task",
    "mem_gb", "mem_per_cpu", "mem_per_gpu", "cpus_per_gpu", "array_parallelism", "partition", "account", "qos",
    "constraint", "exclude", "comment", "name", "signal_delay_s", "max_num_timeout", "gres", "backend",
    "prefer", "verbose", "pre_dispatch", "batch_size", "max_nbytes", "mmap_mode",
    "runs_per_task", "wait", "jobs_per_gpu")} | {
    "hydra.sweeper.n_trials", "hydra.sweeper.n_jobs", "hydra.sweeper.direction", "hydra.sweeper.study_name",
    "hydra.sweeper.seeds", "hydra.sweeper.sampler.seed"}  # (noisybench.study: a search's seeds, its sampler's)
# key parts that say where data is read from, or whether it is checked
DATA_PARTS = {"data_dir", "path", "paths", "search_dirs", "folder", "file", "url", "verify", "searchpath",
              "human_labels", "noise_cache_dir"}
_NAME = re.compile(r"\b(_target_|" + "|".join(sorted(DATA_PARTS)) + r")\b")
_DROPPED = ("hydra.run.dir", "hydra.sweep.dir", "hydra.mode")  # the resumed command gets its own


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def risky(override: str) -> bool:
    """True for a saved override that loads code, reads data from elsewhere or turns a check off."""
    key = _key(override)
    value = override.split("=", 1)[1] if "=" in override else ""
    if key.startswith("hydra.sweeper.params."):  # a sweep axis: an override of the job config
        return risky(f"{key[len('hydra.sweeper.params.'):]}={value}")
    if (key.startswith("hydra.") and key not in SAFE_HYDRA) or key.startswith("logger."):
        return True  # hydra.*: code and config folders; logger.*: where the results are sent
    parts = set(re.split(r"[./@]", key))
    return "_target_" in parts or bool(parts & DATA_PARTS) or bool(_NAME.search(value)) or ".." in value


def _saved_list(path: Path, node: str | None = None) -> list[str]:
    """The list of overrides in a saved YAML file (`node`: where in it), or a one-line NoisybenchError."""
    try:
        doc = OmegaConf.load(path)
        value = OmegaConf.select(doc, node) if node else doc
        items = OmegaConf.to_container(value) if value is not None else []
    except Exception as e:
        raise NoisybenchError(f"--resume: cannot read {path} ({type(e).__name__}); it is damaged or not written "
                              "by noisybench train") from None
    if not isinstance(items, list) or not all(isinstance(o, str) for o in items):
        raise NoisybenchError(f"--resume: {path} does not hold a list of overrides; it is damaged or not written "
                              "by noisybench train")
    return items


def _saved(d: Path) -> tuple[list[str], list[str], list[str]]:
    """(flags, saved task overrides, saved hydra overrides) of the run or sweep in `d`."""
    if (d / "multirun.yaml").is_file():  # a sweep: its grid, launcher and sweeper again
        f = d / "multirun.yaml"
        return ["-m"], _saved_list(f, "hydra.overrides.task"), _saved_list(f, "hydra.overrides.hydra")
    if (d / ".hydra" / "overrides.yaml").is_file():  # a run (or one job of a sweep)
        hydra_yaml = d / ".hydra" / "hydra.yaml"
        return [], _saved_list(d / ".hydra" / "overrides.yaml"), (
            _saved_list(hydra_yaml, "hydra.overrides.hydra") if hydra_yaml.is_file() else [])
    raise NoisybenchError(f"--resume {d}: not a run or sweep directory (it has no .hydra/overrides.yaml "
                          "and no multirun.yaml); give the directory that noisybench train printed")


def resume_args(args: list[str]) -> list[str]:
    """`--resume DIR [overrides]` -> the command line to run. NoisybenchError (one line) for a missing
    directory or for saved overrides that would load code or read data from outside DIR (see above)."""
    i = args.index("--resume")
    if i + 1 >= len(args) or args[i + 1].startswith("-"):
        raise NoisybenchError("--resume needs a run or sweep directory, e.g. noisybench train --resume "
                              "outputs/2026-11-30/12-00-00-ab12cd")
    d, extra = Path(args[i + 1]), [a for a in args[:i] + args[i + 2:] if a not in HYDRA_FLAGS]
    flags, task, hyd = _saved(d)
    hyd = [o for o in hyd if not _key(o).startswith(_DROPPED)]
    given = {_key(a) for a in extra if "=" in a or a.startswith("~")}
    refused = [o for o in (*task, *hyd) if risky(o) and _key(o) not in given]
    if refused:
        shown = " ".join(shlex.quote(one_line(o)[:200]) for o in refused)
        raise NoisybenchError(f"--resume {d}: its saved command sets {', '.join(_key(o) for o in refused)}, which "
                              "can load code or read data from outside the directory; if you trust it, repeat "
                              f"them on the command line: noisybench train --resume {shlex.quote(str(d))} {shown}")
    where = f"hydra.sweep.dir={d}" if flags else f"hydra.run.dir={d}"
    return [*flags, *task, *hyd, where, *extra]
