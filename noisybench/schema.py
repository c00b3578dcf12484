"""What every config key may hold, checked before anything runs: no value is silently coerced
(`trainer.epochs=2.5` is not 2 epochs) and no key that nothing reads is accepted (`+trainer.epoch=3`).

Two sources, so the registry stays the config folder and the code that reads a key owns its type:

- a node with `_target_` (model, method, noise, optimizer, loader, ...): its keys must be parameters of
  the target (a class's `__init__` or a function), and each value must match the parameter's
  annotation. `Annotated[float, Range(0, 1, hi_open=True)]` (see the aliases below) adds a range;
  ranges that depend on other parameters stay in the constructors (they raise ConfigError);
- the keys the runner reads itself (trainer.*, dataset.val_fraction, seed, ...): RUNNER below.

A key that neither source knows is an error whose hint is the nearest existing key.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from noisybench.errors import ConfigError

HELP = "noisybench train --cfg job lists every option"
META_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_", "name")


@dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"

    def example(self, kind: type) -> Any:
        """A value inside the range (for the hint of a value outside it)."""
        if kind is int:
            lo = 0 if self.lo is None else int(self.lo) + (1 if self.lo_open else 0)
            return lo if self.holds(lo) else None
        for v in (0.1, 0.5, 1.0, 0.0, float(self.lo or 0) + 1):
            if self.holds(v):
                return v
        return None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


# the aliases annotations use (string annotations are evaluated in their module, which imports them)
Probability = Annotated[float, Range(0.0, 1.0, hi_open=True)]  # dropout, rates: [0, 1)
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0.0, lo_open=True)]
Seed = Annotated[int, Range(0, 2**32 - 1)]  # numpy's seeds are 32-bit, unsigned

# the keys the runner reads itself: dotted key -> (type, example value for hints)
RUNNER: dict[str, tuple[Any, Any]] = {
    "seed": (Seed, 0),
    "objective": (Literal["val_selected", "val_last"], "val_selected"),
    "data_dir": (Optional[str], "DIR"),
    "noise_cache": (bool, "false"),  # +noise_cache=false: compute the noisy labels, do not cache them
    "trainer.epochs": (PositiveInt, 100),
    "trainer.batch_size": (PositiveInt, 128),
    "trainer.eval_batch_size": (PositiveInt, 4096),
    "trainer.device": (str, "auto"),
    "trainer.eval_every": (PositiveInt, 1),
    "trainer.progress": (bool, "true"),
    "trainer.threads": (Optional[PositiveInt], 1),
    "trainer.checkpoint_every": (NonNegativeInt, 1),
    "trainer.keep_checkpoint": (bool, "false"),
    "trainer.max_train_loss": (Optional[PositiveFloat], 1e4),
    "trainer.precision": (Literal["auto", "fp32", "bf16"], "fp32"),  # noisybench.fastpath
    "trainer.channels_last": (Union[bool, Literal["auto"]], "false"),
    "trainer.compile": (bool, "true"),
    "trainer.save_weights_at": (Optional[list[PositiveInt]], [1, 50, 100]),
    "dataset.name": (str, None),
    "dataset.metric": (str, None),
    "dataset.extra_metrics": (list[str], None),
    "dataset.val_fraction": (Annotated[float, Range(0.0, 1.0, hi_open=True)], 0.1),
    "dataset.split_seed": (Seed, 0),
    "dataset.subset": (Optional[PositiveInt], 1000),
    "dataset.subset_at_most": (Optional[PositiveInt], 256),  # a cap, no error on smaller datasets (smoke preset)
    "dataset.asymmetric_map": (Optional[str], None),
    "dataset.human_labels": (dict, None),
    "optim.name": (str, None),
}
# nodes that group keys (no _target_): their keys are RUNNER keys or target nodes (logger: one per tracker)
GROUPS = ("", "trainer", "dataset", "optim", "logger")


def _kind_name(tp: Any) -> str:
    tp, _ = _unwrap(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if _is_union(tp):  # the members a command line can give (not torch.Tensor)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        args = [a for a in args if _unwrap(a)[0] in (bool, int, float, str) or typing.get_origin(a)] or args
        names = " or ".join(_kind_name(a) for a in args)
        return names + (" (or null)" if type(None) in typing.get_args(tp) else "")
    origin = typing.get_origin(tp) or tp
    if isinstance(origin, type) and issubclass(origin, (list, tuple, Sequence)) and origin is not str:
        return "a list, e.g. [1,2]"
    if isinstance(origin, type) and issubclass(origin, (dict, Mapping)):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _unwrap(tp: Any) -> tuple[Any, Range | None]:
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        return base, next((m for m in meta if isinstance(m, Range)), None)
    return tp, None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def conforms(value: Any, tp: Any) -> bool | None:
    """True / False when `tp` says; None for a type this checker does not know (accepted)."""
    tp, rng = _unwrap(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return None
    if tp is None or tp is type(None):
        return value is None
    if _is_union(tp):
        results = [conforms(value, a) for a in typing.get_args(tp)]
        return True if any(results) else (None if None in results else False)
    if typing.get_origin(tp) is Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
        if not isinstance(origin, type):
            return None
        if issubclass(origin, (dict, Mapping)):
            if not isinstance(value, dict):
                return False
            return len(args) != 2 or all(conforms(v, args[1]) is not False for v in value.values())
        if issubclass(origin, (list, tuple, Sequence)) and origin is not str:
            if not isinstance(value, (list, tuple)):
                return False
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(args) != len(value):
                    return False
                pairs = zip(value, args)
            else:
                pairs = ((v, args[0]) for v in value) if args else ()
            return all(conforms(v, a) is not False for v, a in pairs)
        return isinstance(value, origin)  # e.g. torch.Tensor: nothing a command line can give
    if ok and rng is not None and tp in (int, float):
        return rng.holds(value)
    return ok


def _bad_value(key: str, value: Any, tp: Any, example: Any) -> ConfigError:
    base, rng = _unwrap(tp)
    if _is_union(base):  # Optional[Range'd int]: the range of the non-None member
        for a in typing.get_args(base):
            if a is not type(None):
                base, rng = _unwrap(a)
    shown = _fmt_value(value)
    ex = f", e.g. {key}={_fmt_value(example)}" if example is not None else ""
    origin = typing.get_origin(base)
    if (origin is not None and isinstance(origin, type) and issubclass(origin, (dict, Mapping))
            and isinstance(value, dict)):
        args = typing.get_args(base)
        bad = [k for k, v in value.items() if len(args) == 2 and conforms(v, args[1]) is False]
        if bad:
            return _bad_value(f"{key}.{bad[0]}", value[bad[0]], args[1], None)
    if origin is not None and isinstance(origin, type) and issubclass(origin, (list, tuple, Sequence)):
        (elem,) = typing.get_args(base)[:1] or (Any,)
        elem_base, elem_rng = _unwrap(elem)
        plural = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings"}
        what = f"a list of {plural.get(elem_base, 'values')}" + (f" {elem_rng.describe()}" if elem_rng else "")
        return ConfigError(f"{key}={shown} must be {what}{ex}")
    if rng is not None and base in (int, float) and conforms(value, base):
        if example is None or not rng.holds(example):
            example = rng.example(base)
        ex = f", e.g. {key}={_fmt_value(example)}" if example is not None else ""
        return ConfigError(f"{key}={shown} must be {rng.describe()}{ex}")
    what = _kind_name(tp)
    if base is int and isinstance(value, float) and not isinstance(value, bool):
        near = max(int(value), int(rng.lo) if rng and rng.lo is not None else int(value))
        return ConfigError(f"{key}={shown} must be {what} (it is not rounded: that would silently change the "
                           f"experiment), e.g. {key}={near}")
    return ConfigError(f"{key}={shown} must be {what}{ex}")


def _target(path: str):
    module, _, attr = str(path).rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj


@functools.cache  # a sweep checks every job: inspect each target once
def parameters(target) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(parameters by name, their evaluated annotations, accepts **kwargs) of a class or function."""
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}, {}, True
    params = {n: p for n, p in sig.parameters.items()
              if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    hints: dict[str, Any] = {}
    namespace = dict(getattr(fn, "__globals__", {}))
    namespace.update(Annotated=Annotated, Optional=Optional, Union=Union, Any=Any, Literal=Literal)
    for name, p in params.items():
        ann = p.annotation
        if isinstance(ann, str):
            try:
                ann = eval(ann, namespace)  # trusted input: annotations of our own and torch's signatures
            except Exception:
                ann = Any
        hints[name] = ann
    return params, hints, var_kw


def _nearest(name: str, options: list[str]) -> str | None:
    m = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return m[0] if m else None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def known_keys(cfg: DictConfig, prefix: str) -> list[str]:
    """The keys a node may hold: its existing keys, plus its target's parameters, plus RUNNER keys."""
    node = OmegaConf.select(cfg, prefix) if prefix else cfg
    keys = list(node.keys()) if isinstance(node, DictConfig) else []
    if isinstance(node, DictConfig) and node.get("_target_"):
        target = _target(node["_target_"])
        if target is not None:  # not the arguments the runner supplies (required ones the config leaves out)
            keys += [n for n, p in parameters(target)[0].items() if p.default is not p.empty]
    depth = prefix.count(".") + 1 if prefix else 0
    keys += [k.split(".")[depth] for k in RUNNER
             if k.startswith(prefix + "." if prefix else "") and k.count(".") >= depth]
    return [k for k in dict.fromkeys(keys) if k not in META_KEYS]


def suggest(cfg: DictConfig, key: str, value: Any = None) -> str:
    """A hint for an unknown dotted key: the nearest existing key (with the value), or a note."""
    parts = key.split(".")
    for depth in range(len(parts) - 1, -1, -1):  # the deepest existing node on the path
        prefix = ".".join(parts[:depth])
        node = OmegaConf.select(cfg, prefix) if prefix else cfg
        if isinstance(node, DictConfig):
            break
    rest = parts[depth:]
    options = [k for k in known_keys(cfg, prefix) if k != rest[0]]
    near = _nearest(rest[0], options)
    shown = "" if value is None else f"={_fmt_value(value)}"
    if near is not None:
        fixed = _join(prefix, ".".join([near, *rest[1:]]))
        return f"did you mean {fixed}{shown}? ({HELP})"
    owner = _owner(cfg, prefix)
    return (f"{owner} takes: {', '.join(options) if options else 'no options'} ({HELP})")


def _owner(cfg: DictConfig, prefix: str) -> str:
    if not prefix:
        return "noisybench train"
    node = OmegaConf.select(cfg, prefix)
    name = node.get("name") if isinstance(node, DictConfig) else None
    return f"{prefix}={name}" if name and "." not in prefix else prefix


def _unknown(cfg: DictConfig, prefix: str, key: str, value: Any) -> ConfigError:
    full = _join(prefix, key)
    return ConfigError(f"{full} is not an option of {_owner(cfg, prefix)} (nothing would read it); "
                       + suggest(cfg, full, value))


# keys every run reads: removing one (`~trainer.epochs`, `~dataset.loader`) is an error, not a default
REQUIRED = ("seed", "trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size", "trainer.device",
            "trainer.eval_every", "dataset.name", "dataset.loader", "dataset.val_fraction", "dataset.split_seed",
            "noise", "model", "method", "optim.optimizer")


def check(cfg: DictConfig) -> None:
    """Raise ConfigError for the first key nothing reads or value of the wrong type or range."""
    for key in REQUIRED:
        if OmegaConf.select(cfg, key, default="__missing__", throw_on_resolution_failure=False) == "__missing__":
            example = RUNNER.get(key, (None, None))[1]
            fix = f"set it again (e.g. {key}={_fmt_value(example)})" if example is not None else "do not remove it"
            raise ConfigError(f"{key} is missing from the config (removed with ~{key}?); every run reads it: {fix}")
    def value_of(node, key):
        v = node[key]  # resolved (an interpolation of a mapping resolves to a DictConfig)
        return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v

    def walk(node: DictConfig, prefix: str, deferred: list | None = None) -> None:
        target_path = node.get("_target_") if "_target_" in node else None
        if target_path is not None and deferred is not None:
            deferred.append((node, prefix))  # the runner's keys first: they feed interpolations (T_max)
            return
        if target_path is not None:
            target = _target(target_path)
            if target is None:
                return  # an import error is reported by the build, with its own message
            params, hints, var_kw = parameters(target)
            for key in node.keys():
                if key in META_KEYS:
                    continue
                full = _join(prefix, key)
                if key not in params:
                    if not var_kw:
                        raise _unknown(cfg, prefix, key, value_of(node, key))
                    continue
                child = node._get_node(key)
                if isinstance(child, DictConfig) and "_target_" in child:
                    walk(child, full)
                    continue
                value = value_of(node, key)
                if conforms(value, hints.get(key, Any)) is False:
                    default = params[key].default
                    example = None if default is inspect.Parameter.empty else default
                    raise _bad_value(full, value, hints[key], example)
            return
        if prefix not in GROUPS and not any(k.startswith(prefix + ".") for k in RUNNER):
            return  # a mapping inside a RUNNER key (e.g. dataset.human_labels)
        for key in node.keys():
            full = _join(prefix, key)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and ("_target_" in child or full in GROUPS):
                walk(child, full, deferred)
                continue
            if full not in RUNNER:
                raise _unknown(cfg, prefix, key, value_of(node, key))
            tp, example = RUNNER[full]
            value = value_of(node, key)
            if conforms(value, tp) is False:
                raise _bad_value(full, value, tp, example)

    deferred: list[tuple[DictConfig, str]] = []  # target nodes, checked after the runner's keys
    walk(cfg, "", deferred)
    for node, prefix in deferred:
        walk(node, prefix, deferred=None)
