"""What to install when a dependency is missing or broken: the `pip install` line, read from
noisybench's own package metadata (pyproject's dependencies and extras), and the one-line errors that
carry it: a module that does not import (numba for STORM), numba failing to compile, a Hydra launcher
or sweeper plugin that is not installed (`hydra/launcher=local` without the `cluster` extra)."""
from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys

from noisybench.errors import ConfigError, NoisybenchError, one_line

# Hydra plugins: the config a plugin brings (hydra/launcher/joblib) -> its module and distribution
PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
           "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
           "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
           "optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
           # noisybench's own launchers (hydra_plugins/noisybench_launchers): registered only with the plugin they use
           "noisybench_joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
           "noisybench_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")}
# modules whose distribution is named otherwise
DISTRIBUTIONS = {**{module: dist for module, dist in PLUGINS.values()}, "sklearn": "scikit-learn",
                 "PIL": "pillow", "yaml": "pyyaml", "mlflow": "mlflow-skinny"}


class MissingDependency(ConfigError):
    """A package the chosen config needs is not installed, or does not work here."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_line(dist: str) -> str:
    """`pip install 'noisybench[EXTRA]'` for the smallest extra (not `test`) that brings `dist`, else
    `pip install 'REQUIREMENT'` as noisybench requires it (e.g. 'numba>=0.59'), else `pip install DIST`."""
    try:
        requires = importlib.metadata.requires("noisybench") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        requires = []
    extras: dict[str, set[str]] = {}
    plain = None
    for line in requires:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
        if name is None:
            continue
        if extra is None:
            if _norm(name.group(1)) == _norm(dist):
                plain = line.split(";")[0].strip()
            continue
        extras.setdefault(extra.group(1), set()).add(_norm(name.group(1)))
    bringing = sorted((len(names), extra) for extra, names in extras.items()
                      if _norm(dist) in names and extra != "test")
    if bringing:
        return f"pip install 'noisybench[{bringing[0][1]}]'"
    return f"pip install '{plain or dist}'"


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _numba_error(e: BaseException) -> bool:
    numba_errors = sys.modules.get("numba.core.errors")
    return numba_errors is not None and isinstance(e, numba_errors.NumbaError)


def explain(e: BaseException, what: str, only: str | None = None) -> NoisybenchError | None:
    """`e` (raised while building or running `what`, e.g. "method=storm") as one line with the pip
    command, when it is a module that does not import (`only`: that package's modules only) or numba
    failing to compile; else None."""
    chain = list(_chain(e))
    imports = [x for x in reversed(chain) if isinstance(x, ImportError)  # the innermost first: the real cause
               and (only is None or (x.name or "numba").split(".")[0] == only)]
    failed = next((x for x in imports if x.name), None) or next((x for x in imports if "numba" in str(x).lower()),
                                                                None)
    if failed is not None:
        module = failed.name or "numba"  # numba's own check of its numpy raises a plain ImportError
        dist = DISTRIBUTIONS.get(module, module.split(".")[0])
        return MissingDependency(f"{what} needs the {dist} package, which does not import here "
                                 f"({type(failed).__name__}: {one_line(failed)[:200]}): {pip_line(dist)}")
    compile_error = next((x for x in chain if _numba_error(x)), None)
    if compile_error is not None:
        first = one_line(str(compile_error).strip().split("\n")[0])[:200]
        return MissingDependency(
            f"numba could not compile the kernels of {what} ({type(compile_error).__name__}: {first}); install "
            f"a numba that fits this numpy ({pip_line('numba')} --upgrade) and delete stale numba cache files "
            "(*.nbi, *.nbc) in the package's __pycache__ directories")
    return None


def missing_plugin(message: str) -> str | None:
    """Hydra's `Could not load 'hydra/launcher/joblib'` (or find 'hydra/sweeper/optuna'), when that
    plugin is not installed: one line naming the choice and the pip command. None otherwise."""
    found = re.search(r"Could not (?:load|find) 'hydra/(launcher|sweeper)/(\w+)'", message)
    if not found or found.group(2) not in PLUGINS:
        return None
    kind, name = found.groups()
    module, dist = PLUGINS[name]
    try:
        importlib.import_module(module)  # installed and working: Hydra's message is about something else
        return None
    except ImportError:
        pass
    chosen = re.search(r"In 'hydra/(launcher|sweeper)/(\w+)'", message)
    choice = f"hydra/{chosen.group(1)}={chosen.group(2)}" if chosen else f"hydra/{kind}={name}"
    plugin = dist.removeprefix("hydra-").replace("-", " ")  # hydra-joblib-launcher -> joblib launcher
    return f"{choice} needs Hydra's {plugin} plugin ({dist}), which is not installed (or does not import): " \
           f"{pip_line(dist)}"
