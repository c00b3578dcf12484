"""Config helpers: where the config tree is, instantiating registry entries, resolvers, the device.

A leaf: it imports no other module of the package that imports it back, and not torch at import
(`noisybench --help` and TAB completion import it; torch is imported when a device is resolved).
The data-free checks of a composed config are in noisybench.checks."""
from __future__ import annotations

import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from noisybench.errors import ConfigError
from noisybench.needs import explain
from noisybench.rundir import job_dirname
from noisybench.study import register as register_sweeper

if TYPE_CHECKING:
    import torch

CONFIG_MODULE = "noisybench.conf"
CONFIG_NAME = "train"
DEVICES = ("auto", "cpu", "cuda", "mps")


def config_path() -> str:
    """Where the config tree is: the checkout's top-level `conf/` when running from source (editable
    install, or a checkout on sys.path), else the copy shipped in the wheel as `noisybench.conf`."""
    src = Path(__file__).resolve().parent.parent / "conf"
    return str(src) if (src / f"{CONFIG_NAME}.yaml").is_file() else f"pkg://{CONFIG_MODULE}"


def config_files():
    """The config tree as a Traversable (a Path in a checkout, package data in a wheel)."""
    from importlib import resources

    path = config_path()
    return resources.files(CONFIG_MODULE) if path.startswith("pkg://") else Path(path)


@contextmanager
def hydra_context():
    """Hydra's compose API initialised on the config tree (for preflight checks and tests)."""
    from hydra import initialize_config_dir, initialize_config_module

    path = config_path()
    init = (initialize_config_module(CONFIG_MODULE, version_base="1.3") if path.startswith("pkg://")
            else initialize_config_dir(path, version_base="1.3"))
    with init:
        yield


def register_resolvers() -> None:
    """`${nb_uid:}`: a random tag, cached per config, so run/sweep dirs never collide when two jobs
    start in the same second (Hydra copies the resolver cache into every job of a sweep).
    `${nb_job_dir:}`: a sweep job's directory name, its overrides plus
    its identity hash (noisybench.rundir.job_dirname). Also noisybench's `hydra/sweeper=optuna`."""
    if not OmegaConf.has_resolver("nb_uid"):
        OmegaConf.register_new_resolver("nb_uid", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("nb_job_dir"):
        OmegaConf.register_new_resolver("nb_job_dir", job_dirname)
        register_sweeper()  # once per process: `hydra/sweeper=optuna` keeps its study (noisybench.study)
    register_launchers()


def register_launchers() -> None:
    """noisybench's launchers (hydra_plugins/noisybench_launchers: hydra/launcher=slurm and local), its
    study sweeper (hydra_plugins/noisybench_study) and their config nodes, registered with Hydra by hand.
    Hydra finds plugins by listing the `hydra_plugins` package, which misses a package that an editable
    install maps in (pip install -e); importing it registers the config nodes, and Plugins.register the
    classes. Without the optional launcher plugins (noisybench[cluster]) there is nothing to register."""
    import importlib

    from hydra.core.plugins import Plugins

    # each launcher module imports its launcher only when the plugin it builds on is installed; the study
    # sweeper (hydra/sweeper=optuna) imports optuna only when a search starts
    for name in ("noisybench_launchers.slurm", "noisybench_launchers.local", "noisybench_study"):
        try:
            module = importlib.import_module(f"hydra_plugins.{name}")
        except ImportError:  # an install without the hydra_plugins package: Hydra's own scan decides
            continue
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__.startswith(f"hydra_plugins.{name.split('.')[0]}"):
                Plugins.instance().register(obj)


def build(node: DictConfig):
    """Instantiate a registry entry (a partial for `_partial_: true` entries; the runner supplies
    the runtime arguments). `name` is the entry's label, not a constructor argument."""
    container = OmegaConf.to_container(node, resolve=True)
    container.pop("name", None)
    try:
        return instantiate(container)
    except ConfigError:
        raise
    except Exception as e:  # hydra wraps constructor errors in InstantiationException
        cause = e.__cause__ if isinstance(e.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        missing = explain(e, _choice(node))  # e.g. method=storm without numba: the pip command
        if missing is not None:
            raise missing from None
        raise


def _choice(node: DictConfig) -> str:
    """How the user chose `node`: `method=storm` for the config of group `method`, else its target."""
    key, name = node._key() if hasattr(node, "_key") else None, node.get("name")
    return f"{key}={name}" if key and name else str(node.get("_target_", "this config"))


def resolve_device(device: str) -> torch.device:
    import torch  # here, not at the top: see the module docstring (start-up of --help and TAB)

    from noisybench.gpus import SPREAD_DEVICES, assigned_gpu

    gpu = assigned_gpu()  # a job of a local sweep spread over the GPUs (noisybench.gpus)
    if gpu is not None and device in SPREAD_DEVICES and torch.cuda.is_available():
        torch.cuda.set_device(gpu)  # bare "cuda" anywhere in the job means this GPU too
        return torch.device("cuda", gpu)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"trainer.device={device!r} is not a device; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device} but CUDA is not available here; use trainer.device=auto or cpu")
    return dev


def weight_epochs(t: DictConfig) -> set[int]:
    """The 0-based epochs after which per-sample weights are saved (`trainer.save_weights_at`, 1-based;
    null: the first, 25 %, 50 %, 75 % and the last epoch)."""
    at = t.get("save_weights_at")
    epochs = int(t.epochs)
    if at is None:
        return {max(0, round(epochs * f) - 1) for f in (0.0, 0.25, 0.5, 0.75, 1.0)}
    return {int(e) - 1 for e in at}
