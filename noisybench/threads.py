"""How many threads each thread pool of a run gets, without flags (docs/performance.md, "Threads").

A run has several thread pools: torch's intra-op pool (OpenMP), numpy's and scipy's OpenBLAS pools
(host-side code: STORM's features and Ω, the numba kernels' BLAS products, TF-IDF, the noise
generators), scikit-learn's own OpenMP runtime and numba's pool (used only by `parallel=True` kernels,
of which there are none). Pools that run side by side on the same cores fight: an OpenBLAS pool
busy-waits between calls, so a numpy product between two torch ops keeps every core spinning while
torch's OpenMP threads want them (STORM at torch's 2 threads on 2 cores: 3x slower than at 1).
The host-side arrays are small (a batch of features, Ω's few hundred weights): extra BLAS threads
never pay there. So the runner sets, once per run (`thread_pools`):

- torch's intra-op threads: the count below;
- every BLAS pool threadpoolctl finds (numpy's, scipy's OpenBLAS; MKL where it is the BLAS): 1;
- other OpenMP runtimes (scikit-learn's libgomp): left alone (idle during training);
- numba: no parallel kernels, nothing to set.

Torch's count, in order:

1. `trainer.threads=N`: N.
2. a job of a parallel local sweep (a launcher with `n_jobs`, e.g. `hydra/launcher=local`):
   cores // (jobs running at once), at least 1, where jobs at once = min(n_jobs, jobs in the sweep)
   (n_jobs=-1: one per core, joblib's convention; an Optuna sweep's jobs = its trials at a time,
   hydra.sweeper.n_jobs, times its hydra.sweeper.seeds). The sweep's parent process works this out
   (`ThreadsCallback`) and hands it to the jobs in NOISYBENCH_JOB_THREADS; nothing is set when the
   user exported OMP_NUM_THREADS (rule 3 then applies). 8 jobs on 2 cores: 1 thread each; 1 job on
   8 cores: 8 threads; 2 jobs on 8 cores: 4 each. Jobs spread over GPUs (noisybench.gpus): at most
   GPUs x jobs_per_gpu at once, and the cores are shared among those.
3. OMP_NUM_THREADS, when set (SLURM jobs: the preset sets it to cpus_per_task).
4. torch's default: every core (a single run, or a sequential sweep, uses the whole machine).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.experimental.callback import Callback
from threadpoolctl import threadpool_info, threadpool_limits

log = logging.getLogger(__name__)

THREADS_ENV = "NOISYBENCH_JOB_THREADS"
HOST_BLAS_THREADS = 1  # host-side BLAS work is tiny; a second busy-waiting pool costs torch's threads


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


def blas_threads() -> int | None:
    """The largest thread count of the BLAS pools loaded in this process (None: none loaded)."""
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts) if counts else None


@contextmanager
def thread_pools(configured: int | None) -> Iterator[dict]:
    """Apply the policy for the duration of one run; yields what the record keeps: torch's intra-op
    threads and the BLAS pools' count. BLAS limits are restored on exit (in-process sweeps and tests
    call the runner many times); torch's count stays, as `torch.set_num_threads` always did."""
    # Imported here, not at the top: the CLI imports this module for ThreadsCallback, and --help
    # and TAB must not pay for torch or scipy. scipy's OpenBLAS (numba's np.dot calls it) is loaded
    # lazily: loading it now lets the limit below reach it.
    import scipy.linalg  # noqa: F401  (imported for its side effect: loads scipy's OpenBLAS, see above)
    import torch

    threads = torch_threads(configured)
    if threads:
        torch.set_num_threads(threads)
    with threadpool_limits(limits=HOST_BLAS_THREADS, user_api="blas"):
        yield {"torch_threads": torch.get_num_threads(), "blas_threads": blas_threads()}


def gpu_cap(config) -> int | None:
    """Jobs at once that the local launcher's GPU slots allow (None: no GPU, or GPUs left alone)."""
    per_gpu = config.hydra.launcher.get("jobs_per_gpu")
    if per_gpu is None:
        return None
    from noisybench.gpus import jobs_at_once_on_gpus, visible_gpus

    return jobs_at_once_on_gpus(visible_gpus(), int(per_gpu), str(config.get("trainer", {}).get("device", "auto")))


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
        if batch:  # a sweeper that launches batches (Optuna's n_jobs trials at a time, each one job per seed)
            batch = int(batch) * max(1, len(config.hydra.sweeper.get("seeds") or []))
            planned = min(planned, batch) if planned else batch
        on_gpus = gpu_cap(config)  # the local launcher's GPU slots (noisybench.gpus)
        if on_gpus:
            planned = min(planned, on_gpus) if planned else on_gpus
        threads = job_threads(int(n_jobs), planned)
        os.environ[THREADS_ENV] = str(threads)
        log.info("parallel sweep: %d job(s) at once on %d core(s), %d torch thread(s) each "
                 "(trainer.threads=N to choose)", jobs_at_once(int(n_jobs), planned, cores()), cores(), threads)

    def on_multirun_end(self, config, **kwargs) -> None:
        if getattr(self, "_old", None) is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = self._old
