"""Optuna searches that persist (docs/sweeps.md#optuna-studies-that-persist): the light half.

`hydra/sweeper=optuna` is hydra-optuna-sweeper's sweeper with three changes (the sweep itself is in
noisybench.study_sweep, which imports optuna; this module does not, so that every `noisybench train`
can import it):

- `storage` defaults to `sqlite:///<sweep dir>/optuna.db` (null: in memory, the plugin's default) and
  `study_name` to `noisybench`, so the study is a file in the sweep directory;
- `n_trials` counts the trials already in the study: rerunning the same command continues the study
  toward n_trials in all, instead of running n_trials more;
- `seeds: [0, 1, 2]` scores a trial as the mean of its objective over one run per seed.

`register()` puts that config in Hydra's ConfigStore under the plugin's own name, after Hydra's plugin
scan has stored the plugin's (the scan runs once per process). The sweeper class itself lives in the
`hydra_plugins` namespace (hydra_plugins/noisybench_study), where Hydra looks for plugins.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import OmegaConf

from noisybench.errors import ConfigError

SWEEPER_TARGET = "hydra_plugins.noisybench_study.StudySweeper"
PLUGIN_TARGET = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"  # the plugin's, unregistered
DEFAULT_STORAGE = "sqlite:///${hydra.sweep.dir}/optuna.db"
DEFAULT_STUDY = "noisybench"
STUDY_FILE = "optuna.db"
SWEEP_DIR_ATTR = "noisybench_sweep_dir"  # user attr of a trial: the sweep directory whose process asked it


def register() -> None:
    """Store noisybench's `hydra/sweeper=optuna` (a no-op without hydra-optuna-sweeper installed, or
    when the sweeper class cannot be found)."""
    import importlib.util

    try:
        from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    except ImportError:
        return
    if importlib.util.find_spec("hydra_plugins.noisybench_study") is None:
        return  # an install without the plugin half: check_options says so when a search is asked for
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    # optuna (imported when Hydra builds the sampler) imports alembic, whose INFO lines optuna itself silences
    logging.getLogger("alembic").setLevel(logging.WARNING)
    Plugins.instance()  # Hydra's plugin scan (once per process) stores the plugin's config: ours after it

    @dataclass
    class StudySweeperConf(OptunaSweeperConf):
        _target_: str = SWEEPER_TARGET
        storage: Optional[Any] = DEFAULT_STORAGE
        study_name: Optional[str] = DEFAULT_STUDY
        seeds: Optional[list[Any]] = None

    ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=StudySweeperConf,
                                 provider="noisybench")


def is_study_sweeper(sweeper_cfg) -> bool:
    """noisybench's sweeper, or the plugin's own (which check_options refuses: it would forget the study)."""
    return sweeper_cfg is not None and OmegaConf.select(sweeper_cfg, "_target_") in (SWEEPER_TARGET, PLUGIN_TARGET)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_options(sweeper_cfg, task_overrides: list[str]) -> None:
    """The sweeper's own keys, before anything runs: one ConfigError line naming the key as typed."""
    if OmegaConf.select(sweeper_cfg, "_target_") == PLUGIN_TARGET:
        raise ConfigError("hydra/sweeper=optuna: noisybench's sweeper (hydra_plugins/noisybench_study) is missing "
                          "from this install, so the study would not be kept; reinstall noisybench (pip install . "
                          "or, in a checkout, pip install -e .)")
    get = lambda key: OmegaConf.select(sweeper_cfg, key, throw_on_missing=False)  # noqa: E731
    n_trials, n_jobs = get("n_trials"), get("n_jobs")
    if not _int(n_trials) or n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials}: give the number of trials in all, an integer "
                          ">= 1 (e.g. hydra.sweeper.n_trials=20)")
    if not _int(n_jobs) or n_jobs < 1:
        raise ConfigError(f"hydra.sweeper.n_jobs={n_jobs}: give the number of trials run at a time, an integer "
                          ">= 1 (e.g. hydra.sweeper.n_jobs=2)")
    storage, name = get("storage"), get("study_name")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ConfigError(f"hydra.sweeper.storage={storage}: give a database URL (e.g. hydra.sweeper.storage="
                          "sqlite:///study.db), or null to keep the study in memory")
    if storage is not None and (not isinstance(name, str) or not name.strip()):
        shown = "null" if name is None else name
        raise ConfigError(f"hydra.sweeper.study_name={shown}: a study kept in a database needs a name "
                          "(e.g. hydra.sweeper.study_name=gce_q)")
    check_seeds(get("seeds"), task_overrides, sweeper_cfg)


def check_seeds(seeds: Any, task_overrides: list[str], sweeper_cfg) -> None:
    if seeds is None:
        return
    seeds = OmegaConf.to_container(seeds) if OmegaConf.is_config(seeds) else seeds
    if not isinstance(seeds, list) or not seeds or not all(_int(s) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"hydra.sweeper.seeds={seeds}: give a list of distinct integer seeds, e.g. "
                          "hydra.sweeper.seeds=[0,1,2] (or null: one run per trial)")
    params = OmegaConf.select(sweeper_cfg, "params") or {}
    keys = [str(k) for k in params] + [o.split("=", 1)[0].lstrip("+~") for o in task_overrides]
    if "seed" in keys:
        raise ConfigError("hydra.sweeper.seeds sets each trial's seeds; drop seed=... from the command line "
                          "and from hydra.sweeper.params")


def sqlite_path(storage: str | None) -> str | None:
    """The file of a `sqlite:///PATH` storage URL (None for another kind of storage)."""
    if not isinstance(storage, str) or not storage.startswith("sqlite:///"):
        return None
    return storage[len("sqlite:///"):] or None


def mean_of(values: list[float]) -> float:
    """A trial's value over its seeds: the mean, NaN when any seed has none (the trial fails)."""
    if not values or any(not math.isfinite(v) for v in values):
        return float("nan")
    return sum(values) / len(values)


def study_counts(storage: str | None, study_name: str | None) -> dict[str, int] | None:
    """{state: trials} of the study, read from its SQLite file without writing (None: no file yet, or not
    an SQLite storage); sqlite3.Error when the file cannot be read."""
    path = sqlite_path(storage)
    if path is None or not os.path.isfile(path):
        return None
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT t.state, COUNT(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
                           "WHERE s.study_name = ? GROUP BY t.state", (study_name,)).fetchall()
    finally:
        con.close()
    return {str(state).lower(): n for state, n in rows}


def study_line(storage: str | None, study_name: str | None, n_trials: int | None) -> tuple[str, int] | None:
    """(`study NAME in FILE: k of N trials (c complete, f fail, r running)`, trials still to ask), read
    without writing; None when there is no study file yet (a new search) or it is not an SQLite file."""
    import sqlite3

    try:
        counts = study_counts(storage, study_name)
    except sqlite3.Error as e:
        return f"study {study_name} in {sqlite_path(storage)}: cannot be read ({e})", 0
    if counts is None:
        return None
    total = sum(counts.values())
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    of = f" of {n_trials}" if n_trials else ""
    left = max(0, (n_trials or 0) - total) + counts.get("running", 0)
    return f"study {study_name} in {sqlite_path(storage)}: {total}{of} trials" + (f" ({parts})" if parts else ""), left
