"""run(cfg) -> result record: build data, noise, model and method; train; evaluate; write.

Files in the run directory: metrics.csv (one row per epoch, rewritten atomically each epoch),
noise.json (realised rate and transition matrix), checkpoint.pt (every trainer.checkpoint_every
epochs and on SIGINT/SIGTERM), and result.json, written last and atomically: a directory without
result.json is a run that did not finish. The directory's life (identity, outcomes, resume) is in
noisybench.rundir.
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
from noisybench import loggers
from noisybench.config import build, check_trainer, resolve_device, weight_epochs
from noisybench.errors import ConfigError, NoisybenchError, one_line
from noisybench.fastpath import resolve as resolve_fast_path
from noisybench.fastpath import to_device
from noisybench.methods.base import Batch
from noisybench.noise import transition_matrix
from noisybench.noise.cache import cached, noise_key
from noisybench.rundir import Interrupted, RunDir
from noisybench.stopping import StopOnSignal
from noisybench.tasks import make_task
from noisybench.tasks.classification import predict  # noqa: F401  (re-exported: it used to live here)
from noisybench.threads import torch_threads
from noisybench.utils import (atomic_write_bytes, atomic_write_json, atomic_write_text, git_revision,
                              resolve_data_dir, versions)

log = logging.getLogger(__name__)


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
                        cfg.dataset.get("subset"), featurizer)
    return ds, noise_report


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{epochs}", f"loss={row['train_loss']:.4f}"]
    for key in ("val", "test", "memorized_noisy_frac"):
        if key in row:
            parts.append(f"{key}={_fmt(row[key])}")
    return " ".join(parts)


def _run_log(out_dir: Path) -> logging.Logger:
    """train.log in the run directory: one line per epoch and the result, so a long job's progress can
    be followed (tail -f) wherever it runs; appended to across resumed attempts."""
    logger = logging.getLogger(f"noisybench.run.{out_dir}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    _close_log(logger)
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    return logger


def _close_log(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        h.close()
        logger.removeHandler(h)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def run(cfg: DictConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train one run in `out_dir`, or resume it from its checkpoint, or (already finished) return its
    record with `skipped: True`. Owns the directory's life (noisybench.rundir): a NoisybenchError or
    a crash leaves failed.json and nothing else; a signal leaves a checkpoint and nothing else."""
    rd = RunDir(out_dir, cfg)
    rd.claim()  # refuses a directory that holds another configuration (nothing written into it)
    done = rd.finished()
    if done is not None:
        if not cfg.trainer.get("keep_checkpoint"):
            rd.remove_checkpoint()  # a stray one: the run crashed between result.json and its removal
        rd.write_attempt("skipped")
        return {**done, "skipped": True}
    retry = rd.clear_failure()
    try:
        return _train(cfg, rd, progress, retry)
    except Interrupted:
        logging.getLogger(f"noisybench.run.{out_dir}").info("interrupted (checkpoint saved)")
        raise
    except NoisybenchError as e:
        rd.fail(one_line(e), type(e).__name__)
        raise
    except Exception as e:  # a crash (a bug, out of memory): still never a result a table counts
        rd.fail(f"{type(e).__name__}: {one_line(e)[:500]}", type(e).__name__)
        raise
    finally:
        _close_log(logging.getLogger(f"noisybench.run.{out_dir}"))


def _rng_state(device: torch.device, shuffle: torch.Generator, aug_gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "shuffle": shuffle.get_state(), "augment": aug_gen.get_state()}


def _set_rng_state(state: dict, device: torch.device, shuffle: torch.Generator, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    shuffle.set_state(state["shuffle"])
    aug_gen.set_state(state["augment"])


def _train(cfg: DictConfig, rd: RunDir, progress: bool, retry: bool) -> dict:
    out_dir = rd.path
    check_trainer(cfg.trainer)
    device = resolve_device(str(cfg.trainer.device))
    epochs, bs, eval_bs = int(cfg.trainer.epochs), int(cfg.trainer.batch_size), int(cfg.trainer.eval_batch_size)
    ckpt_every = int(cfg.trainer.get("checkpoint_every", 1))
    max_loss = cfg.trainer.get("max_train_loss", DEFAULT_MAX_TRAIN_LOSS)
    divergence = None
    seed = int(cfg.seed)
    revision = git_revision()  # the code this attempt runs (the tree may change while it trains)
    ckpt = rd.load_checkpoint("cpu")
    rd.write_attempt("resumed" if ckpt else ("retried" if retry else "new"),
                     **({"from_epoch": ckpt["epoch"], "from_batch": ckpt["batch"]} if ckpt else {}))
    if ckpt is None:
        (out_dir / "metrics.csv").unlink(missing_ok=True)  # an earlier attempt's rows
        (out_dir / WEIGHTS).unlink(missing_ok=True)
    task = make_task(cfg.dataset)  # the problem's shape: data, model arguments, losses, evaluation
    metric_name = task.metric

    ds, noise_report = task.build_data(cfg)
    atomic_write_json(out_dir / "noise.json", noise_report)
    ds = ds.to(device)

    threads = torch_threads(cfg.trainer.get("threads"))  # noisybench.threads: the policy, no flag needed
    if threads:
        torch.set_num_threads(threads)  # small models: extra intra-op threads only add overhead
    torch.manual_seed(seed)  # model init and dropout draw from torch's (now seeded) default RNG
    shuffle = torch.Generator().manual_seed(seed)
    model = task.build_model(cfg.model, ds)
    # the dataset's transform: normalisation inside the model (every caller of the model gets
    # normalised floats from the compact stored tensors), augmentation of training batches only
    transform = build(cfg.dataset.transform) if cfg.dataset.get("transform") is not None else None
    if transform is not None:
        model = torch.nn.Sequential(transform.normalizer(), model)
    augment = transform.augment if transform is not None and transform.augments else None
    aug_gen = torch.Generator(device=device).manual_seed(seed)
    model = model.to(device)
    fast = resolve_fast_path(cfg.trainer, device, ds.x_train, model)  # noisybench.fastpath
    model = fast.prepare(model)  # channels_last / compiled, in place (the state_dict keys do not change)
    method = build(cfg.method)(num_classes=task.num_classes(ds)).to(device)
    method.task = task
    try:
        optimizer = build(cfg.optim.optimizer)(model.parameters())
    except ValueError as e:
        raise ConfigError(f"optim.optimizer: {e}") from None
    sched_cfg = cfg.optim.get("scheduler")
    scheduler, step_schedule = None, False
    if sched_cfg is not None and sched_cfg.get("_target_"):
        make_scheduler = build(sched_cfg)
        import inspect

        takes = inspect.signature(make_scheduler).parameters
        steps = epochs * -(-len(ds.y_train) // bs)  # the run's optimizer steps, for per-step schedules
        scheduler = make_scheduler(optimizer, **({"total_steps": steps} if "total_steps" in takes else {}))
        step_schedule = getattr(scheduler, "interval", "epoch") == "step"  # else stepped once per epoch

    method.on_train_start(ds.x_train, ds.y_train, seed)
    if method.needs_clean_validation:  # opt-in baselines only; recorded as uses_clean_labels
        method.on_clean_validation(ds.x_val, ds.y_val_clean)
    corrupted = ds.y_train != ds.y_train_clean  # for method diagnostics only (epoch_metrics)
    save_weights_at = weight_epochs(cfg.trainer)
    n = len(ds.y_train)
    # where training stands: (epoch, first batch offset, that epoch's permutation, its loss sum so far)
    start_epoch, start_pos, perm, total = 0, 0, None, None
    rows: list[dict] = []
    resumed: list[dict] = []
    revisions = [revision]  # the git revision of every attempt of this run
    spent = 0.0  # training seconds of earlier attempts
    stats = {"writes": 0, "seconds": 0.0, "bytes": 0}  # checkpoint cost, over all attempts
    if ckpt is not None:  # everything the next step depends on, as the interrupted run left it
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        method.load_state_dict(ckpt["method"])
        _set_rng_state(ckpt["rng"], device, shuffle, aug_gen)
        start_epoch, start_pos, rows, spent = ckpt["epoch"], ckpt["batch"], ckpt["rows"], ckpt["train_time"]
        if ckpt["perm"] is not None:
            perm, total = to_device(ckpt["perm"], device), ckpt["total"].to(device)
        resumed = [*ckpt["resumed_from"], {"epochs_done": start_epoch, "batches_done": -(-start_pos // bs)}]
        revisions = [*ckpt.get("revisions", [None]), revision]
        stats.update(ckpt["checkpoint_stats"])
        log.info("resuming %s after %d of %d epochs%s", out_dir, start_epoch, epochs,
                 f" and {-(-start_pos // bs)} batches" if start_pos else "")
    # per-sample weights at those epochs, {0-based epoch: float16 array}; on resume, the earlier attempts'
    weights_saved = {e: w for e, w in _load_weights(out_dir).items() if e < start_epoch} if ckpt is not None else {}
    # (a checkpoint at the very end, kept by keep_checkpoint, resumes straight to the record)
    method_metrics: dict = method.epoch_metrics(corrupted) if start_epoch >= epochs else {}
    t_start = time.perf_counter()

    def save(epoch: int, pos: int, perm_now, total_now) -> None:
        t = time.perf_counter()
        stats["bytes"] = rd.save_checkpoint({
            "epoch": epoch, "batch": pos, "perm": perm_now, "total": total_now, "rows": rows,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "method": method.state_dict(), "rng": _rng_state(device, shuffle, aug_gen),
            "train_time": spent + time.perf_counter() - t_start, "resumed_from": resumed, "revisions": revisions,
            "checkpoint_stats": {**stats, "writes": stats["writes"] + 1}})
        stats["writes"] += 1
        stats["seconds"] += time.perf_counter() - t

    def stop(signum: int, epoch: int, pos: int) -> Interrupted:
        where = (f"the end of epoch {epoch} of {epochs}" if pos == 0 else
                 f"epoch {epoch + 1} of {epochs}, batch {-(-pos // bs)} of {-(-n // bs)}")
        return Interrupted(signum, where, out_dir)

    epoch_log = _run_log(out_dir)
    epoch_log.info("%s %s after %d of %d epochs", "resumed" if ckpt else "started", out_dir, start_epoch, epochs)
    bar = tqdm(range(start_epoch, epochs), desc=f"{cfg.method.name} {cfg.dataset.name}", disable=not progress,
               leave=False, initial=start_epoch, total=epochs)
    # trackers (logger=...): given the epochs a checkpoint holds, then each epoch; closed as interrupted or
    # failed when an exception leaves the loop, finished with the record
    with loggers.opened(cfg, rd, rows) as trackers, StopOnSignal() as signalled:
        for epoch in bar:
            if perm is None:  # a new epoch (not the rest of an interrupted one)
                method.on_epoch_start(epoch, epochs)
                perm = to_device(torch.randperm(n, generator=shuffle), device)
                total, start_pos = torch.zeros((), device=device), 0
            model.train()
            for i in range(start_pos, n, bs):
                idx = perm[i:i + bs]
                x = ds.x_train[idx] if augment is None else augment(ds.x_train[idx], aug_gen)
                with fast.autocast():  # one context per step: its bf16 weight copies die with the step
                    loss = method.train_step(model, optimizer, Batch(x, ds.y_train[idx], idx))
                total += loss * len(idx)
                if step_schedule:
                    scheduler.step()
                if signalled.signum is not None:  # a safe point: the step is complete
                    save(epoch, i + bs, perm, total)
                    signalled.after_checkpoint()
                    raise stop(signalled.signum, epoch, i + bs)
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None and not step_schedule:
                scheduler.step()
            train_loss = float(total) / n  # host sync, once per epoch
            perm = total = None
            divergence = diverged(train_loss, max_loss, epoch)
            try:
                method_metrics = method.epoch_metrics(corrupted)
            except Exception:
                if divergence is None:
                    raise
                method_metrics = {}  # diagnostics of non-finite weights: not worth a crash
            row = {"epoch": epoch, "train_loss": train_loss, "lr": lr, **method.state(), **method_metrics}
            if epoch in save_weights_at:
                w = method.sample_weights()
                if w is not None:  # a method with per-sample weights (a reweighting method); evaluation only
                    weights_saved[epoch] = w.detach().float().cpu().numpy().astype(np.float16)
                    _save_weights(out_dir, weights_saved, task.sample_corrupted(corrupted))
            if (epoch + 1) % int(cfg.trainer.eval_every) == 0 or epoch == epochs - 1 or divergence:
                with fast.autocast():
                    row.update(task.evaluate(model, ds, eval_bs))
                bar.set_postfix(loss=f"{train_loss:.3f}", val=row["val"], test=row["test"])
            rows.append(row)
            atomic_write_text(out_dir / "metrics.csv", _csv(rows))
            trackers.log_epoch(row)
            epoch_log.info(_epoch_line(row, epochs))
            if divergence is not None:  # stop here: the record says so, the tables mark it
                epoch_log.info("diverged: %s", divergence["message"])
                break
            last = epoch == epochs - 1
            if (not last and ckpt_every and (epoch + 1) % ckpt_every == 0) or (last and cfg.trainer.get("keep_checkpoint")):
                save(epoch + 1, 0, None, None)
            if signalled.signum is not None and not last:
                if not (ckpt_every and (epoch + 1) % ckpt_every == 0):
                    save(epoch + 1, 0, None, None)
                signalled.after_checkpoint()
                raise stop(signalled.signum, epoch + 1, 0)
    train_time = spent + time.perf_counter() - t_start
    bar.close()

    try:  # a failure before the trackers have the result closes them as failed (not left running)
        record = make_record(cfg, rows, noise_report, ds, method, metric_name, device, train_time, method_metrics,
                             revision=revisions[-1])
        record.update(fast.record())  # the effective precision, channels_last and compile
        if len({r for r in revisions if r}) > 1:  # resumed under other code: every attempt's revision, oldest first
            record["git_revisions"] = revisions
        record.update(diverged=divergence, identity=rd.hash, resumed_from=resumed,
                      checkpoint={"every": ckpt_every, **stats, "seconds": round(stats["seconds"], 4)})
        atomic_write_json(out_dir / "result.json", record)  # the run is finished from here on
    except BaseException:
        trackers.close("failed")
        raise
    trackers.finish(record)
    epoch_log.info("finished: test_last=%.4f test_selected=%s val_selected=%s train_time=%.1fs", record["test_last"],
                   _fmt(record["test_selected"]), _fmt(record["val_selected"]), record["train_time_s"])
    _close_log(epoch_log)
    if not cfg.trainer.get("keep_checkpoint"):
        rd.remove_checkpoint()
    return record


WEIGHTS = "sample_weights.npz"


def _save_weights(out_dir: Path, saved: dict[int, np.ndarray], corrupted: torch.Tensor) -> None:
    """sample_weights.npz: `epoch` [E] (0-based, as in metrics.csv), `weights` [E, N] float16 (NaN: a
    sample not weighted that epoch) and `corrupted` [N] bool (noisy label != clean label)."""
    epochs = sorted(saved)
    buf = io.BytesIO()
    np.savez_compressed(buf, epoch=np.array(epochs, dtype=np.int32), weights=np.stack([saved[e] for e in epochs]),
                        corrupted=corrupted.reshape(-1).cpu().numpy().astype(bool))
    atomic_write_bytes(out_dir / WEIGHTS, buf.getvalue())


def _load_weights(out_dir: Path) -> dict[int, np.ndarray]:
    """The weights an earlier attempt of this run saved (resume), by 0-based epoch."""
    try:
        with np.load(out_dir / WEIGHTS) as z:
            return {int(e): w for e, w in zip(z["epoch"], z["weights"])}
    except (OSError, KeyError, ValueError):
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
        "method": {"name": cfg.method.name, **method.hparams()},
        "uses_clean_labels": bool(method.needs_clean_validation),
        "method_metrics": dict(method_metrics or {}),  # the last epoch's epoch_metrics (e.g. weight_auc)
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
        "num_train": int(len(ds.y_train)), "num_val": int(len(ds.y_val)), "num_test": int(len(ds.y_test)),
        "num_classes": int(ds.num_classes),
        "train_time_s": round(train_time, 3),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "git_revision": revision if revision is not None else git_revision(),  # at the start of the run
        "dataset_info": ds.info,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
