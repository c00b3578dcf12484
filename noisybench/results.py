"""Run records -> summary.csv and paper-style tables (mean ± std (n) over seeds).

Rows are methods (with the hyperparameters that vary inside the table), columns are noise
settings, one table per (dataset, model, metric) and per accuracy kind: last epoch, selected by
the noisy validation split, and the oracle best test epoch (labelled as such).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import pandas as pd
from hydra.experimental.callback import Callback

from noisybench.utils import atomic_write_text

log = logging.getLogger(__name__)

KINDS = {
    "last": ("test_last", "last epoch"),
    "selected": ("test_selected", "selected by validation (noisy labels unless the column says clean val)"),
    "best": ("test_best", "ORACLE best test epoch (not a valid selection protocol)"),
}
DEFAULT_KINDS = ("last", "selected", "best")
METRIC_TITLES = {"acc": "test accuracy (%)", "f1": "test F1 of the positive class (%)",
                 "macro_f1": "test macro-F1 (%)", "mcc": "test Matthews correlation (x100)",
                 "jga": "test joint goal accuracy, JGA (%)", "slot_acc": "test slot accuracy (%)"}


def find_records(paths: Iterable[Path | str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == "result.json":
            found.append(p)
        elif p.is_dir():
            found.extend(sorted(p.rglob("result.json")))
    return list(dict.fromkeys(found))


def _noise_label(noise: dict) -> str:
    if noise.get("type") in (None, "none"):
        return "none"
    if noise.get("label_set") is not None:  # real noise (CIFAR-N): the annotators' label set, no rate
        label = f"{noise['type']} {noise['label_set']}"
    elif noise.get("rate") is None:  # e.g. dst_real: the dataset's own noise
        label = str(noise["type"])
    else:
        label = f"{noise['type']} {noise['rate']:g}"
    if noise.get("include_true_class") is False:
        label += " excl"
    if noise.get("sampling") == "exact":
        label += " exact"
    if noise.get("apply_to_val") is False:
        label += " (clean val)"
    return label


def load_summary(paths: Iterable[Path | str]) -> pd.DataFrame:
    rows = []
    for path in find_records(paths):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping unreadable %s: %s", path, e)
            continue
        method = dict(r["method"])
        rows.append({
            "run_dir": str(path.parent), "dataset": r["dataset"], "model": r["model"],
            "method": method.pop("name"), "method_hparams": json.dumps(method, sort_keys=True),
            "noise": _noise_label(r["noise"]), "noise_type": r["noise"].get("type"),
            "noise_rate": r["noise"].get("rate"), "realized_noise_rate": r["realized_noise_rate"],
            "seed": r["seed"], "noise_seed": r["noise_seed"], "epochs": r["epochs"], "metric": r["metric"],
            "test_last": r["test_last"], "test_selected": r["test_selected"],
            "selected_epoch": r["selected_epoch"], "test_best": r["test_best"], "best_epoch": r.get("best_epoch"),
            "memorized_noisy_frac": r.get("memorized_noisy_frac"), "train_time_s": r.get("train_time_s"),
            "device": r.get("device"), "uses_clean_labels": r.get("uses_clean_labels", False),
            # method diagnostics of the last epoch (e.g. STORM's weight_auc)
            **{f"method_{k}": v for k, v in (r.get("method_metrics") or {}).items()},
        })
    df = pd.DataFrame(rows)
    if not df.empty:
        df["method_label"] = _method_labels(df)
        df = df.sort_values(["dataset", "model", "method_label", "noise_type", "noise_rate", "seed"],
                            kind="stable").reset_index(drop=True)
    return df


def _method_labels(df: pd.DataFrame) -> pd.Series:
    """Method name, plus the hyperparameters that differ between runs of that method."""
    labels = df["method"].copy()
    for name, group in df.groupby("method"):
        hps = group["method_hparams"].map(json.loads)
        keys = sorted({k for h in hps for k in h})
        varying = [k for k in keys if len({json.dumps(h.get(k)) for h in hps}) > 1]
        if varying:
            labels[group.index] = [f"{name} (" + ", ".join(f"{k}={h.get(k)}" for k in varying) + ")" for h in hps]
    return labels


def _cell(values: pd.Series) -> str:
    v = values.dropna() * 100
    if v.empty:
        return "–"
    if len(v) == 1:
        return f"{v.iloc[0]:.2f} (1)"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} ({len(v)})"


def pivot(df: pd.DataFrame, column: str) -> pd.DataFrame:
    cols = df[["noise", "noise_type", "noise_rate"]].drop_duplicates().itertuples(index=False)
    order = [c.noise for c in sorted(cols, key=lambda c: (str(c.noise_type), float(c.noise_rate or 0), c.noise))]
    order = list(dict.fromkeys(order))
    table = df.groupby(["method_label", "noise"])[column].apply(_cell).unstack("noise")
    return table.reindex(columns=order).fillna("–")


def tables(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS):
    """Yield (title, kind, table) per (dataset, model, metric) and accuracy kind."""
    for (dataset, model, metric), group in df.groupby(["dataset", "model", "metric"]):
        seeds = sorted(group["seed"].unique().tolist())
        for kind in kinds:
            column, desc = KINDS[kind]
            title = (f"{dataset} / {model}: {METRIC_TITLES.get(metric, metric)}, {desc}; "
                     f"mean ± std (n) over seeds {seeds}")
            yield title, kind, pivot(group, column)


def to_markdown(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS) -> str:
    out = []
    for title, _, t in tables(df, kinds):
        header = "| method | " + " | ".join(t.columns) + " |"
        sep = "|---|" + "---|" * len(t.columns)
        body = ["| " + " | ".join([idx, *map(str, row)]) + " |" for idx, row in zip(t.index, t.values)]
        out.append(f"### {title}\n\n" + "\n".join([header, sep, *body]) + "\n")
    return "\n".join(out)


def to_latex(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS) -> str:
    def esc(s: str) -> str:
        return str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")

    out = []
    for title, _, t in tables(df, kinds):
        lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + esc(title) + "}",
                 r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule",
                 "method & " + " & ".join(esc(c) for c in t.columns) + r" \\", r"\midrule"]
        lines += [esc(i) + " & " + " & ".join(esc(v) for v in row) + r" \\" for i, row in zip(t.index, t.values)]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        out.append("\n".join(lines))
    return "\n".join(out)


def to_csv(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS) -> str:
    frames = []
    for title, kind, t in tables(df, kinds):
        t = t.copy()
        t.insert(0, "table", title)
        t.insert(1, "kind", kind)
        frames.append(t.reset_index().rename(columns={"method_label": "method"}))
    return pd.concat(frames).to_csv(index=False) if frames else ""


WRITERS = {"md": ("table.md", to_markdown), "csv": ("table.csv", to_csv), "latex": ("table.tex", to_latex)}


def write_report(paths: Iterable[Path | str], out_dir: Path, formats: Iterable[str] = ("md",),
                 kinds: Iterable[str] = DEFAULT_KINDS) -> pd.DataFrame:
    """summary.csv (one row per run) plus the tables in each format, written atomically."""
    df = load_summary(paths)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "summary.csv", df.to_csv(index=False))
    for fmt in formats:
        filename, writer = WRITERS[fmt]
        atomic_write_text(out_dir / filename, writer(df, kinds) if not df.empty else "No finished runs.\n")
    return df


class SweepTablesCallback(Callback):
    """Rewrites the sweep's summary.csv and table.md after every job and at the end of a multirun,
    so the tables always reflect the finished runs, even if a later job crashes."""

    def _write(self, config) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report([sweep_dir], sweep_dir)
        except Exception as e:  # a table failure must not fail the runs it summarises
            log.warning("could not write sweep tables in %s: %s", sweep_dir, e)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:
            self._write(config)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._write(config)
        log.info("sweep tables: %s", Path(config.hydra.sweep.dir) / "table.md")
