"""The shape a result.json must have to enter a table or a figure: the type of every field the report
reads. A record of another shape (a list where an object belongs, an int method name, a seed given as
a string, a config nested deeper than any config) is not tabled: `check_record` says why in a few
words, and the report names the run under the tables as unreadable."""
from __future__ import annotations

MAX_DEPTH = 32  # no config nests this deep (a method's config is 3-4 levels); deeper is not a record of ours

TEXT = ("dataset", "model", "metric")  # the table's grouping keys: a string each
INTEGER = ("seed", "noise_seed", "epochs")
OPTIONAL_INTEGER = ("selected_epoch", "best_epoch")  # None: no validation split / an old record
NUMBER = ("test_last", "test_selected", "test_best")  # None allowed (e.g. no validation split)
OPTIONAL_NUMBER = ("val_last", "val_selected", "realized_noise_rate", "memorized_noisy_frac", "train_time_s")
# the keys every record has (the others may be absent in records of older versions)
REQUIRED = ("dataset", "model", "method", "noise", "seed", "noise_seed", "epochs", "metric", "realized_noise_rate",
            "test_last", "test_selected", "selected_epoch", "test_best")
# noise: (key, the types it may have) besides None
NOISE_FIELDS = (("type", "a string"), ("rate", "a number"), ("label_set", "a string"),
                ("include_true_class", "a boolean"), ("sampling", "a string"), ("apply_to_val", "a boolean"))


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _shown(v) -> str:
    text = repr(v) if isinstance(v, (str, int, float, bool)) or v is None else _kind(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is(v, kind: str) -> bool:
    return {"a string": isinstance(v, str), "a boolean": isinstance(v, bool), "a number": _is_number(v)}[kind]


def depth(doc, limit: int = MAX_DEPTH) -> int:
    """How deep objects and lists nest in `doc` (a scalar: 0), counted up to `limit` + 1 (no recursion)."""
    deepest, stack = 0, [(doc, 0)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            d += 1
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def check_record(r) -> None:
    """ValueError (a few words: which field, what it holds, what it should) unless `r` has the shape
    `noisybench.record.make_record` writes, as far as the report reads it."""
    if not isinstance(r, dict):
        raise ValueError(f"holds {_kind(r)}, not an object")
    if depth(r) > MAX_DEPTH:
        raise ValueError(f"nests more than {MAX_DEPTH} levels deep")
    missing = [k for k in REQUIRED if k not in r]
    if missing:
        raise ValueError(f"no key {', '.join(map(repr, missing[:4]))}" + (", ..." if len(missing) > 4 else ""))
    method, noise = r.get("method"), r.get("noise")
    problems = []
    if not isinstance(method, dict):
        problems.append(f"method is {_shown(method)}, not an object with a name")
    elif not isinstance(method.get("name"), str):
        problems.append(f"method.name is {_shown(method.get('name'))}, not a string")
    if not isinstance(noise, dict):
        problems.append(f"noise is {_shown(noise)}, not an object")
    else:
        problems += [f"noise.{k} is {_shown(noise[k])}, not {kind}" for k, kind in NOISE_FIELDS
                     if noise.get(k) is not None and not _is(noise[k], kind)]
    problems += [f"{k} is {_shown(r.get(k))}, not a string" for k in TEXT if not isinstance(r.get(k), str)]
    problems += [f"{k} is {_shown(r.get(k))}, not an integer" for k in INTEGER if not _is_int(r.get(k))]
    problems += [f"{k} is {_shown(r[k])}, not an integer" for k in OPTIONAL_INTEGER
                 if r.get(k) is not None and not _is_int(r[k])]
    problems += [f"{k} is {_shown(r[k])}, not a number" for k in (*NUMBER, *OPTIONAL_NUMBER)
                 if r.get(k) is not None and not _is_number(r[k])]
    problems += [f"{k} is {_shown(r[k])}, not an object" for k in ("config", "method_metrics", "method_result")
                 if r.get(k) is not None and not isinstance(r[k], dict)]
    problems += [f"{k} is {_shown(r[k])}, not {kind}" for k, kind in (("identity", "a string"),
                 ("uses_clean_labels", "a boolean")) if r.get(k) is not None and not _is(r[k], kind)]
    if problems:
        raise ValueError("; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else ""))


def scalars(d: dict | None) -> dict:
    """The entries of a method's extra results that fit one table cell (numbers, strings, booleans, None)."""
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}
