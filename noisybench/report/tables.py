"""Paper-style tables: mean ± std (n) over seeds, as Markdown and CSV (LaTeX: `noisybench.report.latex`).

Rows are methods (with the hyperparameters that vary inside the table), columns are noise
settings, one table per (dataset, model, metric) and per accuracy kind: last epoch, selected by
the noisy validation split, and the oracle best test epoch (labelled as such); on request
(`-k detection,detection_selected,detection_lowk`) the detection score of the per-sample training loss
(docs/definitions.md), with a reweighting method's weight AUC in a row of its own.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from noisybench.report.layout import (
    CONFIG_COL,
    METRIC_TITLES,
    TUNE_SCORE,
    check_replicates,
    chosen_text,
    config_value,
    display_key,
    fmt_value,
    table_layout,
    tuned_choice,
)
from noisybench.report.marks import LOWER_IS_BETTER, MARKS_NOTE, Stats, cell_stats, mark_text, table_marks

KINDS = {
    "last": ("test_last", "last epoch"),
    "selected": ("test_selected", "selected by validation (noisy labels unless the column says clean val)"),
    "best": ("test_best", "ORACLE best test epoch (not a valid selection protocol)"),
    # the detection score (result.json; docs/definitions.md): not a test score, its own title
    "detection": ("detect_auc", "last epoch"),
    "detection_selected": ("detect_auc_selected", "at the epoch selected by validation (noisy labels)"),
    "detection_lowk": ("detect_noisy_in_lowk", "last epoch"),
}
# what a kind's tables show when it is not the dataset's test metric
KIND_TITLES = {
    "detection": "detection AUC (x100): P(clean sample's training CE < corrupted one's), clean labels score only",
    "detection_selected": "detection AUC (x100): P(clean sample's training CE < corrupted one's), "
                          "clean labels score only",
    "detection_lowk": "corrupted samples among the k lowest training CE, k = clean count (%; lower is better)",
}
# a method's own score shown beside a kind's, as an extra row "<method> [label]" (e.g. STORM's weight AUC)
KIND_EXTRA = {"detection": ("method_weight_auc", "weight AUC")}
DEFAULT_KINDS = ("last", "selected", "best")


def cell_text(st: Stats) -> str:
    """mean ± std (n); runs that diverged (result.json `diverged`) are counted and named in the cell."""
    mark = f", {st.diverged} diverged" if st.diverged else ""
    if not st.n:
        return "–"
    if st.n == 1:
        return f"{st.mean:.2f} (1{mark})"
    return f"{st.mean:.2f} ± {st.std:.2f} ({st.n}{mark})"


def tables(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = ()):
    """Yield (title, kind, table) per (dataset, model, metric) and accuracy kind. A cell holds the runs
    of ONE configuration (they differ only in seed / noise seed); every other key that varies is in
    the row label (or, for noise keys, the column label). With `tune`, those keys are chosen per cell:
    the value(s) with the best mean validation score over seeds (last: val_last; selected:
    val_selected; best: the oracle test score, labelled so)."""
    tune = list(tune)
    for (dataset, model, metric), group in df.groupby(["dataset", "model", "metric"]):
        rows, cols, row_order, col_order, names, fixed, varying = table_layout(group, tune)
        configs = [json.loads(c) for c in group[CONFIG_COL]]
        tuned = [t for t in tune if any(t in c for c in configs)]
        choice = [tuple(config_value(c.get(t)) for t in tuned) for c in configs]
        check_replicates(group, rows, cols, choice if tuned else None)
        seeds = sorted(group["seed"].unique().tolist())
        noise_seeds = sorted(group["noise_seed"].unique().tolist())
        over = f"seeds {seeds}" + (f" x noise seeds {noise_seeds}" if len(noise_seeds) > 1 and noise_seeds != seeds
                                  else "")
        facts = []
        if varying:
            facts.append("varied: " + "; ".join(f"{names[k]} in {{{', '.join(map(fmt_value, v))}}}"
                                                for k, v in varying.items()))
        if fixed:
            facts.append("fixed: " + ", ".join(f"{display_key(k)}={fmt_value(v)}" for k, v in fixed.items()))
        for kind in kinds:
            column, desc = KINDS[kind]
            tuned_note = ""
            if tuned:
                score = TUNE_SCORE[kind]
                how = ("ORACLE: chosen by mean test score" if kind == "best" else
                       f"chosen per cell by the best mean {score} over seeds")
                tuned_note = f"; tuned {', '.join(names[t] for t in tuned)} ({how}; [chosen value])"
            what = KIND_TITLES.get(kind, METRIC_TITLES.get(metric, metric))
            title = (f"{dataset} / {model}: {what}, {desc}; mean ± std (n) over {over}"
                     + "".join(f"; {f}" for f in facts) + tuned_note)
            frame = pd.DataFrame({"row": rows, "col": cols, "value": group[column].to_numpy(),
                                  "diverged": group["diverged"].to_numpy() if "diverged" in group else False,
                                  "choice": choice, "score": group[TUNE_SCORE[kind]].to_numpy() if tuned else 0.0})
            frame, order = _extra_rows(frame, group, kind, row_order)
            cells, stats = {}, {}
            for (r, c), cell in frame.groupby(["row", "col"], sort=False):
                if not tuned:
                    stats[(r, c)] = cell_stats(cell["value"], cell["diverged"])
                    cells[(r, c)] = cell_text(stats[(r, c)])
                    continue
                best = tuned_choice(cell)
                picked = cell[[ch == best for ch in cell["choice"]]]
                chosen = chosen_text(names, tuned, best)
                stats[(r, c)] = cell_stats(picked["value"], picked["diverged"], chosen)
                cells[(r, c)] = cell_text(stats[(r, c)]) + (f" [{chosen}]" if chosen else "")
            table = pd.DataFrame([[cells.get((r, c), "–") for c in col_order] for r in order],
                                 index=pd.Index(order, name="method_label"), columns=col_order)
            table.attrs["stats"] = stats  # per cell: mean, std, n (for the marks and the LaTeX cells)
            table.attrs["lower_is_better"] = kind in LOWER_IS_BETTER
            yield title, kind, table


def _extra_rows(frame: pd.DataFrame, group: pd.DataFrame, kind: str, row_order: list[str]):
    """KIND_EXTRA: each row with that score gets a row "<row> [label]" below it holding it (not ranked
    against the others: `noisybench.report.marks.UNRANKED`)."""
    column, label = KIND_EXTRA.get(kind, (None, None))
    if column not in group or group[column].isna().all():
        return frame, row_order
    has = group[column].notna().to_numpy()
    extra = frame[has].assign(row=frame["row"][has] + f" [{label}]", value=group[column].to_numpy()[has])
    rows = list(dict.fromkeys(extra["row"]))
    order = [x for r in row_order for x in [r] + [e for e in rows if e == f"{r} [{label}]"]]
    return pd.concat([frame, extra], ignore_index=True), order


def to_markdown(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = (),
                marks: bool = True) -> str:
    """The tables in Markdown; with `marks`, each column's best mean bold and the second underlined
    (`noisybench.report.marks`)."""
    out = []
    for title, _, t in tables(df, kinds, tune):
        ranks = table_marks(t) if marks else {}
        header = "| method | " + " | ".join(t.columns) + " |"
        sep = "|---|" + "---|" * len(t.columns)
        body = ["| " + " | ".join([idx, *(mark_text(str(v), ranks.get((idx, c)), "**{}**", "<u>{}</u>")
                                         for c, v in zip(t.columns, row))]) + " |"
                for idx, row in zip(t.index, t.values)]
        out.append(f"### {title}\n\n" + "\n".join([header, sep, *body]) + "\n")
    if marks and out:
        out.append(MARKS_NOTE + "\n")
    return "\n".join(out)


def to_csv(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = (),
           marks: bool = True) -> str:
    """The tables as one CSV, cells as text and never marked (`marks` is accepted and ignored)."""
    frames = []
    for title, kind, t in tables(df, kinds, tune):
        t = t.copy()
        t.insert(0, "table", title)
        t.insert(1, "kind", kind)
        frames.append(t.reset_index().rename(columns={"method_label": "method"}))
    return pd.concat(frames).to_csv(index=False) if frames else ""

