"""The Optuna sweep of `hydra/sweeper=optuna` (noisybench.study has the config and the why).

hydra-optuna-sweeper's OptunaSweeperImpl, with its `sweep` rewritten around a study that outlives the
process: the trials already in it count toward `n_trials`; a trial that an earlier process of the same
sweep directory left running (it was interrupted: that process held the directory's lock, so it is
gone) is run again with its parameters, so its run directory resumes from its checkpoint, and its
value is told to the same trial; with `seeds`, every trial is one job per seed and its value their mean.
The search space, fixed parameters, grid sampler and `optimization_results.yaml` are the plugin's.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import TrialState

from noisybench.locks import Refused
from noisybench.study import SWEEP_DIR_ATTR, mean_of, sqlite_path

log = logging.getLogger(__name__)


@contextmanager
def signals_held() -> Iterator[None]:
    """The study's writes in the sweep's process happen whole: a Ctrl-C or SIGTERM that arrives meanwhile
    is delivered right after (else a trial could be asked and left without its parameters or its mark)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def prepare_sqlite(url: str) -> None:
    """optuna 2.x (hydra-optuna-sweeper pins optuna < 3) with SQLAlchemy 2: RDBStorage stamps the schema
    version on a connection it never commits, then finds no version (an AssertionError) or a locked
    database. Make the tables and the stamp first, committed; RDBStorage then finds them. A no-op
    where the installed versions get it right themselves, and on a file that has them."""
    import sqlalchemy

    if int(optuna.__version__.split(".")[0]) >= 3 or int(sqlalchemy.__version__.split(".")[0]) < 2:
        return
    import alembic.migration
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _VersionManager

    engine = sqlalchemy.create_engine(url)
    try:
        models.BaseModel.metadata.create_all(engine)
        with engine.begin() as conn:
            ctx = alembic.migration.MigrationContext.configure(conn)
            if ctx.get_current_revision() is None:
                manager = _VersionManager.__new__(_VersionManager)  # only its alembic script: no connection
                manager.url = url
                script = manager._create_alembic_script()
                ctx.stamp(script, script.get_current_head())
        with sqlalchemy.orm.Session(engine) as session:
            if models.VersionInfoModel.find(session) is None:
                session.add(models.VersionInfoModel(schema_version=models.SCHEMA_VERSION,
                                                    library_version=optuna.__version__))
                session.commit()
    finally:
        engine.dispose()


def open_study(storage: Any, study_name: str | None, sampler, directions: list[str]) -> optuna.Study:
    """The study (created, or loaded when it exists); Refused (one line) when it cannot be opened or
    optimises in another direction than this command."""
    path = sqlite_path(storage)
    try:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            prepare_sqlite(storage)
        have = {s.study_name: s for s in optuna.get_all_study_summaries(storage)} if storage is not None else {}
        theirs = [d.name.lower() for d in have[study_name].directions] if study_name in have else None
        if theirs is not None and "not_set" not in theirs and theirs != [d.lower() for d in directions]:
            # (not_set: another process is creating it this moment; create_study below then checks)
            raise Refused(f"the study {study_name} in {storage} optimises {', '.join(theirs)}, this command "
                          f"{', '.join(directions)}: use the study's hydra.sweeper.direction, or another "
                          "hydra.sweeper.study_name")
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                    directions=directions, load_if_exists=True)
    except Exception as e:
        raise Refused(f"cannot open the Optuna study {study_name} in {storage} ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:200]}); give another hydra.sweeper.storage or "
                      "hydra.sweeper.study_name") from None
    return study


class StudySweeperImpl(OptunaSweeperImpl):
    def __init__(self, *args: Any, seeds: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seeds = list(OmegaConf.to_container(seeds) if OmegaConf.is_config(seeds) else seeds or [])

    def _reseeded_sampler(self, done: int):
        """A seeded sampler continuing a study of `done` trials starts from seed + done: with the seed
        it started with, its first (random) proposals would repeat the ones already run."""
        cfg = OmegaConf.select(self.config, "hydra.sweeper.sampler")
        seed = OmegaConf.select(cfg, "seed", default=None) if cfg is not None else None
        if not done or seed is None or OmegaConf.select(cfg, "_partial_", default=False):
            return self.sampler
        return instantiate(cfg, seed=int(seed) + done)

    def sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        space, fixed = create_params_from_overrides(params_conf)
        if self.search_space_distributions:
            space = {**self.search_space_distributions, **space}
        if isinstance(self.sampler, functools.partial):  # the grid sampler: the plugin's rule
            grid = {name: self._to_grid_sampler_choices(d) for name, d in space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        for name in fixed:
            space.pop(name, None)
        directions = self._get_directions()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # multirun.yaml, as Hydra's basic sweeper: --resume, status
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = open_study(self.storage, self.study_name, self.sampler, directions)
        here = os.path.realpath(sweep_dir)
        trials = study.get_trials(deepcopy=False)
        study.sampler = self._reseeded_sampler(len(trials))
        stale = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get(SWEEP_DIR_ATTR) == here]
        log.info("Optuna study %s in %s: %d of %d trials there; %d interrupted ones to finish", study.study_name,
                 self.storage, len(trials), self.n_trials, len(stale))
        while True:
            batch = [optuna.trial.Trial(study, t._trial_id) for t in stale[:self.n_jobs]]
            stale = stale[self.n_jobs:]
            room = self.n_trials - len(study.get_trials(deepcopy=False))  # other processes' trials count too
            with signals_held():  # a trial is asked, marked as this directory's and given its parameters, whole
                fresh = [study.ask() for _ in range(max(0, min(self.n_jobs - len(batch), room)))]
                for t in fresh:
                    t.set_user_attr(SWEEP_DIR_ATTR, here)
                overrides = [tuple(f"{k}={v}" for k, v in {**t.params, **fixed}.items()) for t in batch]
                overrides += list(self._configure_trials(fresh, space, fixed))
            if not batch and not fresh:
                break
            self._run_batch(study, batch + fresh, overrides)
        self._write_results(study, directions)

    def _run_batch(self, study: optuna.Study, trials: list, overrides: list[tuple[str, ...]]) -> None:
        """Launch every job of these trials at once (one per seed with `seeds`), then tell each trial."""
        seeds = self.seeds or [None]
        jobs = [(*o, f"seed={s}") if s is not None else tuple(o) for o in overrides for s in seeds]
        returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        with signals_held():
            self._tell(study, trials, returns, len(seeds))

    def _tell(self, study: optuna.Study, trials: list, returns: list, n_seeds: int) -> None:
        """Each trial's value: the mean over its n_seeds jobs' objectives (a failed trial without one)."""
        for i, trial in enumerate(trials):
            rets = returns[i * n_seeds:(i + 1) * n_seeds]
            values = [_value(r) for r in rets]
            trial.set_user_attr("run_dirs", [_run_dir(r) for r in rets])
            if self.seeds:
                trial.set_user_attr("seeds", self.seeds)
                trial.set_user_attr("seed_values", values)
            value = mean_of(values)
            if value == value:  # not NaN
                _told(study, trial, values=value)
            else:
                log.warning("trial %d failed (a run returned no objective: failed.json in its run directory)",
                            trial.number)
                _told(study, trial, state=TrialState.FAIL)

    def _write_results(self, study: optuna.Study, directions: list[str]) -> None:
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not done:
            log.warning("no trial of the study has completed: no optimization_results.yaml")
            return
        if len(directions) < 2:
            best = study.best_trial
            out = {"name": "optuna", "best_params": best.params, "best_value": best.value,
                   "study_name": study.study_name, "storage": str(self.storage), "n_trials": len(study.trials)}
            log.info("Best parameters: %s, value %s", best.params, best.value)
        else:
            out = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials]}
        OmegaConf.save(OmegaConf.create(out), f"{self.config.hydra.sweep.dir}/optimization_results.yaml")


def _told(study: optuna.Study, trial, **kwargs) -> None:
    """study.tell, where a grid sampler (hydra/sweeper/sampler=grid) that has just seen its last grid point
    calls study.stop(), which optuna refuses outside study.optimize (RuntimeError). The trial is recorded
    by then (tell stores its value and state in a `finally`), and the loop ends by n_trials."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _value(ret) -> float:
    """A job's objective (NaN when the job raised or returned none)."""
    try:
        return float(ret.return_value)
    except Exception:
        return float("nan")


def _run_dir(ret) -> str | None:
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:
        return None
