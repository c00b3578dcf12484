"""run(cfg) -> result record: build data, noise, model and method; train; evaluate; write.

Files in the run directory: metrics.csv (one row per epoch, rewritten atomically each epoch),
noise.json (realised rate and transition matrix), and result.json, written last and atomically:
a directory without result.json is a run that did not finish.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from noisybench import data as nbdata
from noisybench.config import build, check_trainer, resolve_device
from noisybench.errors import ConfigError, NonFiniteLossError
from noisybench.methods.base import Batch
from noisybench.metrics import METRICS, memorization
from noisybench.noise import transition_matrix
from noisybench.noise.cache import cached, noise_key
from noisybench.utils import atomic_write_json, atomic_write_text, git_revision, resolve_data_dir, versions

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    if len(x) == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])


def build_noise(cfg: DictConfig) -> tuple[nbdata.Pool, np.ndarray, dict]:
    """The training pool, its noisy labels (from the cache when this exact noise was made before)
    and the noise report (realised rate and transition matrix)."""
    data_dir = resolve_data_dir(cfg.data_dir)
    pool = build(cfg.dataset.loader)(data_dir=str(data_dir))
    injector = build(cfg.noise)
    key, payload = noise_key(str(cfg.dataset.name), OmegaConf.to_container(cfg.dataset.loader, resolve=True),
                             str(cfg.noise.name), injector.spec(), pool.y_train, pool.num_classes)
    cache_dir = data_dir / "noise-cache" / str(cfg.dataset.name) if cfg.get("noise_cache", True) else None
    noisy, hit = cached(cache_dir, key, payload, len(pool.y_train),
                        lambda: injector(pool.y_train, pool.num_classes, features=pool.x_train))
    counts, T = transition_matrix(pool.y_train, noisy, pool.num_classes)
    expected = getattr(injector, "expected_rate", None)
    noise_report = {
        "type": cfg.noise.name, **injector.spec(),
        "realized_noise_rate": float(np.mean(noisy != pool.y_train)),
        **({"expected_noise_rate": round(expected(pool.num_classes), 6)} if expected else {}),
        "applied_to": "train+val pool",
        "num_samples": int(len(noisy)),
        "cache_key": key, "from_cache": hit,
        "class_names": pool.class_names,
        "transition_matrix": T.round(6).tolist(),
        "transition_counts": counts.tolist(),
    }
    return pool, noisy, noise_report


def build_data(cfg: DictConfig) -> tuple[nbdata.Dataset, dict]:
    """Dataset tensors (CPU) with noisy training/validation labels, and the noise report."""
    pool, noisy, noise_report = build_noise(cfg)
    ds = nbdata.prepare(pool, noisy, float(cfg.dataset.val_fraction), int(cfg.dataset.split_seed),
                        cfg.dataset.get("subset"))
    return ds, noise_report


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _num(t: torch.Tensor) -> float | None:
    v = float(t)
    return None if math.isnan(v) else v


def run(cfg: DictConfig, out_dir: Path, progress: bool = True) -> dict:
    out_dir = Path(out_dir)
    check_trainer(cfg.trainer)
    device = resolve_device(str(cfg.trainer.device))
    epochs, bs, eval_bs = int(cfg.trainer.epochs), int(cfg.trainer.batch_size), int(cfg.trainer.eval_batch_size)
    seed = int(cfg.seed)
    metric_name = str(cfg.dataset.get("metric", "acc"))
    if metric_name not in METRICS:
        raise ConfigError(f"dataset.metric={metric_name!r} is unknown; use one of {', '.join(METRICS)}")
    metric = METRICS[metric_name]

    ds, noise_report = build_data(cfg)
    atomic_write_json(out_dir / "noise.json", noise_report)
    ds = ds.to(device)
    K = ds.num_classes

    torch.manual_seed(seed)  # model init and dropout draw from torch's (now seeded) default RNG
    shuffle = torch.Generator().manual_seed(seed)
    model = build(cfg.model)(input_shape=ds.input_shape, num_classes=K)
    # the dataset's transform: normalisation inside the model (every caller of the model gets
    # normalised floats from the compact stored tensors), augmentation of training batches only
    transform = build(cfg.dataset.transform) if cfg.dataset.get("transform") is not None else None
    if transform is not None:
        model = torch.nn.Sequential(transform.normalizer(), model)
    augment = transform.augment if transform is not None and transform.augments else None
    aug_gen = torch.Generator(device=device).manual_seed(seed)
    model = model.to(device)
    method = build(cfg.method)(num_classes=K).to(device)
    try:
        optimizer = build(cfg.optim.optimizer)(model.parameters())
    except ValueError as e:
        raise ConfigError(f"optim.optimizer: {e}") from None
    sched_cfg = cfg.optim.get("scheduler")
    scheduler = build(sched_cfg)(optimizer) if sched_cfg is not None and sched_cfg.get("_target_") else None

    method.on_train_start(ds.x_train, ds.y_train, seed)
    n = len(ds.y_train)
    rows: list[dict] = []
    t_start = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"{cfg.method.name} {cfg.dataset.name}", disable=not progress, leave=False)
    for epoch in bar:
        method.on_epoch_start(epoch, epochs)
        model.train()
        perm = torch.randperm(n, generator=shuffle).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            x = ds.x_train[idx] if augment is None else augment(ds.x_train[idx], aug_gen)
            loss = method.train_step(model, optimizer, Batch(x, ds.y_train[idx], idx))
            total += loss * len(idx)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        train_loss = float(total) / n  # host sync, once per epoch
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(f"the training loss became {train_loss} in epoch {epoch}; "
                                     "lower the learning rate (optim.optimizer.lr) or check the inputs")
        row = {"epoch": epoch, "train_loss": train_loss, "lr": lr, **method.state()}
        if (epoch + 1) % int(cfg.trainer.eval_every) == 0 or epoch == epochs - 1:
            pred_train = predict(model, ds.x_train, eval_bs)
            mem_noisy, mem_clean = memorization(pred_train, ds.y_train, ds.y_train_clean)
            row.update({  # host syncs, once per evaluated epoch
                "val": _num(metric(predict(model, ds.x_val, eval_bs), ds.y_val)),
                "test": _num(metric(predict(model, ds.x_test, eval_bs), ds.y_test)),
                "train_noisy": _num(metric(pred_train, ds.y_train)),
                "memorized_noisy_frac": _num(mem_noisy),
                "memorized_clean_frac": _num(mem_clean),
            })
            bar.set_postfix(loss=f"{train_loss:.3f}", val=row["val"], test=row["test"])
        rows.append(row)
        atomic_write_text(out_dir / "metrics.csv", _csv(rows))
    train_time = time.perf_counter() - t_start
    bar.close()

    record = make_record(cfg, rows, noise_report, ds, method, metric_name, device, train_time)
    atomic_write_json(out_dir / "result.json", record)
    return record


def make_record(cfg, rows, noise_report, ds, method, metric_name, device, train_time) -> dict:
    evaluated = [r for r in rows if "test" in r]
    last = evaluated[-1]
    with_val = [r for r in evaluated if r["val"] is not None]
    # selection by the NOISY validation split; ties go to the earliest epoch
    selected = max(with_val, key=lambda r: (r["val"], -r["epoch"])) if with_val else None
    best = max(evaluated, key=lambda r: (r["test"], -r["epoch"]))
    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "method": {"name": cfg.method.name, **method.hparams()},
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
        "test_best": best["test"],
        "best_epoch": best["epoch"],
        "test_best_note": "oracle: best clean-test epoch, not a valid model-selection protocol",
        "memorized_noisy_frac": last["memorized_noisy_frac"],
        "memorized_clean_frac": last["memorized_clean_frac"],
        "num_train": int(len(ds.y_train)), "num_val": int(len(ds.y_val)), "num_test": int(len(ds.y_test)),
        "num_classes": int(ds.num_classes),
        "train_time_s": round(train_time, 3),
        "device": str(device),
        "versions": versions(),
        "git_revision": git_revision(),
        "dataset_info": ds.info,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
