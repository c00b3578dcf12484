"""How many torch intra-op threads a run uses, without flags.

On a CPU the models of this benchmark are too small for intra-op threads to pay: what pays is running
jobs side by side, one core each. The policy, in order:

1. `trainer.threads=N`: N.
2. a job of a parallel local sweep (a launcher with `n_jobs`, e.g. `hydra/launcher=local`):
   cores // (jobs running at once), at least 1, where jobs at once = min(n_jobs, jobs in the sweep)
   (n_jobs=-1: one per core, joblib's convention; an Optuna sweep's jobs = its trials at a time,
   hydra.sweeper.n_jobs). The sweep's parent process works this out
   (`ThreadsCallback`) and hands it to the jobs in NOISYBENCH_JOB_THREADS; nothing is set when the
   user exported OMP_NUM_THREADS (rule 3 then applies). 8 jobs on 2 cores: 1 thread each; 1 job on
   8 cores: 8 threads; 2 jobs on 8 cores: 4 each.
3. OMP_NUM_THREADS, when set (SLURM jobs: the preset sets it to cpus_per_task).
4. torch's default: every core (a single run, or a sequential sweep, uses the whole machine).
"""
from __future__ import annotations

import logging
import os

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

THREADS_ENV = "NOISYBENCH_JOB_THREADS"


def cores() -> int:
    """CPU cores this process may use (joblib's count when installed: it knows cgroup quotas)."""
    try:
        from joblib import cpu_count

        return max(1, int(cpu_count()))
    except ImportError:
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def jobs_at_once(n_jobs: int, planned: int | None, n_cores: int) -> int:
    """Jobs a joblib-style launcher runs at the same time: n_jobs (negative: n_cores + 1 + n_jobs, so -1
    is one per core), never more than the sweep's jobs when their number is known."""
    at_once = n_cores + 1 + n_jobs if n_jobs < 0 else n_jobs
    at_once = max(1, at_once)
    return min(at_once, planned) if planned else at_once


def job_threads(n_jobs: int, planned: int | None, n_cores: int | None = None) -> int:
    """Threads per job: the cores shared by the jobs running at once (at least 1)."""
    n_cores = cores() if n_cores is None else n_cores
    return max(1, n_cores // jobs_at_once(n_jobs, planned, n_cores))


def torch_threads(configured: int | None) -> int | None:
    """The runner's thread count (see the module docstring); None = torch's default."""
    for value in (configured, os.environ.get(THREADS_ENV), os.environ.get("OMP_NUM_THREADS")):
        if value not in (None, ""):
            return int(value)
    return None


class ThreadsCallback(Callback):
    """In a multirun's parent process: exports NOISYBENCH_JOB_THREADS for the jobs of a parallel local
    launcher (one whose config has `n_jobs`); worker processes inherit it. `planned` is the number of
    jobs when the CLI knows it (Hydra's basic sweeper), else None (n_jobs alone decides)."""

    planned: int | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self._old = os.environ.get(THREADS_ENV)
        n_jobs = config.hydra.launcher.get("n_jobs") if "launcher" in config.hydra else None
        if n_jobs is None or os.environ.get("OMP_NUM_THREADS"):
            return
        planned = self.planned
        batch = config.hydra.sweeper.get("n_jobs") if "sweeper" in config.hydra else None
        if batch:  # a sweeper that launches batches (Optuna's n_jobs trials at a time)
            planned = min(planned, int(batch)) if planned else int(batch)
        threads = job_threads(int(n_jobs), planned)
        os.environ[THREADS_ENV] = str(threads)
        log.info("parallel sweep: %d job(s) at once on %d core(s), %d torch thread(s) each "
                 "(trainer.threads=N to choose)", jobs_at_once(int(n_jobs), planned, cores()), cores(), threads)

    def on_multirun_end(self, config, **kwargs) -> None:
        if getattr(self, "_old", None) is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = self._old
