"""Finding run directories and loading their records: one row per finished run, each run identity
counted once, and the runs left out of the tables (failed, unfinished, duplicate, unreadable)."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from noisybench.errors import one_line
from noisybench.report.layout import CONFIG_COL, METRIC_RANGES, config_value, flat_config, method_labels, varied_keys
from noisybench.report.shapes import check_record, scalars
from noisybench.rundir import (
    ADDED_AT_DEFAULT,
    CHECKPOINT,
    FAILED,
    IDENTITY,
    RESULT,
    identity_config,
    identity_hash,
    read_json_object,
)


def find_records(paths: Iterable[Path | str]) -> list[Path]:
    """The result.json files of finished runs under `paths` (run dirs, sweep dirs or result.json files)."""
    return [d / RESULT for d, state in find_runs(paths) if state == "finished"]


RUN_FILES = (RESULT, FAILED, CHECKPOINT, IDENTITY)


def find_runs(paths: Iterable[Path | str]) -> list[tuple[Path, str]]:
    """Every run directory under `paths` with its state: finished (result.json), failed
    (failed.json) or unfinished (started: identity.json or a checkpoint, but no outcome yet); and what
    the search met but did not enter: symlinked (a symbolic link to a directory, or a run file that is
    one: never followed, as it may lead out of the sweep) and unreadable (a directory that cannot be
    listed). A PATH given is followed even if it is a link: the user named it."""
    return [(d, state) for d, state, _ in scan(paths)]


def scan(paths: Iterable[Path | str]) -> list[tuple[Path, str, str]]:
    """`find_runs` with a note per entry: the target of a link, why a directory cannot be listed."""
    found: dict[Path, tuple[str, str]] = {}
    for p in map(Path, paths):
        if p.is_file():
            found.setdefault(p.parent, (_state(p.parent), ""))
        elif p.is_dir():
            def unlisted(e: OSError) -> None:
                found[Path(e.filename)] = ("unreadable", f"cannot be listed: {e.strerror or e}")

            for root, dirs, files in os.walk(p, onerror=unlisted):  # links to directories: listed, not entered
                root_path = Path(root)
                for name in dirs + files:
                    q = root_path / name
                    if q.is_symlink() and (name in dirs or name in RUN_FILES):
                        found[q if name in dirs else root_path] = ("symlinked", _target(q))
                    elif name in RUN_FILES:
                        found.setdefault(root_path, (_state(root_path), ""))
    reached = {os.path.realpath(d) for d, (state, _) in found.items() if state != "symlinked"}
    return [(d, *found[d]) for d in sorted(found)  # a link to a run also given as a PATH: nothing left out
            if not (found[d][0] == "symlinked" and d.is_symlink() and os.path.realpath(d) in reached)]


def _state(d: Path) -> str:
    return ("finished" if os.path.lexists(d / RESULT) else "failed" if os.path.lexists(d / FAILED)
            else "unfinished")


def _target(link: Path) -> str:
    try:
        return f"{link.name} -> {os.readlink(link)}" if link.name in RUN_FILES else os.readlink(link)
    except OSError as e:
        return f"unreadable link: {e.strerror or e}"


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
    "duplicate": [...], "unreadable": [...], "symlinked": [...], "bad_scores": [...]}: run dirs that are
    NOT in the table (a result.json that cannot be read or has another shape is unreadable, with the
    reason), and those with a score that is not finite or outside its metric's range, which is left out
    of its cells)."""
    rows = []
    left_out: dict[str, list[str]] = {"failed": [], "unfinished": [], "duplicate": [], "unreadable": [],
                                      "symlinked": [], "bad_scores": []}
    seen: dict[str, str] = {}
    for run_dir, state, note in scan(paths):
        if state == "symlinked":
            left_out[state].append(f"{run_dir} -> {note}" if run_dir.is_symlink() else f"{run_dir} ({note})")
            continue
        if state != "finished":
            left_out[state].append(f"{run_dir} ({note})" if note else str(run_dir))
            continue
        r, why = read_json_object(run_dir / RESULT)
        try:
            if r is None:
                raise ValueError(f"{RESULT} {why or 'is gone'}")
            check_record(r)
            row = _row(r, run_dir)
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
            why = f"no key {e}" if isinstance(e, KeyError) else one_line(e)[:160]
            left_out["unreadable"].append(f"{run_dir} ({why})")
            continue
        bad = _bad_scores(row)
        if bad:  # named under the tables, never in a mean: the score is blanked, the run's others stay
            left_out["bad_scores"].append(f"{run_dir} ({', '.join(f'{k}={row[k]!r}' for k in bad)})")
            row.update(dict.fromkeys(bad))
        ident = row["identity"]
        if ident in seen:  # the same configuration and seed twice: count it once
            left_out["duplicate"].append(f"{run_dir} (= {seen[ident]})")
            continue
        seen[ident] = str(run_dir)
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df["method_label"] = method_labels(df)
        df = df.sort_values(["dataset", "model", "method_label", "noise_type", "noise_rate", "seed"],
                            kind="stable").reset_index(drop=True)
        for key in varied_keys(df):  # summary.csv: one column per key that varies across the runs
            df[key] = [config_value(c.get(key)) for c in df[CONFIG_COL].map(json.loads)]
    return df, left_out


def _row(r: dict, run_dir: Path) -> dict:
    """One run's row of summary.csv from its result.json (of the shape `check_record` accepts)."""
    method = dict(r["method"])
    return {
        "run_dir": str(run_dir), "identity": _identity_of(r, run_dir), "dataset": r["dataset"], "model": r["model"],
        "method": method.pop("name"), "method_hparams": json.dumps(method, sort_keys=True),
        "noise": _noise_label(r["noise"]), "noise_type": r["noise"].get("type"),
        "noise_rate": r["noise"].get("rate"), "realized_noise_rate": r["realized_noise_rate"],
        "seed": r["seed"], "noise_seed": r["noise_seed"], "epochs": r["epochs"], "metric": r["metric"],
        "val_last": r.get("val_last"), "val_selected": r.get("val_selected"),
        "test_last": r["test_last"], "test_selected": r["test_selected"],
        "selected_epoch": r["selected_epoch"], "test_best": r["test_best"], "best_epoch": r.get("best_epoch"),
        "memorized_noisy_frac": r.get("memorized_noisy_frac"), "train_time_s": r.get("train_time_s"),
        # the detection score (None: no corrupted sample, a task without it, or an older record)
        **{k: r.get(k) for k in DETECTION},
        "device": r.get("device"), "uses_clean_labels": r.get("uses_clean_labels", False),
        # method diagnostics of the last epoch (e.g. STORM's weight_auc), and extras (e.g. forward's T_mae)
        **{f"method_{k}": v for k, v in scalars(r.get("method_metrics")).items()},
        **{f"method_{k}": v for k, v in scalars(r.get("method_result")).items()},
        "diverged": bool(r.get("diverged")),
        CONFIG_COL: json.dumps(_report_config(r["config"]) if isinstance(r.get("config"), dict)
                               else {}, sort_keys=True, default=str),
    }


def _report_config(cfg: dict) -> dict:
    """The run's identity config, flattened, with the keys added at their default (`ADDED_AT_DEFAULT`) put
    back where the run's config has them: a run of method.sharpness=1 made after the key existed says so,
    and `--tune method.sharpness` can choose it (`layout.varied_keys` takes such a key at its default as
    absent, so runs from before the key and after it still share their cells)."""
    flat = flat_config(identity_config(cfg))
    full = flat_config({k: v for k, v in cfg.items() if k != "hydra"})
    for key in ADDED_AT_DEFAULT:
        if key in full and key not in flat:
            flat[key] = full[key]
    return flat


SCORES = ("test_last", "test_selected", "test_best", "val_last", "val_selected")


# result.json's detection scores, fractions in [0, 1] whatever the metric; None (e.g. at noise 0) is no bad value
DETECTION = ("detect_auc", "detect_noisy_in_lowk", "detect_auc_selected", "detect_noisy_in_lowk_selected")


def _bad_scores(row: dict) -> list[str]:
    """The scores of a run that no mean may hold: not finite, or outside the metric's range (detection
    scores: outside [0, 1]). None is no score, not a bad one."""
    lo, hi = METRIC_RANGES.get(row["metric"], (0.0, 1.0))
    ranges = [(k, lo, hi) for k in SCORES] + [(k, 0.0, 1.0) for k in DETECTION]
    return [k for k, a, b in ranges
            if row[k] is not None and not (isinstance(row[k], (int, float)) and not isinstance(row[k], bool)
                                           and math.isfinite(row[k]) and a <= row[k] <= b)]


def left_out_note(left_out: dict[str, list[str]], limit: int = 3) -> str:
    """One line under the tables: the runs that are not in them, and why; then the scores left out of
    their cells (not finite, or outside the metric's range). "Every run found is in the tables" only
    when nothing was left out."""
    what = {"failed": "failed (failed.json)", "unfinished": "unfinished (running, interrupted or crashed; "
            "no result.json)", "duplicate": "skipped as duplicates of a counted run (same config and seed)",
            "unreadable": "skipped (unreadable)", "symlinked": "symbolic link(s) not followed (they may lead "
            "out of the directories given; give the target as a PATH to include it)"}

    def listed(key: str, label: str) -> str | None:
        dirs = left_out.get(key) or []
        if not dirs:
            return None
        return f"{len(dirs)} {label}: " + ", ".join(dirs[:limit]) + (", ..." if len(dirs) > limit else "")

    parts = [p for p in (listed(k, label) for k, label in what.items()) if p]
    bad = listed("bad_scores", "run(s) with a score that is not finite or outside its metric's range")
    out = ("Not in the tables: " + "; ".join(parts) + ".") if parts else ""
    if bad:
        out += (" " if out else "") + f"Left out of their cells (never in a mean): {bad}."
    return out or "Every run found is in the tables."
