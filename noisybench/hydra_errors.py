"""Hydra's errors as one line with the fix (the CLI and preflight print them as
`noisybench: error: <line>`): a group's choices, a removed group, the nearest key, `+KEY=VALUE`."""
from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from noisybench.config import CONFIG_NAME, config_files
from noisybench.errors import one_line
from noisybench.needs import missing_plugin
from noisybench.schema import HELP, known_keys, suggest


def condense(e: Exception) -> str:
    """Hydra's (or OmegaConf's) error as one line: the group's choices for a missing option, the
    missing group for a removed one, a spelling hint for an unknown key."""
    msg = str(e)
    plugin = missing_plugin(msg)  # hydra/launcher=local without hydra-joblib-launcher: the pip command
    if plugin:
        return plugin
    if "Could not find" in msg and "Available options" in msg:
        head, _, opts = msg.partition("Available options")
        opts = opts.split("Config search path")[0]
        options = ", ".join(o.strip() for o in opts.split("\n")[1:] if o.strip())
        found = re.search(r"in (\S+)", opts.split("\n")[0])
        group = found.group(1).strip("':") if found else "the group"
        return f"{one_line(head).rstrip('.')}. Choose one of {group}: {options}"
    deleted = _deleted_group(msg)
    if deleted:
        return deleted
    cause = e.__cause__
    parts = [msg.split("\n")[0]]
    if "Could not override" in msg or "not in struct" in msg or "Key" in msg:
        parts.append("check the spelling (noisybench train --cfg job lists every option, --cfg hydra "
                     "Hydra's own)")
    if "Config group override must be a string" in msg:
        parts = ["a config group needs one of its choices, not null (noisybench train --help lists them)"]
    if cause is not None and str(cause).split("\n")[0] not in parts[0]:
        parts.insert(1, str(cause).split("\n")[0])
    return one_line(". ".join(p.rstrip(".") for p in parts if p))


def _deleted_group(msg: str) -> str | None:
    """A required group removed on the command line (`~method`) breaks the `${method}_${dataset}`
    defaults: say which group is missing and how to choose one, instead of Hydra's interpolation error."""
    found = re.search(r"Error resolving interpolation '\$\{(\w+)\}_\$\{(\w+)\}', "
                      r"possible interpolation keys: ([\w/, ]+)", msg)
    if not found:
        return None
    present = {k.strip() for k in found.group(3).split(",")}
    missing = [g for g in found.group(1, 2) if g not in present]
    if not missing:
        return None
    group = missing[0]
    choices = sorted(p.name[:-5] for p in config_files().joinpath(group).iterdir() if p.name.endswith(".yaml"))
    defaults = OmegaConf.create(config_files().joinpath(f"{CONFIG_NAME}.yaml").read_text()).defaults
    default = next((str(d[group]) for d in defaults if isinstance(d, dict) or OmegaConf.is_dict(d)
                    if group in d), choices[0])
    return (f"the config has no {group} (a `~{group}` on the command line removes it, and every run needs one); "
            f"choose one, e.g. {group}={default} (choices: {', '.join(choices)})")


def missing_key_hint(error: Exception, overrides: list[str], app_config) -> str | None:
    """Hydra's "Could not override 'trainer.epoch' ... not in struct" as one line with the fix: the
    nearest existing key, or `+KEY=VALUE` when KEY is a parameter its node's target takes but the
    config does not set (e.g. +optim.optimizer.dampening=0.1); and a `+KEY=VALUE` on a key the config
    has: KEY=VALUE. None for other errors."""
    added = re.search(r"Could not append to config\. An item is already at '([^']+)'", f"{error} {error.__cause__}")
    if added:  # +KEY=VALUE on a key the config has: the + is for keys it has not
        key = added.group(1)
        value = next((o.split("=", 1)[1] for o in reversed(overrides)
                      if "=" in o and o.split("=", 1)[0].lstrip("+~") == key), "VALUE")
        return f"{key} is already in the config, so set it without the +: {key}={value}"
    m = re.search(r"Could not override '([^']+)'", str(error))
    if not m or app_config is None or "not in struct" not in f"{error} {error.__cause__}":
        return None
    key = m.group(1)
    mine = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key]
    value = mine[-1].split("=", 1)[1] if mine and "=" in mine[-1] else None
    rest = [o for o in overrides if o not in mine]
    try:
        cfg = app_config(rest)
    except Exception:
        return None
    prefix, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, prefix) if prefix else cfg
    shown = "" if value is None else f"={value}"
    if isinstance(node, DictConfig) and node.get("_target_") and name in known_keys(cfg, prefix):
        return (f"{key} is not set by the config; {node['_target_'].rsplit('.', 1)[-1]} takes it, so add it "
                f"with +{key}{shown} ({HELP})")
    group, _, rest = key.partition(".")
    choice = rest.split(".")[0]
    if choice and isinstance(cfg.get(group), DictConfig) and choice not in cfg[group]:
        if (config_files() / group / f"{choice}.yaml").is_file():  # e.g. logger.wandb.mode without logger=wandb
            return (f"{key} is an option of {group}={choice}, which the command does not choose; add "
                    f"{group}={choice}")
    return f"{key} is not an option (nothing would read it); {suggest(cfg, key, value)}"
