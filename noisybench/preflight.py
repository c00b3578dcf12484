"""Preflight: compose and check every job of a `noisybench train` command before anything is written.

`preflight(args)` reads the command line the way Hydra does (Hydra's own argument parser, override
parser and sweep expansion) and builds the config search path the way `@hydra.main` does (the config
tree, `-cp/--config-path`, `-cn/--config-name`, `-cd/--config-dir`, `hydra.searchpath=[...]`), so it
checks the jobs the run will start, with the configs they will get:

- a single run: its config is composed and checked (`noisybench.checks.validate`);
- a multirun with Hydra's basic sweeper: the grid is expanded by `BasicSweeper.split_arguments` from
  `hydra.sweeper.params` and the command line, after `glob(...)` (matched against the config group's
  options, as the sweeper does), `range(...)` and choice sweeps; EVERY job is checked before the first
  one starts, and the number of jobs is returned;
- another sweeper (e.g. `hydra/sweeper=optuna`): the jobs are not known in advance (the number of
  jobs is None). Every value of a choice/range/glob axis is checked; an `interval(a, b)` is checked at
  both ends for integer intervals (`int(interval(1,8))`: both ends can be drawn) and just inside them
  (a millionth of the width) for float ones (drawn from a <= x < b, a itself with probability 0), so
  `method.q=interval(0,1)` passes although q must be > 0, and `noise.rate=interval(0.5,1.5)` fails.
  The checked values are combined in full up to COMBINATION_LIMIT points, else one axis at a time.

Fast: a job's config depends only on its config-GROUP overrides (method=, dataset=, experiment=, ...:
the overrides that change the defaults list; Hydra's own `repo.group_exists` decides, as it does when
composing) and its hydra overrides. Each distinct combination of those is composed once by Hydra; a
job's value overrides (`noise.rate=0.4`, `+key=v`, `++key=v`, `~key`) are then applied to a copy of it
by Hydra's `ConfigLoaderImpl._apply_overrides_to_config`, the step Hydra itself runs after composing.
Whenever that path raises or the check fails, the job is composed again in full, so every error
message is Hydra's own (and a passing full compose wins).
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import os
from collections import OrderedDict
from typing import Any

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from noisybench.cluster import check_array, check_launcher
from noisybench.config import CONFIG_NAME, config_path, register_resolvers
from noisybench.errors import ConfigError, NoisybenchError, one_line
from noisybench.hydra_errors import condense, missing_key_hint
from noisybench.study import check_options, is_study_sweeper
from noisybench.targets import check_config, check_overrides, registered, sources_of

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
COMBINATION_LIMIT = 4096  # non-basic sweepers: checked axis values are combined in full up to this
INTERVAL_INSET = 1e-6  # float interval(a, b): checked at a + and b - this fraction of the width
# Hydra flags that make the command print something instead of running jobs: nothing to check
_NO_RUN = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")


def parse_args(args: list[str]) -> Any:
    """Hydra's own parse of the command line (an argparse Namespace: overrides, multirun,
    config_dir, ...), or None where Hydra's parser stops (Hydra then prints its usage error)."""
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return get_args_parser().parse_args(list(args))
    except SystemExit:
        return None


def config_loader(ns: Any, primary: str, config_name: str):
    """(loader, config name): a Hydra ConfigLoaderImpl on the search path `@hydra.main` builds for
    `noisybench train` with these flags (Hydra's own configs, the config tree `primary` or -cp, the
    search-path plugins, and -cd prepended before the schema source as Hydra does it); -cn wins."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import compute_search_path_dir, create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.utils import setup_globals, validate_config_path
    from hydra.errors import SearchPathException

    setup_globals()  # Hydra's resolvers (now, hydra, ...), as Hydra() registers them
    path = primary
    if ns.config_path is not None:
        validate_config_path(ns.config_path)
        # relative to the task function's module (noisybench.cli), as @hydra.main resolves it
        path = compute_search_path_dir(None, "noisybench.cli", ns.config_path)
    search_path = create_config_search_path(path)
    if ns.config_dir is not None:
        abs_dir = os.path.abspath(ns.config_dir)
        if not os.path.isdir(abs_dir):
            raise SearchPathException(f"Additional config directory '{abs_dir}' not found")
        search_path.prepend(provider="command-line", path=f"file://{abs_dir}",
                            anchor=SearchPathQuery(provider="schema"))
    return ConfigLoaderImpl(config_search_path=search_path), ns.config_name or config_name


class _JobFailed(Exception):
    def __init__(self, error: Exception, where: str) -> None:
        super().__init__(str(error))
        self.error, self.where = error, where


def _interval_points(sweep) -> list[str]:
    a, b = sweep.start, sweep.end
    if isinstance(a, int) and isinstance(b, int):
        return [str(a), str(b)]
    inset = (float(b) - float(a)) * INTERVAL_INSET
    return [repr(float(a) + inset), repr(float(b) - inset)]


def _sample_jobs(parsed) -> list[list[str]]:
    """Jobs that cover every value an optimising sweeper may give each axis (see the module doc)."""
    axes: OrderedDict[str, list[str]] = OrderedDict()  # one axis per key, the last override wins
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            values = [o.get_value_element_as_str()]
        elif o.is_interval_sweep():
            values = _interval_points(o.value())
        else:
            values = list(o.sweep_string_iterator())
        axes[key] = [f"{key}={v}" for v in values]
    lists = list(axes.values())
    size = 1
    for a in lists:
        size *= len(a)
    if size <= COMBINATION_LIMIT:
        return [list(c) for c in itertools.product(*lists)]
    base = [a[0] for a in lists]
    jobs = [base[:i] + [v] + base[i + 1:] for i, a in enumerate(lists) for v in a[1:]]
    return [base, *jobs]


class _Checker:
    """Composes and validates jobs; one Hydra compose per distinct set of structural overrides."""

    def __init__(self, loader, config_name: str) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        # here, not at the top: checks imports torch, and the CLI imports this module for --help and TAB
        from noisybench.checks import validate

        self.loader, self.config_name, self._validate = loader, config_name, validate
        self.allowed: set[str] | None = None  # the `_target_`s the config search path registers
        self.parser = OverridesParser.create(config_loader=loader)
        self._parsed: dict[str, Any] = {}
        self._kinds: dict[str, bool] = {}
        self._bases: dict[tuple[str, ...], Any] = {}
        self._repo = None

    def validate(self, cfg) -> None:
        if self.allowed is not None:
            check_config(cfg, self.allowed)
        self._validate(cfg)

    def allow(self, full, overrides: list[str]) -> None:
        """The `_target_`s registered by the config sources of `full` (a compose with its hydra node); the
        command line's overrides may name no other (noisybench.targets)."""
        self.allowed = registered(sources_of(full))
        check_overrides(overrides, self.allowed)

    def compose(self, overrides: list[str], run_mode=None):
        """Hydra's full compose (hydra node included), as the app does it (from the shell)."""
        from hydra.types import RunMode

        return self.loader.load_configuration(self.config_name, list(overrides), run_mode=run_mode or RunMode.RUN)

    def app_config(self, overrides: list[str]):
        """The job's config as the task function gets it (compose API: without the hydra node)."""
        from omegaconf import open_dict

        cfg = self.compose(overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def check_full(self, overrides: list[str]) -> None:
        self.validate(self.app_config(overrides))

    def mode_is_multirun(self, ns) -> bool:
        """-m, or `hydra.mode: MULTIRUN` in the config (Hydra's get_mode)."""
        from hydra.types import RunMode

        if ns.multirun:
            return True
        try:
            cfg = self.loader.load_configuration(self.config_name, list(ns.overrides), run_mode=RunMode.MULTIRUN,
                                                 validate_sweep_overrides=False)
            return cfg.hydra.mode == RunMode.MULTIRUN
        except Exception:  # the run's own compose reports it
            return False

    def jobs(self, overrides: list[str]) -> tuple[list[str], list[list[str]], int | None]:
        """(hydra overrides, job overrides, number of jobs or None) of a multirun, as Hydra plans it."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        try:  # the sweep's config, Hydra's first compose (group sweeps left at their defaults)
            master = self.compose(overrides, RunMode.MULTIRUN)
        except Exception as e:
            raise _JobFailed(e, " (in the sweep's base config, which Hydra composes without the swept values)") from e
        check_output_dir(master, "hydra.sweep.dir")
        if is_study_sweeper(master.hydra.sweeper):  # its own keys (seeds, n_trials, storage): one line each
            check_options(master.hydra.sweeper, list(master.hydra.overrides.task))
        check_launcher(master.hydra.get("launcher"), OmegaConf.select(master, "hydra.sweeper._target_"))
        hydra_overrides = list(master.hydra.overrides.hydra)
        params = OmegaConf.select(master, "hydra.sweeper.params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()] + list(master.hydra.overrides.task)
        self.allow(master, [*overrides, *arguments])
        parsed = self.parser.parse_overrides(arguments)
        if OmegaConf.select(master, "hydra.sweeper._target_") == BASIC_SWEEPER:
            jobs = BasicSweeper.split_arguments(parsed, None)[0]
            check_array(master.hydra.get("launcher"), len(jobs))
            return hydra_overrides, jobs, len(jobs)
        return hydra_overrides, _sample_jobs(parsed), None

    def _parse(self, line: str):
        o = self._parsed.get(line)
        if o is None:
            (o,) = self.parser.parse_overrides([line])
            self._parsed[line] = o
        return o

    def _structural(self, line: str) -> bool:
        """True for the overrides that change the defaults list or the search path (composed by Hydra);
        False for value overrides (applied to a copy). Hydra's own rule (defaults_list.Overrides)."""
        if line not in self._kinds:
            o = self._parse(line)
            self._kinds[line] = (o.is_hydra_override() or o.is_sweep_override()
                                 or (not isinstance(o.value(), dict) and self._repo.group_exists(o.key_or_group)))
        return self._kinds[line]

    def _base(self, hydra_overrides: list[str], structural: tuple[str, ...]):
        key = structural
        if key not in self._bases:
            try:
                self._bases[key] = self.app_config([*hydra_overrides, *structural])
            except Exception as e:  # re-raised per job by the full compose, with Hydra's message
                self._bases[key] = e
        return self._bases[key]

    def fast_config(self, hydra_overrides: list[str], job: list[str]):
        """The job's app config: its structural overrides composed (cached), its value overrides applied
        to a copy, as Hydra applies them after composing. Raises where that fails."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        if self._repo is None:  # the config repository with the command's hydra.searchpath
            self._repo = self.loader._parse_overrides_and_create_caching_repo(self.config_name, hydra_overrides)[1]
        structural = tuple(line for line in job if self._structural(line))
        values = [self._parse(line) for line in job if not self._structural(line)]
        base = self._base(hydra_overrides, structural)
        if isinstance(base, Exception):
            raise base
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg

    def check_job(self, hydra_overrides: list[str], job: list[str]) -> None:
        try:
            self.validate(self.fast_config(hydra_overrides, job))
        except Exception:
            self.check_full([*hydra_overrides, *job])  # Hydra's own compose: its error, or it passes


def check_output_dir(cfg, key: str) -> None:
    """The run's (or sweep's) directory can be made and written by this user: else one line naming
    the key, instead of Hydra's traceback when it creates the directory."""
    try:
        path = OmegaConf.select(cfg, key)
    except Exception:  # an interpolation Hydra resolves later (it reports its own errors)
        return
    if not path:
        return
    p = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.exists(p) and not os.path.isdir(p):
        raise ConfigError(f"{key}={path} is a file; give a directory ({key}=DIR)")
    probe = p
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{key}={path}: {probe} is a file, so the directory cannot be made; give another {key}=DIR")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {probe} is not writable by you; give a writable {key}=DIR "
                          "(or set NOISYBENCH_OUTPUT_DIR / NOISYBENCH_MULTIRUN_DIR)")


def preflight(args: list[str]) -> tuple[str | None, int | None]:
    """Compose and check every job of `noisybench train ARGS` before anything is written.

    Returns (error, planned): error is one line (the CLI prints `noisybench: error: <line>`) or None;
    planned is the number of jobs of a multirun with Hydra's basic sweeper, None for a single run or
    when the sweeper decides as it goes (Optuna). Commands that print instead of running (--help,
    --cfg, --info, -sc) and command lines Hydra's parser rejects are left to Hydra: (None, None)."""
    ns = parse_args(args)
    if ns is None or any(getattr(ns, flag, None) for flag in _NO_RUN):
        return None, None
    register_resolvers()
    where, checker = "", None
    try:
        loader, config_name = config_loader(ns, config_path(), CONFIG_NAME)
        checker = _Checker(loader, config_name)
        if not checker.mode_is_multirun(ns):
            full = checker.compose(list(ns.overrides))
            checker.allow(full, list(ns.overrides))
            checker.check_full(list(ns.overrides))
            check_output_dir(full, "hydra.run.dir")
            return None, None
        hydra_overrides, jobs, planned = checker.jobs(list(ns.overrides))
        for i, job in enumerate(jobs):
            try:
                checker.check_job(hydra_overrides, job)
            except Exception as e:
                which = f"sweep job {i + 1} of {len(jobs)}" if planned is not None else "a job the sweeper may run"
                raise _JobFailed(e, f" ({which}: {' '.join(job)})") from e
        return None, planned
    except _JobFailed as failed:
        error, where = failed.error, failed.where
    except Exception as e:  # a config that cannot be composed or built is the user's to fix: one line
        error = e
    if isinstance(error, NoisybenchError):
        return one_line(error) + where, None
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        hint = missing_key_hint(error, list(ns.overrides), checker.app_config if checker else None)
        return (hint or condense(error)) + where, None
    # e.g. a constructor's TypeError for a key the class does not take (`++method.q=0.5` with method=dal)
    return f"{type(error).__name__}: {condense(error)}{where}", None
