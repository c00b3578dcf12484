"""hydra-submitit-launcher's SLURM and local launchers with two options (docs/cluster.md):

- `runs_per_task: K` packs K runs into one array task, run one after another, each in its own run
  directory (its own checkpoint, identity and outcome). A 2,000-run grid at K=20 is 100 array tasks.
  On SLURM's USR2 (time limit, preemption) the run in progress checkpoints at its next batch boundary
  (noisybench.stopping) and submitit requeues the task with the same chunk; the requeued task runs the
  chunk again: its finished runs are skipped, the interrupted one resumes, the rest start.
- `wait: false` (SLURM) submits the array and returns at once; the CLI prints the sweep directory and
  how to follow it (noisybench.cluster.leaving_lines).

At runs_per_task=1 and wait=true, jobs are submitted and run exactly as the plugin does it.
"""
from __future__ import annotations

import copy
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from noisybench import cluster
from noisybench.errors import ConfigError
from noisybench.locks import Refused
from noisybench.stopping import take_pending

log = logging.getLogger(__name__)


class RunChunk:
    """The runs of one array task: the argument tuples the plugin gives one task each."""

    def __init__(self, jobs: Sequence[tuple]) -> None:
        self.jobs = list(jobs)

    def __repr__(self) -> str:  # submitit logs its submissions
        return f"RunChunk(jobs {self.jobs[0][2]}..{self.jobs[-1][2]})"


class ChunkedSubmititLauncher(BaseSubmititLauncher):
    def __init__(self, **params: Any) -> None:
        self.runs_per_task = params.pop("runs_per_task", 1)
        self.wait = params.pop("wait", True)
        super().__init__(**params)

    def __call__(self, *args: Any) -> Any:
        """In the array task: one run (the plugin's call), or a chunk of runs one after another. A run
        that fails does not stop its chunk (the runner records it and returns NaN)."""
        if len(args) == 1 and isinstance(args[0], RunChunk):
            out = []
            for i, job in enumerate(args[0].jobs):
                pending = take_pending()  # USR2 after the last safe point of the run before this one
                if pending is not None:
                    signal.raise_signal(pending)  # submitit's handler: requeue the chunk, exit
                log.info("run %d of %d in this array task: #%d", i + 1, len(args[0].jobs), job[2])
                *head, state = job
                out.append(super().__call__(*head, copy.deepcopy(state)))  # each run starts from the same state
            return out
        return super().__call__(*args)

    def _executor(self):
        """The plugin's executor set-up (hydra_submitit_launcher's launch), unchanged."""
        import submitit

        params = self.params
        init_params = {"folder": params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{x if x in baseparams else f"{self._EXECUTOR}_{x}": y
                                      for x, y in params.items() if x not in init_keys})
        return executor

    def _sweep_dir(self) -> Path:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        return sweep_dir

    def _finished(self, job_overrides: Sequence[Sequence[str]], sweep_dir: Path) -> dict[int, float]:
        """{index: objective} of the jobs whose run directory already holds a result (finished or diverged):
        a sweep submitted again (--resume) submits only the rest. Their directories are computed as
        `noisybench status` computes them; only when the sweep directory already holds runs."""
        if not any(sweep_dir.glob("*/result.json")):
            return {}
        from noisybench.preflight import _Checker
        from noisybench.rundir import RESULT, RESULT_KEYS, job_dirname_of, read_json_object

        checker = _Checker(self.hydra_context.config_loader, str(self.config.hydra.job.config_name))
        hydra_overrides = list(self.config.hydra.overrides.hydra)
        objective = str(self.config.get("objective", "val_selected"))
        done = {}
        for i, job in enumerate(job_overrides):
            try:
                name = job_dirname_of(list(job), checker.fast_config(hydra_overrides, list(job)))
            except Exception:  # the job composes in its task as usual: submitted
                continue
            result = read_json_object(sweep_dir / name / RESULT, RESULT_KEYS)[0]
            if result is not None:
                value = result.get(objective)
                done[i] = float(value) if isinstance(value, (int, float)) else float("nan")
        return done

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and len(job_overrides) > 0
        done = self._finished(job_overrides, Path(str(self.config.hydra.sweep.dir)))
        if done:
            print(f"noisybench: {len(done)} of {len(job_overrides)} runs already finished (result.json): "
                  f"{'nothing to submit' if len(done) == len(job_overrides) else 'submitting the others'}",
                  file=sys.stderr, flush=True)
        todo = [(i, o) for i, o in enumerate(job_overrides) if i not in done]
        returns = {i: JobReturn(overrides=list(job_overrides[i]), status=JobStatus.COMPLETED, _return_value=v)
                   for i, v in done.items()}
        if todo:
            for (i, _), ret in zip(todo, self._submit([o for _, o in todo], [initial_job_idx + i for i, _ in todo])):
                returns[i] = ret
        return [returns[i] for i in range(len(job_overrides))]

    def _submit(self, job_overrides: Sequence[Sequence[str]], indices: list[int]) -> list[JobReturn]:
        """The plugin's submission, K runs per array task; the jobs' returns (placeholders when not waiting)."""
        k = int(self.runs_per_task)
        if self._EXECUTOR == "slurm":  # preflight checked the grid; a sweeper's batch is checked here
            try:
                cluster.check_array_size(len(job_overrides), k, cluster.max_array_size())
            except ConfigError as e:
                raise Refused(str(e)) from None  # the CLI prints it as one line; nothing was submitted
        executor = self._executor()
        sweep_dir = self._sweep_dir()
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        job_params = []
        state = Singleton.get_state()  # one copy shared by the runs of a task: pickled once per task, not K times
        for idx, overrides in zip(indices, job_overrides):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state))
        if k > 1:
            groups = cluster.chunks(job_params, k)
            log.info("%d runs in %d array task(s) of up to %d runs each", len(job_params), len(groups), k)
            jobs = executor.map_array(self, [RunChunk(g) for g in groups])
        else:
            jobs = executor.map_array(self, *zip(*job_params))
        if not self.wait:
            cluster.leave(sweep_dir, len(job_params), [str(j.job_id) for j in jobs])
            return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=float("nan"))
                    for o in job_overrides]
        results = [j.results()[0] for j in jobs]
        return [r for chunk in results for r in chunk] if k > 1 else results


class SlurmLauncher(ChunkedSubmititLauncher):
    _EXECUTOR = "slurm"


class LocalLauncher(ChunkedSubmititLauncher):
    _EXECUTOR = "local"


@dataclass
class NoisybenchSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.noisybench_launchers._submitit.SlurmLauncher"
    runs_per_task: int = 1  # runs per array task, one after another
    wait: bool = True  # false: submit and leave


@dataclass
class NoisybenchSubmititLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.noisybench_launchers._submitit.LocalLauncher"
    runs_per_task: int = 1
    # no `wait`: local jobs are this command's child processes


ConfigStore.instance().store(group="hydra/launcher", name="noisybench_slurm", node=NoisybenchSlurmConf,
                             provider="noisybench")
ConfigStore.instance().store(group="hydra/launcher", name="noisybench_submitit_local",
                             node=NoisybenchSubmititLocalConf, provider="noisybench")
