"""How a table is laid out: which config keys vary between runs, the row and column label of each
run, what the title names as varied or fixed, and the per-cell choice of tuned keys.

A table cell is exactly one configuration: its runs differ only in the replicate seeds.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable

import pandas as pd

from noisybench.errors import NoisybenchError
from noisybench.rundir import ADDED_AT_DEFAULT

METRIC_TITLES = {"acc": "test accuracy (%)", "f1": "test F1 of the positive class (%)",
                 "macro_f1": "test macro-F1 (%)", "mcc": "test Matthews correlation (x100)",
                 "jga": "test joint goal accuracy, JGA (%)", "slot_acc": "test slot accuracy (%)"}

# the range of each metric's scores (a fraction: x100 in the tables); [0, 1] unless listed. A score outside
# it (or not finite) is named under the tables and left out of its cell (noisybench.report.records)
METRIC_RANGES = {"mcc": (-1.0, 1.0)}
CONFIG_COL = "_config"  # the flattened identity config of each run (not written to summary.csv)
# shown by the table structure already: one table per dataset/model/metric, the method column (with
# the method's varying hyperparameters), the noise column label
SHOWN = ("dataset.name", "model.name", "dataset.metric", "noise.name", "noise.rate", "noise.include_true_class",
         "noise.sampling", "noise.apply_to_val", "noise.label_set")
REPLICATE = ("seed", "noise.seed")  # what varies between the runs of one cell
# named in titles when they are the same for every run of a table
FIXED_SHOWN = ("trainer.epochs", "trainer.batch_size", "optim.name", "optim.optimizer.lr",
               "optim.optimizer.weight_decay", "optim.scheduler.name", "dataset.subset")


class ReportError(NoisybenchError):
    """The runs cannot be tabled as asked (e.g. two runs of one cell share a seed)."""


def flat_config(d: dict, prefix: str = "") -> dict:
    """{"optim": {"optimizer": {"lr": 0.05}}} -> {"optim.optimizer.lr": 0.05}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        elif not str(k).startswith("_"):  # _target_/_partial_: the `name` beside them says the choice
            out[f"{prefix}{k}"] = v
    return out


def config_value(v):
    """A config value as one hashable, comparable cell of summary.csv (lists as JSON)."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def display_key(key: str) -> str:
    """optim.name -> optim: a group's `name` stands for the choice."""
    return key[:-5] if key.endswith(".name") else key


def varied_keys(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Config keys whose value differs between the runs of `df`, other than the replicate seeds (and
    keys equal to them), method keys (the method label shows its hyperparameters), the keys
    the table layout shows, and `exclude`. Keys that vary together one-to-one (trainer.epochs and the
    cosine schedule's T_max) are named once, by the shortest."""
    configs = [json.loads(c) for c in df[CONFIG_COL]]
    if len(configs) < 2:
        return []
    keys = sorted({k for c in configs for k in c})
    def sig(k: str) -> tuple:  # a key added at its default (`_row` puts it back) is the same as its absence
        at = lambda c: "<absent>" if k in ADDED_AT_DEFAULT and c.get(k) == ADDED_AT_DEFAULT[k] else c.get(k, "<absent>")  # noqa: E731
        return tuple(json.dumps(at(c), sort_keys=True, default=str) for c in configs)

    replicate = {sig(k) for k in REPLICATE if k in keys}
    excluded = set(SHOWN) | set(exclude)
    varied = [k for k in keys if len(set(sig(k))) > 1 and k not in excluded and k not in REPLICATE
              and not k.startswith("method.") and sig(k) not in replicate and not _per_noise(k, configs)]
    chosen: dict = {}
    for k in sorted(varied, key=lambda k: (len(k), k)):  # a key equal to another in every run is derived
        chosen.setdefault(sig(k), k)
    return sorted(chosen.values())


def _per_noise(key: str, configs: list[dict]) -> bool:
    """A noise key that one noise type has and another has not, with one value per noise type
    (`noise.map` of asymmetric noise, `noise.std` of instance noise): the column's noise name says it."""
    if not key.startswith("noise."):
        return False
    seen: dict = {}
    for c in configs:
        value = json.dumps(c.get(key, "<absent>"), sort_keys=True, default=str)
        if seen.setdefault(c.get("noise.name"), value) != value:
            return False
    return True


def _short_names(keys: list[str]) -> dict[str, str]:
    """optim.optimizer.lr -> lr, unless another key ends the same way."""
    names = {}
    for k in keys:
        d = display_key(k)
        last = d.rsplit(".", 1)[-1]
        names[k] = last if sum(display_key(o).rsplit(".", 1)[-1] == last for o in keys) == 1 else d
    return names


def fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def chosen_text(names: dict, tuned: list[str], choice: tuple) -> str:
    """A cell's chosen values of the tuned keys, "lr=0.05"; a key the cell's method does not have (None:
    CE beside a tuned method.sharpness) is left out."""
    return ", ".join(f"{names[t]}={fmt_value(v)}" for t, v in zip(tuned, choice) if v is not None)


def sort_value(v):
    """Numbers by value, before everything else by its text."""
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def table_layout(group: pd.DataFrame, tune: Iterable[str] = ()):
    """Row and column labels of every run of one table, and what varied / was fixed."""
    tune = list(tune)
    configs = [json.loads(c) for c in group[CONFIG_COL]]
    varied = varied_keys(group, exclude=tune)
    names = _short_names(varied + [t for t in tune if any(t in c for c in configs)])
    col_keys = [k for k in varied if k.startswith("noise.")]
    row_keys = [k for k in varied if k not in col_keys]

    def label(base: str, c: dict, keys: list[str]) -> str:
        extra = ", ".join(f"{names[k]}={fmt_value(c.get(k))}" for k in keys)
        return f"{base}, {extra}" if extra else base

    methods = group["method_label"]
    if any(t.startswith("method.") for t in tune):  # a tuned method key is chosen per cell, not a row
        methods = method_labels(group, exclude=[t[len("method."):] for t in tune if t.startswith("method.")])
    rows = [label(m, c, row_keys) for m, c in zip(methods, configs)]
    cols = [label(n, c, col_keys) for n, c in zip(group["noise"], configs)]
    row_order = [r for _, r in sorted({(tuple([m] + [sort_value(c.get(k)) for k in row_keys]), r)
                                       for m, c, r in zip(methods, configs, rows)})]
    col_sort = {}
    for t, rate, n, c, lab in zip(group["noise_type"], group["noise_rate"], group["noise"], configs, cols):
        col_sort[lab] = (str(t), float(rate or 0), n, *[sort_value(c.get(k)) for k in col_keys])
    col_order = sorted(col_sort, key=col_sort.get)
    fixed = {k: configs[0].get(k) for k in FIXED_SHOWN
             if k in configs[0] and k not in varied and k not in tune
             and len({json.dumps(c.get(k)) for c in configs}) == 1}
    varying = {k: sorted({config_value(c.get(k)) for c in configs}, key=sort_value) for k in varied}
    return rows, cols, row_order, col_order, names, fixed, varying


def check_replicates(group: pd.DataFrame, rows: list[str], cols: list[str], extra: list | None = None) -> None:
    """Refuse (ReportError) two runs of one cell (and one `extra` value) with the same seeds."""
    seen: dict = {}
    for i, (r, c, s, ns) in enumerate(zip(rows, cols, group["seed"], group["noise_seed"])):
        key = (r, c, s, ns, None if extra is None else extra[i])
        if key in seen:
            raise ReportError(f"runs {seen[key]} and {group['run_dir'].iloc[i]} fall in one table cell ({r} | {c}) "
                              f"with the same seed {s} and noise seed {ns}; they differ only in keys the table "
                              "does not show, so averaging them would be wrong: report them separately")
        seen[key] = group["run_dir"].iloc[i]


def method_labels(df: pd.DataFrame, exclude: Iterable[str] = ()) -> pd.Series:
    """Method name, plus the hyperparameters that differ between runs of that method (other than
    `exclude`: tuned ones), and a mark on runs that learnt from clean labels (`uses_clean_labels` in
    result.json)."""
    labels = df["method"].copy()
    for name, group in df.groupby("method"):
        hps = group["method_hparams"].map(json.loads)
        keys = sorted({k for h in hps for k in h} - set(exclude))
        varying = [k for k in keys if len({json.dumps(h.get(k)) for h in hps}) > 1]
        if varying:
            labels[group.index] = [f"{name} (" + ", ".join(f"{k}={h.get(k)}" for k in varying) + ")" for h in hps]
    if "uses_clean_labels" in df:  # e.g. forward correction with the realised T: an upper bound, as ORACLE epochs
        oracle = df["uses_clean_labels"].fillna(False).astype(bool)
        labels[oracle] = labels[oracle] + " [ORACLE: clean labels]"
    return labels


# the score a tuned key is chosen by, per accuracy kind (best: the oracle test score)
TUNE_SCORE = {"last": "val_last", "selected": "val_selected", "best": "test_best",
              "detection": "val_last", "detection_selected": "val_selected", "detection_lowk": "val_last"}


def tuned_choice(cell: pd.DataFrame) -> tuple:
    """The `choice` (values of the tuned keys) with the best mean `score` over the runs of one
    cell; ties go to the smallest values."""
    means = cell.groupby("choice", sort=False)["score"].apply(lambda v: v.astype(float).mean())
    return max(sorted(means.index, key=lambda t: [sort_value(x) for x in t]),
               key=lambda t: (-math.inf if pd.isna(means[t]) else means[t]))
