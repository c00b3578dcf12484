"""Sweeps on a cluster (docs/cluster.md): many runs per SLURM array task, submit and leave.

The launchers themselves live in `hydra_plugins/noisybench_launchers/` (Hydra loads launcher
plugins only from the `hydra_plugins` package); what they share with the CLI and preflight is here:

- `chunks(items, k)`: K runs per array task, in the grid's order (the last task may get fewer);
- `check_launcher(launcher, sweeper)`: the launcher's noisybench options, each bad value one line;
- `max_array_size()`: the cluster's MaxArraySize, read from `scontrol show config` when it is there;
- `left`: what a launcher submitted without waiting (`hydra.launcher.wait=false`), for the CLI's
  closing lines (set in the sweep's parent process, read by `noisybench train`).

A leaf: it imports nothing of noisybench that imports it back, and neither torch nor submitit.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from noisybench.errors import ConfigError

# What a launcher left running (wait=false): {"sweep_dir", "runs", "tasks", "arrays"}; None otherwise.
left: dict | None = None
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def chunks(items: Sequence[Any], k: int) -> list[list[Any]]:
    """`items` in consecutive groups of `k` (the last may be shorter): one group per array task."""
    return [list(items[i:i + k]) for i in range(0, len(items), k)]


def tasks_for(runs: int, k: int) -> int:
    return math.ceil(runs / k)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_launcher(launcher: Any, sweeper_target: str | None) -> None:
    """The noisybench options of the launcher config (absent keys: another launcher, nothing to check)."""
    if launcher is None:
        return
    k = launcher.get("runs_per_task", 1)
    if not _whole(k) or k < 1:
        raise ConfigError(f"hydra.launcher.runs_per_task={k} must be a whole number >= 1, the runs each array task "
                          "runs one after another (1: a task per run), e.g. hydra.launcher.runs_per_task=10")
    wait = launcher.get("wait", True)
    if not isinstance(wait, bool):
        raise ConfigError(f"hydra.launcher.wait={wait} must be true (this command waits for the jobs) or false "
                          "(it submits them and leaves)")
    if wait is False and sweeper_target not in (None, BASIC_SWEEPER):
        raise ConfigError("hydra.launcher.wait=false submits and leaves, but this sweeper chooses each trial from "
                          "the results of the last ones (hparams_search=... / Optuna); drop hydra.launcher.wait=false")
    per_gpu = launcher.get("jobs_per_gpu", None)
    if per_gpu is not None and (not _whole(per_gpu) or per_gpu < 1):
        raise ConfigError(f"hydra.launcher.jobs_per_gpu={per_gpu} must be a whole number >= 1, the jobs sharing one "
                          "GPU at a time (e.g. hydra.launcher.jobs_per_gpu=2), or null to leave GPUs alone")


def max_array_size() -> int | None:
    """The cluster's MaxArraySize (array indices run 0 .. MaxArraySize - 1), or None when unknown
    (no `scontrol` on PATH, or it did not answer)."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(m.group(1)) if m else None


def check_array_size(runs: int, k: int, limit: int | None) -> None:
    """Refuse an array the cluster would refuse (sbatch's own error names neither the cause nor the fix)."""
    if limit is None or tasks_for(runs, k) <= limit:
        return
    need = tasks_for(runs, limit)
    raise ConfigError(f"{runs} runs at hydra.launcher.runs_per_task={k} make {tasks_for(runs, k)} array tasks, more "
                      f"than this cluster's MaxArraySize ({limit}); use hydra.launcher.runs_per_task={need} or more")


def check_array(launcher: Any, runs: int) -> None:
    """A SLURM launcher's array against the cluster's MaxArraySize (asked only for a SLURM launcher)."""
    if launcher is not None and str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        check_array_size(runs, int(launcher.get("runs_per_task", 1)), max_array_size())


def leave(sweep_dir: Any, runs: int, job_ids: list[str]) -> None:
    """A launcher submitted `runs` runs as the array tasks `job_ids` and does not wait (several
    batches of one sweep add up)."""
    global left
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if left is None:
        left = {"sweep_dir": str(sweep_dir), "runs": 0, "tasks": 0, "arrays": []}
    left["runs"] += runs
    left["tasks"] += len(job_ids)
    left["arrays"] += arrays


def leaving_lines(info: dict) -> list[str]:
    """What `noisybench train` prints after submitting without waiting."""
    d = info["sweep_dir"]
    arrays = info.get("arrays") or []
    job = f" (SLURM job{'s' if len(arrays) > 1 else ''} {', '.join(arrays)})" if arrays else ""
    runs = f"{info['runs']} run{'s' if info['runs'] != 1 else ''}"
    return [f"noisybench: submitted {runs} as {info['tasks']} array task(s){job}; they run on without "
            f"this command. Sweep directory: {d}",
            f"noisybench: follow it with: noisybench status {d}",
            f"noisybench: tables of the finished runs: noisybench report {d}",
            f"noisybench: once its jobs have left the queue, submit what is left (failed, interrupted, never started) "
            f"with: noisybench train --resume {d}"]
