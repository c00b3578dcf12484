"""Run records -> summary.csv and paper-style tables (mean ± std (n) over seeds).

Rows are methods (with the hyperparameters that vary inside the table), columns are noise
settings, one table per (dataset, model, metric) and per accuracy kind: last epoch, selected by
the noisy validation split, and the oracle best test epoch (labelled as such).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Iterable

import pandas as pd
from hydra.experimental.callback import Callback

from noisybench.rundir import (ATTEMPT, CHECKPOINT, FAILED, IDENTITY, INVOCATION_ENV, RESULT, identity_config,
                               identity_hash)
from noisybench.errors import NoisybenchError, one_line
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
            row = {
                "run_dir": str(path.parent), "identity": ident, "dataset": r["dataset"], "model": r["model"],
                "method": method.pop("name"), "method_hparams": json.dumps(method, sort_keys=True),
                "noise": _noise_label(r["noise"]), "noise_type": r["noise"].get("type"),
                "noise_rate": r["noise"].get("rate"), "realized_noise_rate": r["realized_noise_rate"],
                "seed": r["seed"], "noise_seed": r["noise_seed"], "epochs": r["epochs"], "metric": r["metric"],
                "val_last": r.get("val_last"), "val_selected": r.get("val_selected"),
                "test_last": r["test_last"], "test_selected": r["test_selected"],
                "selected_epoch": r["selected_epoch"], "test_best": r["test_best"], "best_epoch": r.get("best_epoch"),
                "memorized_noisy_frac": r.get("memorized_noisy_frac"), "train_time_s": r.get("train_time_s"),
                "device": r.get("device"), "uses_clean_labels": r.get("uses_clean_labels", False),
                # method diagnostics of the last epoch (e.g. STORM's weight_auc)
                **{f"method_{k}": v for k, v in (r.get("method_metrics") or {}).items()},
                "diverged": bool(r.get("diverged")),
                CONFIG_COL: json.dumps(_flat(identity_config(r["config"])) if isinstance(r.get("config"), dict) else {},
                                       sort_keys=True, default=str),
            }
            for k in ("test_last", "test_best", "test_selected", "val_last", "val_selected", "realized_noise_rate"):
                if row[k] is not None and (isinstance(row[k], bool) or not isinstance(row[k], (int, float))):
                    raise ValueError(f"{k} is {row[k]!r}, not a number")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
                AttributeError) as e:
            why = f"no key {e}" if isinstance(e, KeyError) else one_line(e)[:120]
            left_out["unreadable"].append(f"{run_dir} ({why})")
            continue
        if ident in seen:  # the same configuration and seed twice: count it once
            left_out["duplicate"].append(f"{run_dir} (= {seen[ident]})")
            continue
        seen[ident] = str(run_dir)
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df["method_label"] = _method_labels(df)
        df = df.sort_values(["dataset", "model", "method_label", "noise_type", "noise_rate", "seed"],
                            kind="stable").reset_index(drop=True)
        for key in varied_keys(df):  # summary.csv: one column per key that varies across the runs
            df[key] = [_value(c.get(key)) for c in df[CONFIG_COL].map(json.loads)]
    return df, left_out


# ---- a table cell is exactly one configuration -------------------------------------------------
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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not str(k).startswith("_"):  # _target_/_partial_: the `name` beside them says the choice
            out[f"{prefix}{k}"] = v
    return out


def _value(v):
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _display_key(key: str) -> str:
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
    sig = lambda k: tuple(json.dumps(c.get(k, "<absent>"), sort_keys=True, default=str) for c in configs)  # noqa: E731

    replicate = {sig(k) for k in REPLICATE if k in keys}
    excluded = set(SHOWN) | set(exclude)
    varied = [k for k in keys if len(set(sig(k))) > 1 and k not in excluded and k not in REPLICATE
              and not k.startswith("method.") and sig(k) not in replicate]
    chosen: dict = {}
    for k in sorted(varied, key=lambda k: (len(k), k)):  # a key equal to another in every run is derived
        chosen.setdefault(sig(k), k)
    return sorted(chosen.values())


def _short_names(keys: list[str]) -> dict[str, str]:
    """optim.optimizer.lr -> lr, unless another key ends the same way."""
    names = {}
    for k in keys:
        d = _display_key(k)
        last = d.rsplit(".", 1)[-1]
        names[k] = last if sum(_display_key(o).rsplit(".", 1)[-1] == last for o in keys) == 1 else d
    return names


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _sort_value(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def _layout(group: pd.DataFrame, tune: Iterable[str] = ()):
    """Row and column labels of every run of one table, and what varied / was fixed."""
    tune = list(tune)
    configs = [json.loads(c) for c in group[CONFIG_COL]]
    varied = varied_keys(group, exclude=tune)
    names = _short_names(varied + [t for t in tune if any(t in c for c in configs)])
    col_keys = [k for k in varied if k.startswith("noise.")]
    row_keys = [k for k in varied if k not in col_keys]

    def label(base: str, c: dict, keys: list[str]) -> str:
        extra = ", ".join(f"{names[k]}={_fmt_value(c.get(k))}" for k in keys)
        return f"{base}, {extra}" if extra else base

    rows = [label(m, c, row_keys) for m, c in zip(group["method_label"], configs)]
    cols = [label(n, c, col_keys) for n, c in zip(group["noise"], configs)]
    row_order = [r for _, r in sorted({(tuple([m] + [_sort_value(c.get(k)) for k in row_keys]), r)
                                       for m, c, r in zip(group["method_label"], configs, rows)})]
    col_sort = {}
    for t, rate, n, c, lab in zip(group["noise_type"], group["noise_rate"], group["noise"], configs, cols):
        col_sort[lab] = (str(t), float(rate or 0), n, *[_sort_value(c.get(k)) for k in col_keys])
    col_order = sorted(col_sort, key=col_sort.get)
    fixed = {k: configs[0].get(k) for k in FIXED_SHOWN
             if k in configs[0] and k not in varied and k not in tune
             and len({json.dumps(c.get(k)) for c in configs}) == 1}
    varying = {k: sorted({_value(c.get(k)) for c in configs}, key=_sort_value) for k in varied}
    return rows, cols, row_order, col_order, names, fixed, varying


def _check_replicates(group: pd.DataFrame, rows: list[str], cols: list[str], extra: list | None = None) -> None:
    seen: dict = {}
    for i, (r, c, s, ns) in enumerate(zip(rows, cols, group["seed"], group["noise_seed"])):
        key = (r, c, s, ns, None if extra is None else extra[i])
        if key in seen:
            raise ReportError(f"runs {seen[key]} and {group['run_dir'].iloc[i]} fall in one table cell ({r} | {c}) "
                              f"with the same seed {s} and noise seed {ns}; they differ only in keys the table "
                              "does not show, so averaging them would be wrong: report them separately")
        seen[key] = group["run_dir"].iloc[i]


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


def _cell(values: pd.Series, diverged: pd.Series | None = None) -> str:
    """mean ± std (n); runs that diverged (result.json `diverged`) are counted and named in the cell."""
    n_div = int(diverged[values.notna()].sum()) if diverged is not None else 0
    mark = f", {n_div} diverged" if n_div else ""
    v = values.dropna() * 100
    if v.empty:
        return "–"
    if len(v) == 1:
        return f"{v.iloc[0]:.2f} (1{mark})"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} ({len(v)}{mark})"


TUNE_SCORE = {"last": "val_last", "selected": "val_selected", "best": "test_best"}


def tables(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = ()):
    """Yield (title, kind, table) per (dataset, model, metric) and accuracy kind. A cell holds the runs
    of ONE configuration (they differ only in seed / noise seed); every other key that varies is in
    the row label (or, for noise keys, the column label). With `tune`, those keys are chosen per cell:
    the value(s) with the best mean validation score over seeds (last: val_last; selected:
    val_selected; best: the oracle test score, labelled so)."""
    tune = list(tune)
    for (dataset, model, metric), group in df.groupby(["dataset", "model", "metric"]):
        rows, cols, row_order, col_order, names, fixed, varying = _layout(group, tune)
        configs = [json.loads(c) for c in group[CONFIG_COL]]
        tuned = [t for t in tune if any(t in c for c in configs)]
        choice = [tuple(_value(c.get(t)) for t in tuned) for c in configs]
        _check_replicates(group, rows, cols, choice if tuned else None)
        seeds = sorted(group["seed"].unique().tolist())
        noise_seeds = sorted(group["noise_seed"].unique().tolist())
        over = f"seeds {seeds}" + (f" x noise seeds {noise_seeds}" if len(noise_seeds) > 1 and noise_seeds != seeds
                                  else "")
        facts = []
        if varying:
            facts.append("varied: " + "; ".join(f"{names[k]} in {{{', '.join(map(_fmt_value, v))}}}"
                                                for k, v in varying.items()))
        if fixed:
            facts.append("fixed: " + ", ".join(f"{_display_key(k)}={_fmt_value(v)}" for k, v in fixed.items()))
        for kind in kinds:
            column, desc = KINDS[kind]
            tuned_note = ""
            if tuned:
                score = TUNE_SCORE[kind]
                how = ("ORACLE: chosen by mean test score" if kind == "best" else
                       f"chosen per cell by the best mean {score} over seeds")
                tuned_note = f"; tuned {', '.join(names[t] for t in tuned)} ({how}; [chosen value])"
            title = (f"{dataset} / {model}: {METRIC_TITLES.get(metric, metric)}, {desc}; mean ± std (n) over {over}"
                     + "".join(f"; {f}" for f in facts) + tuned_note)
            frame = pd.DataFrame({"row": rows, "col": cols, "value": group[column].to_numpy(),
                                  "diverged": group["diverged"].to_numpy() if "diverged" in group else False,
                                  "choice": choice, "score": group[TUNE_SCORE[kind]].to_numpy() if tuned else 0.0})
            cells = {}
            for (r, c), cell in frame.groupby(["row", "col"], sort=False):
                if not tuned:
                    cells[(r, c)] = _cell(cell["value"], cell["diverged"])
                    continue
                means = cell.groupby("choice", sort=False)["score"].apply(lambda v: v.astype(float).mean())
                best = max(sorted(means.index, key=lambda t: [_sort_value(x) for x in t]),
                           key=lambda t: (-math.inf if pd.isna(means[t]) else means[t]))
                picked = cell[[ch == best for ch in cell["choice"]]]
                chosen = ", ".join(f"{names[t]}={_fmt_value(v)}" for t, v in zip(tuned, best))
                cells[(r, c)] = f"{_cell(picked['value'], picked['diverged'])} [{chosen}]"
            table = pd.DataFrame([[cells.get((r, c), "–") for c in col_order] for r in row_order],
                                 index=pd.Index(row_order, name="method_label"), columns=col_order)
            yield title, kind, table


def to_markdown(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = ()) -> str:
    out = []
    for title, _, t in tables(df, kinds, tune):
        header = "| method | " + " | ".join(t.columns) + " |"
        sep = "|---|" + "---|" * len(t.columns)
        body = ["| " + " | ".join([idx, *map(str, row)]) + " |" for idx, row in zip(t.index, t.values)]
        out.append(f"### {title}\n\n" + "\n".join([header, sep, *body]) + "\n")
    return "\n".join(out)


def to_latex(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = ()) -> str:
    def esc(s: str) -> str:
        return str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")

    out = []
    for title, _, t in tables(df, kinds, tune):
        lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + esc(title) + "}",
                 r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule",
                 "method & " + " & ".join(esc(c) for c in t.columns) + r" \\", r"\midrule"]
        lines += [esc(i) + " & " + " & ".join(esc(v) for v in row) + r" \\" for i, row in zip(t.index, t.values)]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        out.append("\n".join(lines))
    return "\n".join(out)


def to_csv(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = ()) -> str:
    frames = []
    for title, kind, t in tables(df, kinds, tune):
        t = t.copy()
        t.insert(0, "table", title)
        t.insert(1, "kind", kind)
        frames.append(t.reset_index().rename(columns={"method_label": "method"}))
    return pd.concat(frames).to_csv(index=False) if frames else ""


HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1a1a1a; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1em; font-weight: 600; margin: 1.5em 0 .4em; }
table { border-collapse: collapse; font-size: .9em; margin-bottom: .5em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
.oracle { border-left: 4px solid #D55E00; padding-left: .8em; }
.badge { background: #D55E00; color: white; font-size: .75em; padding: .1em .45em; border-radius: 3px;
         margin-right: .4em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #333; max-width: 800px; }
.note { font-size: .85em; color: #555; }
"""


def to_html(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = ()) -> str:
    """One self-contained HTML page: per (dataset, model, metric) its tables and its figures (PNG
    embedded as data: URIs; no external file, script, font or link), readable offline."""
    import base64
    from html import escape

    from noisybench import __version__
    from noisybench.plots import figures, png_bytes

    kinds = list(kinds)
    parts = [f"<p class=\"note\">{len(df)} runs; noisybench {escape(__version__)}. Cells: mean ± std (n) over "
             "seeds, in %. Tables marked ORACLE select on test labels: not a valid protocol, shown because papers "
             "report it." + (" Tuned keys apply to the tables only; the figures show every setting." if tune else "")
             + "</p>"]
    for (dataset, model, metric), sub in df.groupby(["dataset", "model", "metric"]):
        parts.append(f"<h2>{escape(f'{dataset} / {model}: {METRIC_TITLES.get(metric, metric)}')}</h2>")
        for title, kind, t in tables(sub, kinds, tune):
            oracle = kind == "best"
            head = "".join(f"<th>{escape(str(c))}</th>" for c in ["method", *t.columns])
            body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in [i, *row]) + "</tr>"
                           for i, row in zip(t.index, t.values))
            badge = '<span class="badge">ORACLE</span>' if oracle else ""
            cls = ' class="oracle"' if oracle else ""
            parts.append(f"<section{cls}><h3>{badge}{escape(title)}</h3>"
                         f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>")
        for plot in figures(sub):
            data = base64.b64encode(png_bytes(plot, dpi=150)).decode("ascii")
            width = round(plot.figure.get_figwidth() * 130)  # px: a 7-inch figure fills the page
            parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" width=\"{width}\" "
                         f"alt=\"{escape(plot.name)}\"><figcaption>{escape(plot.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>noisybench report</title>"
            f"<style>{HTML_STYLE}</style></head><body><h1>noisybench report</h1>\n" + "\n".join(parts)
            + "\n</body></html>\n")


WRITERS = {"md": ("table.md", to_markdown), "csv": ("table.csv", to_csv), "latex": ("table.tex", to_latex),
           "html": ("report.html", to_html)}


def write_report(paths: Iterable[Path | str], out_dir: Path, formats: Iterable[str] = ("md",),
                 kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = ()) -> pd.DataFrame:
    """summary.csv (one row per counted run) plus the tables in each format, written atomically; the
    Markdown and LaTeX tables end with the runs left out (failed, unfinished, duplicates)."""
    df, left_out = load_runs(paths)
    note = left_out_note(left_out)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "summary.csv", df.drop(columns=[CONFIG_COL], errors="ignore").to_csv(index=False))
    for fmt in formats:
        filename, writer = WRITERS[fmt]
        text = writer(df, kinds, tune) if not df.empty else "No finished runs.\n"
        if fmt == "md":
            text += f"\n{note}\n"
        elif fmt == "latex":
            text += f"% {note}\n"
        elif fmt == "html":
            from html import escape

            text = text.replace("</body>", f"<p class=\"note\">{escape(note)}</p></body>")
        atomic_write_text(out_dir / filename, text)
    return df


def sweep_outcome(sweep_dir: Path, invocation: str | None) -> dict:
    """What the jobs of one sweep invocation did, from their run directories (attempt.json and the
    outcome files), so it holds whichever process or machine ran them."""
    counts = {"finished": 0, "resumed": 0, "skipped": 0}
    failed: list[tuple[str, str]] = []
    unfinished: list[str] = []
    diverged: list[tuple[str, str]] = []  # finished (a result.json) but marked diverged
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
            try:
                div = json.loads((d / RESULT).read_text()).get("diverged")
            except (OSError, json.JSONDecodeError, AttributeError):
                div = None
            if div:
                diverged.append((str(d), div.get("message", "diverged") if isinstance(div, dict) else "diverged"))
        elif (d / FAILED).is_file():
            try:
                msg = json.loads((d / FAILED).read_text()).get("error", "?")
            except (OSError, json.JSONDecodeError):
                msg = "?"
            failed.append((str(d), msg))
        else:
            unfinished.append(str(d))
    line = (f"{counts['finished']} ran to the end ({counts['resumed']} of them resumed from a checkpoint), "
            f"{counts['skipped']} skipped (already finished), {len(failed)} failed, {len(unfinished)} unfinished"
            + (f"; {len(diverged)} of the finished runs diverged (in the tables, marked)" if diverged else ""))
    return {"dir": str(sweep_dir), "line": line, "failed": failed, "unfinished": unfinished, "diverged": diverged,
            **counts}


class SweepTablesCallback(Callback):
    """Rewrites the sweep's summary.csv and table.md after every job and at the end of a multirun,
    so the tables always reflect the finished runs, even if a later job crashes. In the parent
    process, it tags the jobs of this invocation (NOISYBENCH_INVOCATION, inherited by worker
    processes and submitted jobs) and, at the end, counts what they did from the disk (`last`)."""

    last: dict | None = None  # the parent's outcome of the latest multirun (read by the CLI)
    planned: int | None = None  # the number of jobs, when the CLI's preflight knows it
    progress_every = 5.0  # seconds between looks at the sweep dir for the "k/N done, ETA" line

    def __getstate__(self) -> dict:  # launchers pickle callbacks into worker processes: not the progress thread
        return {k: v for k, v in self.__dict__.items() if k != "_progress"}

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
        self._progress = _Progress(Path(config.hydra.sweep.dir), self._token, self.planned, self.progress_every)
        self._progress.start()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:
            self._write(config)

    def on_multirun_end(self, config, **kwargs) -> None:
        import os

        if getattr(self, "_progress", None) is not None:
            self._progress.stop()
        self._write(config)
        token = getattr(self, "_token", None)
        if getattr(self, "_old_env", None) is None:
            os.environ.pop(INVOCATION_ENV, None)
        else:
            os.environ[INVOCATION_ENV] = self._old_env
        SweepTablesCallback.last = sweep_outcome(Path(config.hydra.sweep.dir), token)
        log.info("sweep tables: %s", Path(config.hydra.sweep.dir) / "table.md")


class _Progress:
    """In the sweep's parent: every few seconds, count this invocation's finished jobs on disk and
    print `noisybench: k/N done (f failed), elapsed ..., ETA ...` when the count changes. Works for
    every launcher, as the jobs' outcome files are all it reads."""

    def __init__(self, sweep_dir: Path, token: str, planned: int | None, every: float) -> None:
        import threading

        self.sweep_dir, self.token, self.planned, self.every = sweep_dir, token, planned, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="noisybench-progress", daemon=True)
        self._t0 = time.monotonic()
        self._shown = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.report()
            except Exception as e:  # progress is a courtesy: never let it break a sweep
                log.debug("progress: %s", e)

    def report(self) -> None:
        o = sweep_outcome(self.sweep_dir, self.token)
        done = o["finished"] + o["skipped"] + len(o["failed"])
        if done == self._shown:
            return
        self._shown = done
        elapsed = time.monotonic() - self._t0
        text = f"noisybench: {done}/{self.planned or '?'} done"
        if o["failed"]:
            text += f" ({len(o['failed'])} failed)"
        text += f", elapsed {_duration(elapsed)}"
        ran = o["finished"] + len(o["failed"])  # skipped jobs take no time: not in the rate
        if self.planned and ran and done < self.planned:
            text += f", ETA {_duration(elapsed / ran * (self.planned - done))}"
        print(text, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
