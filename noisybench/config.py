"""Config helpers: instantiate registry entries, resolvers, and checks that need no data."""
from __future__ import annotations

import secrets
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from noisybench.errors import ConfigError

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
    its identity hash (noisybench.rundir.job_dirname)."""
    if not OmegaConf.has_resolver("nb_uid"):
        OmegaConf.register_new_resolver("nb_uid", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("nb_job_dir"):
        from noisybench.rundir import job_dirname

        OmegaConf.register_new_resolver("nb_job_dir", job_dirname)


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
        raise


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"trainer.device={device!r} is not a device; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device} but CUDA is not available here; use trainer.device=auto or cpu")
    return dev


def check_trainer(t: DictConfig) -> None:
    if not int(t.epochs) >= 1:
        raise ConfigError(f"trainer.epochs={t.epochs} must be >= 1")
    if not int(t.batch_size) >= 1:
        raise ConfigError(f"trainer.batch_size={t.batch_size} must be >= 1")
    if not int(t.eval_every) >= 1:
        raise ConfigError(f"trainer.eval_every={t.eval_every} must be >= 1")
    every = t.get("checkpoint_every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"trainer.checkpoint_every={every} must be a whole number of epochs >= 0 "
                          "(0 = checkpoints only on Ctrl-C/SIGTERM)")
    if not isinstance(t.get("keep_checkpoint", False), bool):
        raise ConfigError(f"trainer.keep_checkpoint={t.keep_checkpoint} must be true or false")
    late = [e for e in (t.get("save_weights_at") or []) if int(e) > int(t.epochs)]
    if late:
        raise ConfigError(f"trainer.save_weights_at has epoch {late[0]} but the run has trainer.epochs={t.epochs}; "
                          "give epochs from 1 to trainer.epochs (or null for five spread over the run)")
    resolve_device(str(t.device))


def weight_epochs(t: DictConfig) -> set[int]:
    """The 0-based epochs after which per-sample weights are saved (`trainer.save_weights_at`, 1-based;
    null: the first, 25 %, 50 %, 75 % and the last epoch)."""
    at = t.get("save_weights_at")
    epochs = int(t.epochs)
    if at is None:
        return {max(0, round(epochs * f) - 1) for f in (0.0, 0.25, 0.5, 0.75, 1.0)}
    return {int(e) - 1 for e in at}


OBJECTIVES = ("val_selected", "val_last")


def validate(cfg: DictConfig) -> None:
    """Every check that needs no data: run before any directory is written."""
    from noisybench.schema import check

    check(cfg)  # every key is read by something, every value has its type and range (no coercion)
    check_trainer(cfg.trainer)
    if cfg.get("objective", "val_selected") not in OBJECTIVES:
        raise ConfigError(f"objective={cfg.objective} is not a validation score; use {' or '.join(OBJECTIVES)} "
                          "(tuning on test labels would be the oracle)")
    build(cfg.noise)
    build(cfg.method)(num_classes=2)  # hyperparameter checks do not depend on the class count
    try:
        build(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    except ValueError as e:
        raise ConfigError(f"optim.optimizer: {e}") from None
    from noisybench.loggers import build_all

    build_all(cfg)  # trackers (logger=...): a missing package is one line naming the pip command
    data_dir = cfg.get("data_dir")
    if data_dir and Path(str(data_dir)).expanduser().exists() and not Path(str(data_dir)).expanduser().is_dir():
        raise ConfigError(f"data_dir={data_dir} is a file, not a directory; give the dataset cache directory, "
                          "e.g. data_dir=~/.cache/noisybench")
    if cfg.dataset.get("subset") is not None and int(cfg.dataset.subset) < 1:
        raise ConfigError(f"dataset.subset={cfg.dataset.subset} must be a positive number of samples (or null for all)")
    if not 0.0 <= float(cfg.dataset.val_fraction) < 1.0:
        raise ConfigError(f"dataset.val_fraction={cfg.dataset.val_fraction} is outside [0, 1)")
