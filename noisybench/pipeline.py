"""The classification data pipeline: dataset pool -> noisy labels (cached) -> tensors.

Tasks call `build_data` (noisybench.tasks.classification); `noisybench noise` calls `build_noise`
alone. Nothing here trains.
"""
from __future__ import annotations

import numpy as np
from omegaconf import DictConfig, OmegaConf

from noisybench import data as nbdata
from noisybench.config import build
from noisybench.noise import transition_matrix
from noisybench.noise.cache import cached, noise_key
from noisybench.utils import resolve_data_dir


def build_noise(cfg: DictConfig) -> tuple[nbdata.Pool, np.ndarray, dict, tuple[np.ndarray, np.ndarray]]:
    """The training pool, its noisy labels (from the cache when this exact noise was made before),
    the noise report (realised rate and transition matrix) and the (train, val) pool indices."""
    data_dir = resolve_data_dir(cfg.data_dir)
    pool = build(cfg.dataset.loader)(data_dir=str(data_dir))
    train_idx, val_idx = nbdata.split_indices(pool, float(cfg.dataset.val_fraction), int(cfg.dataset.split_seed))
    injector = build(cfg.noise)
    key, payload = noise_key(str(cfg.dataset.name), OmegaConf.to_container(cfg.dataset.loader, resolve=True),
                             str(cfg.noise.name), injector.spec(), pool.y_train, pool.num_classes)
    cache_dir = data_dir / "noise-cache" / str(cfg.dataset.name) if cfg.get("noise_cache", True) else None
    noisy, hit = cached(cache_dir, key, payload, len(pool.y_train),
                        lambda: injector(pool.y_train, pool.num_classes, features=pool.x_train), pool.num_classes)
    applied = np.arange(len(noisy))
    if not injector.apply_to_val:  # papers that select on a clean validation split
        noisy[val_idx] = pool.y_train[val_idx]
        applied = train_idx
    counts, T = transition_matrix(pool.y_train[applied], noisy[applied], pool.num_classes)
    expected = getattr(injector, "expected_rate", None)
    noise_report = {
        "type": cfg.noise.name, **injector.spec(),
        "realized_noise_rate": float(np.mean(noisy[applied] != pool.y_train[applied])),
        **({"expected_noise_rate": round(expected(pool.num_classes), 6)} if expected else {}),
        "applied_to": "train+val" if injector.apply_to_val else "train (validation labels clean)",
        "num_samples": int(len(applied)),
        "cache_key": key, "from_cache": hit,
        "class_names": pool.class_names,
        "transition_matrix": T.round(6).tolist(),
        "transition_counts": counts.tolist(),
    }
    return pool, noisy, noise_report, (train_idx, val_idx)


def build_data(cfg: DictConfig) -> tuple[nbdata.Dataset, dict]:
    """Dataset tensors (CPU) with noisy training/validation labels, and the noise report."""
    pool, noisy, noise_report, (train_idx, val_idx) = build_noise(cfg)
    featurizer = build(cfg.dataset.features) if cfg.dataset.get("features") is not None else None
    ds = nbdata.prepare(pool, noisy, train_idx, val_idx, int(cfg.dataset.split_seed),
                        cfg.dataset.get("subset"), featurizer, cfg.dataset.get("subset_at_most"))
    return ds, noise_report
