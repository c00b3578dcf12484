"""STORM's base loss (`method.base_loss`): a per-sample loss method config from the registry, by
name or as a node. See docs/methods/storm.md."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from noisybench.config import build, config_files
from noisybench.errors import ConfigError
from noisybench.methods.base import LossMethod, config_hparams


def _base_loss_node(base_loss) -> dict:
    """`base_loss` is a method config node (dict with `_target_`) or the name of one (`dal`)."""
    if isinstance(base_loss, (DictConfig, dict)):
        node = OmegaConf.to_container(base_loss, resolve=True) if isinstance(base_loss, DictConfig) else dict(base_loss)
        if "_target_" not in node:
            raise ConfigError("method.base_loss must be a method config (with _target_) or the name of one, e.g. dal")
        return node
    name = str(base_loss)
    path = config_files().joinpath("method", f"{name}.yaml")
    if name == "storm" or not path.is_file():
        choices = sorted(p.name[:-5] for p in config_files().joinpath("method").iterdir()
                         if p.name.endswith(".yaml") and p.name != "storm.yaml")
        raise ConfigError(f"method.base_loss={name!r} is not a method config; use one of {', '.join(choices)}")
    return OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)


def build_base_loss(base_loss, num_classes: int) -> tuple[str, LossMethod, dict]:
    """(name, loss, its hyperparameters for the record: a base loss named by its registry entry has no
    node in the run's config to record them from)."""
    node = _base_loss_node(base_loss)
    name = str(node.get("name", node["_target_"].rsplit(".", 1)[-1]))
    loss = build(OmegaConf.create(node))(num_classes=num_classes)
    hparams = {**config_hparams(node), **loss.hparams()}
    if type(loss).forward is LossMethod.forward or type(loss).train_step is not LossMethod.train_step:
        raise ConfigError(f"method.base_loss={name} is not a per-sample loss method; use ce, gce or dal")
    return name, loss, hparams

