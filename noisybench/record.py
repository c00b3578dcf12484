"""A run's result record (result.json), its divergence test, and the sample-weights file.

result.json is written last and atomically (docs/runs.md): `make_record` gathers what it holds from
the epochs' rows, the noise report, the dataset and the method.
"""
from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from noisybench.methods.base import config_hparams
from noisybench.threads import blas_threads
from noisybench.utils import atomic_write_bytes, git_revision, versions

WEIGHTS = "sample_weights.npz"


def save_weights(out_dir: Path, saved: dict[int, np.ndarray], corrupted: torch.Tensor,
                 classes: torch.Tensor | None = None) -> None:
    """sample_weights.npz: `epoch` [E] (0-based, as in metrics.csv), `weights` [E, N] float16 (NaN: a
    sample not weighted that epoch), `corrupted` [N] bool (noisy label != clean label) and, when given,
    `classes` [N] int (each sample's noisy label; DST: its gate label; the per-class weight panel)."""
    epochs = sorted(saved)
    buf = io.BytesIO()
    extra = {} if classes is None else {"classes": classes.reshape(-1).cpu().numpy().astype(np.int32)}
    np.savez_compressed(buf, epoch=np.array(epochs, dtype=np.int32), weights=np.stack([saved[e] for e in epochs]),
                        corrupted=corrupted.reshape(-1).cpu().numpy().astype(bool), **extra)
    atomic_write_bytes(out_dir / WEIGHTS, buf.getvalue())


def load_weights(out_dir: Path) -> dict[int, np.ndarray]:
    """The weights an earlier attempt of this run saved (resume), by 0-based epoch."""
    try:
        with np.load(out_dir / WEIGHTS) as z:
            return {int(e): w for e, w in zip(z["epoch"], z["weights"])}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # absent or torn: none kept
        return {}


DEFAULT_MAX_TRAIN_LOSS = 1e4  # trainer.max_train_loss when a config does not set it


def diverged(train_loss: float, max_loss: float | None, epoch: int) -> dict | None:
    """None, or why the run diverged: its mean training loss of an epoch is not finite or exceeds
    `trainer.max_train_loss` (default 1e4: a cross-entropy of ln K is about 2.3 for 10 classes, and
    GCE/DAL losses are bounded by about 1/q; a loss of 1e4 means logits far beyond anything learnt).
    The run stops there; result.json records it in `diverged`; tables mark the cell; exit code 1."""
    if math.isfinite(train_loss) and (max_loss is None or train_loss <= float(max_loss)):
        return None
    why = ("is not finite" if not math.isfinite(train_loss) else f"exceeds trainer.max_train_loss={max_loss:g}")
    return {"epoch": epoch, "train_loss": train_loss, "max_train_loss": max_loss,
            "message": f"the run diverged: its training loss {train_loss:.4g} in epoch {epoch + 1} {why}; it stopped "
                       "there and result.json marks it diverged; lower the learning rate (optim.optimizer.lr)"}


DETECTION_NOTE = ("plain cross-entropy of the model's logits against the noisy training labels after the epoch "
                  "(every method alike; lower = clean), scored against the clean labels (evaluation only): auc = "
                  "P(clean loss < corrupted loss); noisy_in_lowk = share of corrupted samples among the k lowest "
                  "losses, k = number of clean samples. null: no corrupted (or no clean) training sample")


def detection_history(evaluated: list[dict]) -> dict | None:
    """result.json's `detection`: the score at every evaluated epoch; None for a task without it (DST)."""
    if not any("detect_auc" in r for r in evaluated):
        return None
    return {"epoch": [r["epoch"] for r in evaluated], "auc": [r.get("detect_auc") for r in evaluated],
            "noisy_in_lowk": [r.get("detect_noisy_in_lowk") for r in evaluated], "score": DETECTION_NOTE}


def make_record(cfg, rows, noise_report, ds, method, metric_name, device, train_time,
                method_metrics: dict | None = None, revision: str | None = None) -> dict:
    evaluated = [r for r in rows if "test" in r]
    last = evaluated[-1]
    with_val = [r for r in evaluated if r["val"] is not None]
    # selection by the NOISY validation split; ties go to the earliest epoch
    selected = max(with_val, key=lambda r: (r["val"], -r["epoch"])) if with_val else None
    best = max(evaluated, key=lambda r: (r["test"], -r["epoch"]))
    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        # the method's config keys (its constructor arguments) and what the method adds (hparams())
        "method": {"name": cfg.method.name, **config_hparams(OmegaConf.to_container(cfg.method, resolve=True)),
                   **method.hparams()},
        "uses_clean_labels": method.uses_clean_labels,
        "uses_noise_rate": method.uses_noise_rate,  # the config's nominal noise.rate (side information)
        "method_metrics": dict(method_metrics or {}),  # the last epoch's epoch_metrics (e.g. weight_auc)
        "method_result": method.result_extras(noise_report),  # e.g. forward correction's estimated T
        "noise": {k: noise_report[k] for k in noise_report
                  if k not in ("transition_matrix", "transition_counts", "realized_noise_rate", "class_names",
                               "from_cache")},
        "realized_noise_rate": noise_report["realized_noise_rate"],
        "seed": int(cfg.seed),
        "noise_seed": int(cfg.noise.seed),
        "epochs": int(cfg.trainer.epochs),
        "metric": metric_name,
        "test_last": last["test"],
        "val_last": last["val"],
        "test_selected": selected["test"] if selected else None,
        "val_selected": selected["val"] if selected else None,
        "selected_epoch": selected["epoch"] if selected else None,
        "selection": "best noisy-validation score (no clean labels used)",
        "test_other_metrics": {  # the dataset's extra metrics at the last and the selected epoch
            "last": {k[5:]: v for k, v in last.items() if k.startswith("test_")},
            "selected": {k[5:]: v for k, v in selected.items() if k.startswith("test_")} if selected else None,
        },
        "test_best": best["test"],
        "best_epoch": best["epoch"],
        "test_best_note": "oracle: best clean-test epoch, not a valid model-selection protocol",
        "memorized_noisy_frac": last["memorized_noisy_frac"],
        "memorized_clean_frac": last["memorized_clean_frac"],
        # the detection score (noisybench.metrics.detection): last, selected epoch, every evaluated epoch
        "detect_auc": last.get("detect_auc"),
        "detect_noisy_in_lowk": last.get("detect_noisy_in_lowk"),
        "detect_auc_selected": selected.get("detect_auc") if selected else None,
        "detect_noisy_in_lowk_selected": selected.get("detect_noisy_in_lowk") if selected else None,
        "detection": detection_history(evaluated),
        "num_train": int(len(ds.y_train)), "num_val": int(len(ds.y_val)), "num_test": int(len(ds.y_test)),
        "num_classes": int(ds.num_classes),
        "train_time_s": round(train_time, 3),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": blas_threads(),  # numpy's/scipy's BLAS pools (noisybench.threads)
        "versions": versions(),
        "git_revision": revision if revision is not None else git_revision(),  # at the start of the run
        "dataset_info": ds.info,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
