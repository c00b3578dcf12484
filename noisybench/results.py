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

from noisybench.rundir import (ATTEMPT, CHECKPOINT, FAILED, IDENTITY, INVOCATION_ENV, RESULT, identity_config,
                               identity_hash)
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
    """The result.json files of finished runs under `paths` (run dirs, sweep dirs or result.json files)."""
    return [d / RESULT for d, state in find_runs(paths) if state == "finished"]


def find_runs(paths: Iterable[Path | str]) -> list[tuple[Path, str]]:
    """Every run directory under `paths` with its state: finished (result.json), failed
    (failed.json) or unfinished (started: identity.json or a checkpoint, but no outcome yet)."""
    dirs: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            dirs.append(p.parent)
        elif p.is_dir():
            for name in (RESULT, FAILED, CHECKPOINT, IDENTITY):
                dirs.extend(f.parent for f in p.rglob(name))
    out = []
    for d in sorted(dict.fromkeys(dirs)):
        state = "finished" if (d / RESULT).is_file() else "failed" if (d / FAILED).is_file() else "unfinished"
        out.append((d, state))
    return out


def _identity_of(record: dict, run_dir: Path) -> str:
    if record.get("identity"):
        return str(record["identity"])
    if isinstance(record.get("config"), dict):  # records written before identities existed
        return identity_hash(identity_config(record["config"]))
    return str(run_dir)


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
    """One row per finished run (each configuration counted once; see `load_runs`)."""
    return load_runs(paths)[0]


def load_runs(paths: Iterable[Path | str]) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """(finished runs, one row each, each identity once; {"failed": [...], "unfinished": [...],
    "duplicate": [...], "unreadable": [...]}: run dirs that are NOT in the table)."""
    rows = []
    left_out: dict[str, list[str]] = {"failed": [], "unfinished": [], "duplicate": [], "unreadable": []}
    seen: dict[str, str] = {}
    for run_dir, state in find_runs(paths):
        if state != "finished":
            left_out[state].append(str(run_dir))
            continue
        path = run_dir / RESULT
        try:
            r = json.loads(path.read_text())
            method = dict(r["method"])
            ident = _identity_of(r, run_dir)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            log.warning("skipping unreadable %s: %s", path, e)
            left_out["unreadable"].append(str(run_dir))
            continue
        if ident in seen:  # the same configuration and seed twice: count it once
            left_out["duplicate"].append(f"{run_dir} (= {seen[ident]})")
            continue
        seen[ident] = str(run_dir)
        rows.append({
            "run_dir": str(path.parent), "identity": ident, "dataset": r["dataset"], "model": r["model"],
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
    return df, left_out


def left_out_note(left_out: dict[str, list[str]], limit: int = 3) -> str:
    """One line under the tables: the runs that are not in them, and why."""
    what = {"failed": "failed (failed.json)", "unfinished": "unfinished (running, interrupted or crashed; "
            "no result.json)", "duplicate": "skipped as duplicates of a counted run (same config and seed)",
            "unreadable": "skipped (unreadable result.json)"}
    parts = []
    for key, label in what.items():
        dirs = left_out.get(key) or []
        if dirs:
            shown = ", ".join(dirs[:limit]) + (", ..." if len(dirs) > limit else "")
            parts.append(f"{len(dirs)} {label}: {shown}")
    return ("Not in the tables: " + "; ".join(parts) + ".") if parts else "Every run found is in the tables."


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
    """summary.csv (one row per counted run) plus the tables in each format, written atomically; the
    Markdown and LaTeX tables end with the runs left out (failed, unfinished, duplicates)."""
    df, left_out = load_runs(paths)
    note = left_out_note(left_out)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "summary.csv", df.to_csv(index=False))
    for fmt in formats:
        filename, writer = WRITERS[fmt]
        text = writer(df, kinds) if not df.empty else "No finished runs.\n"
        if fmt == "md":
            text += f"\n{note}\n"
        elif fmt == "latex":
            text += f"% {note}\n"
        atomic_write_text(out_dir / filename, text)
    return df


def sweep_outcome(sweep_dir: Path, invocation: str | None) -> dict:
    """What the jobs of one sweep invocation did, from their run directories (attempt.json and the
    outcome files), so it holds whichever process or machine ran them."""
    counts = {"finished": 0, "resumed": 0, "skipped": 0}
    failed: list[tuple[str, str]] = []
    unfinished: list[str] = []
    for path in sorted(Path(sweep_dir).rglob(ATTEMPT)):
        try:
            attempt = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if invocation is not None and attempt.get("invocation") != invocation:
            continue  # a job of an earlier invocation that this one did not run
        d = path.parent
        if (d / RESULT).is_file():
            action = attempt.get("action")
            counts["skipped" if action == "skipped" else "finished"] += 1
            counts["resumed"] += action == "resumed"
        elif (d / FAILED).is_file():
            try:
                msg = json.loads((d / FAILED).read_text()).get("error", "?")
            except (OSError, json.JSONDecodeError):
                msg = "?"
            failed.append((str(d), msg))
        else:
            unfinished.append(str(d))
    line = (f"{counts['finished']} ran to the end ({counts['resumed']} of them resumed from a checkpoint), "
            f"{counts['skipped']} skipped (already finished), {len(failed)} failed, {len(unfinished)} unfinished")
    return {"dir": str(sweep_dir), "line": line, "failed": failed, "unfinished": unfinished, **counts}


class SweepTablesCallback(Callback):
    """Rewrites the sweep's summary.csv and table.md after every job and at the end of a multirun,
    so the tables always reflect the finished runs, even if a later job crashes. In the parent
    process, it tags the jobs of this invocation (NOISYBENCH_INVOCATION, inherited by worker
    processes and submitted jobs) and, at the end, counts what they did from the disk (`last`)."""

    last: dict | None = None  # the parent's outcome of the latest multirun (read by the CLI)

    def _write(self, config) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report([sweep_dir], sweep_dir)
        except Exception as e:  # a table failure must not fail the runs it summarises
            log.warning("could not write sweep tables in %s: %s", sweep_dir, e)

    def on_multirun_start(self, config, **kwargs) -> None:
        import os
        import secrets

        self._token = secrets.token_hex(8)
        self._old_env = os.environ.get(INVOCATION_ENV)
        os.environ[INVOCATION_ENV] = self._token

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:
            self._write(config)

    def on_multirun_end(self, config, **kwargs) -> None:
        import os

        self._write(config)
        token = getattr(self, "_token", None)
        if getattr(self, "_old_env", None) is None:
            os.environ.pop(INVOCATION_ENV, None)
        else:
            os.environ[INVOCATION_ENV] = self._old_env
        SweepTablesCallback.last = sweep_outcome(Path(config.hydra.sweep.dir), token)
        log.info("sweep tables: %s", Path(config.hydra.sweep.dir) / "table.md")
