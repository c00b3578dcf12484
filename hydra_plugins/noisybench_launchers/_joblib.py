"""hydra-joblib-launcher's launcher, spreading jobs over the visible GPUs (noisybench.gpus): at most
`jobs_per_gpu` jobs per GPU at once, each job on one GPU (`cuda:<N>`). With no GPU, with
`trainer.device` cpu (or a fixed cuda:N) or with `jobs_per_gpu: null`, it is joblib's launcher unchanged.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import OmegaConf

from noisybench import gpus
from noisybench.threads import cores, jobs_at_once

log = logging.getLogger(__name__)


def execute_on_gpu(lock_dir: str, slots: list[int], idx: int, *args: Any) -> tuple[JobReturn, int]:
    """In a joblib worker: take a free GPU slot, run the job on its GPU, give the slot back."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    with gpus.lease(Path(lock_dir), slots, idx) as gpu, gpus.on_gpu(gpu):
        log.info("job #%d on GPU %d", idx, gpu)
        return execute_job(idx, *args), gpu


def gpu_plan(config: Any, per_gpu: Optional[int], planned: Optional[int]) -> Optional[tuple[list[int], int]]:
    """(the GPU of each slot, jobs at once) when jobs are spread over GPUs, else None."""
    device = OmegaConf.select(config, "trainer.device", default="auto")
    cap = gpus.jobs_at_once_on_gpus(gpus.visible_gpus(), per_gpu, str(device))
    if cap is None:
        return None
    n_jobs = int(OmegaConf.select(config, "hydra.launcher.n_jobs", default=-1))
    at_once = cap if n_jobs < 0 else min(jobs_at_once(n_jobs, planned, cores()), cap)  # -1: as the GPUs allow
    return gpus.slot_gpus(cap // per_gpu, per_gpu), at_once


class GpuJoblibLauncher(JoblibLauncher):
    def __init__(self, **kwargs: Any) -> None:
        self.jobs_per_gpu = kwargs.pop("jobs_per_gpu", 1)
        super().__init__(**kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        plan = gpu_plan(self.config, self.jobs_per_gpu, len(job_overrides))
        if plan is None:
            return super().launch(job_overrides, initial_job_idx)
        return self._launch_on_gpus(job_overrides, initial_job_idx, *plan)

    def _launch_on_gpus(self, job_overrides, initial_job_idx: int, slots: list[int], at_once: int):
        """hydra-joblib-launcher's launch (its _core.launch), each job wrapped in a GPU lease."""
        from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
        from joblib import Parallel, delayed

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        joblib_cfg = dict(self.joblib, backend="loky", n_jobs=at_once)  # loky: worker processes
        process_joblib_cfg(joblib_cfg)
        n_gpus = len(set(slots))
        log.info("%d jobs on %d GPU(s), at most %d at once (%d per GPU: hydra.launcher.jobs_per_gpu), sweep output "
                 "dir: %s", len(job_overrides), n_gpus, at_once, len(slots) // n_gpus, sweep_dir)
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        state = Singleton.get_state()
        with tempfile.TemporaryDirectory(prefix="noisybench-gpus-") as lock_dir:
            out = Parallel(**joblib_cfg)(
                delayed(execute_on_gpu)(lock_dir, slots, idx, overrides, self.hydra_context, self.config,
                                        self.task_function, state)
                for idx, overrides in enumerate(job_overrides, start=initial_job_idx))
        used = Counter(gpu for _, gpu in out)
        print("noisybench: jobs per GPU: " + ", ".join(f"GPU {g}: {used[g]}" for g in sorted(used)),
              file=sys.stderr, flush=True)
        return [ret for ret, _ in out]


@dataclass
class NoisybenchJoblibConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.noisybench_launchers._joblib.GpuJoblibLauncher"
    jobs_per_gpu: Optional[int] = 1  # jobs sharing one GPU at a time; null: GPUs left alone


ConfigStore.instance().store(group="hydra/launcher", name="noisybench_joblib", node=NoisybenchJoblibConf,
                             provider="noisybench")
