"""Which callables a `_target_` may name: those a config file registers (docs/development.md).

The config folder is the registry: a `_target_` given on the command line (`method._target_=...`, or
inside a dict value such as `+method.loss={_target_: ...}`) must be a value that some YAML file on the
config search path names as a `_target_`: the package's `conf/` tree, Hydra's own configs, and the
user's folders given with `-cd DIR` / `--config-dir DIR` or `hydra.searchpath=[file://DIR]`. A user's
own method (examples/user_method) is registered by its YAML file in such a folder; anything else
(`os.system`, an internal helper such as an unpickling function) is refused with one line before
anything runs. Config files themselves are trusted: they are the user's, chosen on the command line.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from noisybench.errors import ConfigError

TARGET = "_target_"
_PATTERN = re.compile(r"""_target_['"]?\s*:\s*['"]?([A-Za-z_][\w.]*)""")
MAX_FILES = 5000  # a search-path folder is a config folder, not a home directory: stop walking after this


def _yaml_targets(text: str, found: set[str]) -> None:
    """The `_target_: NAME` values of a YAML text, block or flow style (comments left out): a pattern,
    not a YAML parse, so a broken file elsewhere in a folder is Hydra's to report when it is used."""
    if TARGET not in text:
        return
    for line in text.splitlines():
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        found.update(t for t in _PATTERN.findall(code) if t not in ("null", "None", "~"))


@lru_cache(maxsize=64)
def _source_targets(schema: str, path: str) -> frozenset[str]:
    """The `_target_` values named by the YAML files of one config source (a folder or a package)."""
    found: set[str] = set()
    if schema == "file":
        n = 0
        for root, _dirs, files in os.walk(path):
            for f in files:
                n += 1
                if n > MAX_FILES:
                    return frozenset(found)
                if f.endswith((".yaml", ".yml")):
                    try:
                        with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
                            _yaml_targets(fh.read(), found)
                    except OSError:
                        continue
    elif schema == "pkg":
        from importlib import resources

        try:
            stack = [resources.files(path)]
        except (ModuleNotFoundError, TypeError, ValueError):
            return frozenset()
        while stack:
            node = stack.pop()
            for child in node.iterdir():
                if child.is_dir():
                    stack.append(child)
                elif child.name.endswith((".yaml", ".yml")):
                    _yaml_targets(child.read_text(encoding="utf-8", errors="replace"), found)
    return frozenset(found)


def registered(sources: Iterable[tuple[str, str]]) -> set[str]:
    """Every `_target_` the config sources (schema, path) name: Hydra's `hydra.runtime.config_sources`."""
    out: set[str] = set()
    for schema, path in sources:
        out |= _source_targets(str(schema), str(path))
    return out


def sources_of(cfg) -> list[tuple[str, str]]:
    """The config sources of a composed config (with its hydra node), else the package's config tree."""
    from omegaconf import OmegaConf

    found = None
    for where in ("hydra.runtime.config_sources", "runtime.config_sources"):  # a full config, or its hydra node
        try:
            found = found or OmegaConf.select(cfg, where)
        except Exception:
            pass
    if found:
        return [(str(s.schema), str(s.path)) for s in found]
    from noisybench.config import CONFIG_MODULE, config_path

    path = config_path()
    return [("pkg", CONFIG_MODULE) if path.startswith("pkg://") else ("file", path)]


def _named(value: Any, key: str, strings: bool = True) -> list[tuple[str, Any]]:
    """(dotted key, target) for every `_target_` an override sets: its key, or inside its value (and,
    with `strings`, a string that mentions one: what an interpolation's resolver may build from it)."""
    from hydra.core.override_parser.types import ChoiceSweep, Sweep

    if isinstance(value, ChoiceSweep):
        return [t for v in value.list for t in _named(v, key, strings)]
    if isinstance(value, Sweep):  # range / interval / glob: no callable name in them
        return [(key, value)] if key.split(".")[-1] == TARGET else []
    out = [(key, value)] if key.split(".")[-1] == TARGET else []
    if strings and isinstance(value, str) and not out and TARGET in value:  # e.g. ${oc.create:'{_target_: ...}'}
        out = [(key, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _named(v, f"{key}.{k}", strings)
    elif isinstance(value, list):
        for v in value:
            out += _named(v, key, strings)
    return out


def _refuse(key: str, target: Any) -> ConfigError:
    shown = str(target) if len(str(target)) <= 80 else str(target)[:77] + "..."
    return ConfigError(
        f"{key}={shown}: _target_ may only name a callable that a config file registers (conf/, or your own "
        "folder given with -cd DIR); put it in a YAML file there (e.g. DIR/method/NAME.yaml with "
        "_target_: mymodule.MyMethod) and choose it with method=NAME")


def check_overrides(overrides: Iterable[str], allowed: set[str]) -> None:
    """ConfigError (one line) when an override sets a `_target_` that no config file registers."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [o for o in overrides if TARGET in o]
    if not lines:
        return
    for o in OverridesParser.create().parse_overrides(lines):
        if o.is_delete():
            continue
        for key, target in _named(o.value(), o.key_or_group):
            if target is not None and (not isinstance(target, str) or target not in allowed):
                raise _refuse(key, target)


def check_config(cfg, allowed: set[str]) -> None:
    """ConfigError (one line) for a `_target_` of the composed job config (its hydra node aside) that no
    config file registers: catches what an interpolation or resolver (`${oc.create:...}`) would build."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return
    try:
        keys = [k for k in cfg.keys() if k != "hydra"]
        container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    except Exception:  # an interpolation that does not resolve: the config checks report it in their words
        return
    for key, target in _named(container, "", strings=False):
        if target is not None and (not isinstance(target, str) or target not in allowed):
            raise _refuse(key.lstrip("."), target)
