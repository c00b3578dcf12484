"""One job per GPU on a workstation (docs/cluster.md, "Several GPUs in one machine").

Under the local launcher (`hydra/launcher=local`, joblib) with visible GPUs and jobs on `trainer.device`
auto or cuda, the sweep's parent makes `jobs_per_gpu` slots per GPU, interleaved ([GPU 0, GPU 1, ...,
GPU 0, GPU 1, ...]), and runs at most that many jobs at once. A job, in its worker process, takes the
first free slot (an OS lock on a slot file, released however the job ends) and runs on that slot's GPU:
the runner reads NOISYBENCH_GPU (`noisybench.config.resolve_device`) and uses `cuda:<N>`, which
result.json records as its device. Interleaving puts each new job on the GPU with the fewest jobs.

Why a device index and not CUDA_VISIBLE_DEVICES: joblib reuses its worker processes, and a process
cannot change the GPUs it sees once CUDA is initialised; an index can change from one job to the next.
No GPU (or trainer.device=cpu / cuda:N): nothing here runs, the launcher is joblib's.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; each job then takes the GPU of its index in the sweep
    fcntl = None

GPU_ENV = "NOISYBENCH_GPU"
SPREAD_DEVICES = ("auto", "cuda")  # trainer.device values the launcher may pin to one GPU


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    import torch  # here: the runner imports this module for every run; torch only when counting GPUs

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def slot_gpus(n_gpus: int, per_gpu: int) -> list[int]:
    """The GPU of each slot, interleaved: the first free slot is on a GPU with the fewest jobs."""
    return [g for _ in range(per_gpu) for g in range(n_gpus)]


@contextmanager
def lease(lock_dir: Path, gpus: list[int], index: int = 0) -> Iterator[int]:
    """Hold the first free slot for the duration of a job; yields its GPU. Slots are never all taken
    (the launcher runs at most len(gpus) jobs at once); should they be, wait for one."""
    if fcntl is None:
        yield gpus[index % len(gpus)]
        return
    while True:
        for i, gpu in enumerate(gpus):
            fd = os.open(Path(lock_dir) / f"slot-{i}", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            try:
                yield gpu
            finally:
                os.close(fd)  # releases the lock
            return
        time.sleep(0.2)


@contextmanager
def on_gpu(gpu: int) -> Iterator[None]:
    """The runner of this process uses `cuda:<gpu>` until the block ends."""
    old = os.environ.get(GPU_ENV)
    os.environ[GPU_ENV] = str(gpu)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(GPU_ENV, None)
        else:
            os.environ[GPU_ENV] = old
        free_cached_memory()


def assigned_gpu() -> int | None:
    value = os.environ.get(GPU_ENV)
    return int(value) if value not in (None, "") else None


def free_cached_memory() -> None:
    """The next job of this worker may run on another GPU: hand back what torch's allocator cached."""
    torch = sys.modules.get("torch")  # a job that never imported torch has nothing cached
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def jobs_at_once_on_gpus(n_gpus: int, per_gpu: int | None, device: str) -> int | None:
    """The cap on jobs at once that GPU slots impose, or None when the launcher leaves GPUs alone."""
    if per_gpu is None or n_gpus < 1 or str(device) not in SPREAD_DEVICES:
        return None
    return n_gpus * per_gpu
