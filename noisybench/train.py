"""run(cfg, dir) -> result record: set up, resume, train epoch by epoch, finish.

A run is driven in phases over one `RunState`, which is also what its checkpoint holds:

    setup(cfg, rd)       data (noise.json); seeded model, method, optimizer -> (Run, RunState)
    resume(r, st, ckpt)  the checkpoint loaded into the state; this attempt added to its history
    run_epoch(r, st)     one epoch (or the rest of an interrupted one): its steps, its metrics row
    finish(r, st)        result.json, the trackers' result, the checkpoint removed

`Run` (r) is what the run is built from and does not change; `RunState` (st) is what training
changes.

Files in the run directory: metrics.csv (one row per epoch, rewritten atomically each epoch),
noise.json (realised rate and transition matrix), checkpoint.pt (every trainer.checkpoint_every
epochs and on SIGINT/SIGTERM), and result.json, written last and atomically: a directory without
result.json is a run that did not finish. The directory's life (identity, outcomes, resume) is in
noisybench.rundir and docs/runs.md.
"""
from __future__ import annotations

import csv
import errno
import inspect
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from noisybench import class_weights, loggers
from noisybench.checks import check_trainer
from noisybench.config import build, resolve_device, weight_epochs
from noisybench.data import Dataset
from noisybench.errors import ConfigError, NoisybenchError, one_line
from noisybench.fastpath import FastPath, to_device
from noisybench.fastpath import resolve as resolve_fast_path
from noisybench.locks import locked
from noisybench.methods.base import Batch, Builders
from noisybench.needs import explain
from noisybench.record import DEFAULT_MAX_TRAIN_LOSS, WEIGHTS, diverged, load_weights, make_record, save_weights
from noisybench.rundir import CHECKPOINT, Interrupted, RunDir, open_append
from noisybench.stopping import StopOnSignal
from noisybench.stopwatch import excluded, numba_compiles
from noisybench.tasks import Task, make_task
from noisybench.threads import thread_pools
from noisybench.utils import atomic_write_json, atomic_write_text, git_revision

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What a run is built from and does not change while it trains (none of it is checkpointed)."""

    cfg: DictConfig
    rd: RunDir
    device: torch.device
    task: Task  # the problem's shape: data, model arguments, losses, evaluation
    ds: Dataset
    noise_report: dict
    fast: FastPath  # precision, channels_last, compile (noisybench.fastpath)
    augment: Callable | None  # the dataset's batch augmentation (training batches only)
    step_schedule: bool  # the scheduler steps per optimizer step (else once per epoch)
    corrupted: torch.Tensor  # y_train != y_train_clean: for method diagnostics only (epoch_metrics)
    revision: str | None  # the code this attempt runs (the tree may change while it trains)
    epochs: int
    batch_size: int
    eval_batch_size: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoint: bool
    max_loss: float | None
    save_weights_at: set[int]  # 0-based epochs after which per-sample weights are saved

    @property
    def n(self) -> int:
        return len(self.ds.y_train)


@dataclass
class RunState:
    """Where a run stands and every object the next step depends on. `state_dict()` is the
    checkpoint (its keys are checkpoint.pt's format) and `load_state_dict` its inverse: resuming
    from it gives the numbers of never stopping (bit for bit on CPU)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # None without optim.scheduler
    method: torch.nn.Module  # a loss or step method (noisybench.methods.base)
    device: torch.device
    shuffle: torch.Generator  # the epochs' sample orders
    aug_gen: torch.Generator  # batch augmentation, on the device
    epoch: int = 0  # the epoch in progress, or the next to start
    batch: int = 0  # where in `perm` that epoch's next batch starts (0: not started)
    perm: torch.Tensor | None = None  # that epoch's sample order (None between epochs)
    total: torch.Tensor | None = None  # its loss sum so far, on the device (no host sync per step)
    rows: list[dict] = field(default_factory=list)  # metrics.csv, one row per epoch
    spent: float = 0.0  # training seconds of earlier attempts
    resumed_from: list[dict] = field(default_factory=list)  # where each earlier attempt stopped
    revisions: list = field(default_factory=list)  # the git revision of every attempt, oldest first
    threads: list = field(default_factory=list)  # torch's intra-op threads of every attempt, oldest first
    # checkpoint cost, over all attempts
    stats: dict = field(default_factory=lambda: {"writes": 0, "seconds": 0.0, "bytes": 0})
    # this attempt's own, not in the checkpoint:
    started: float = 0.0  # time.perf_counter() when this attempt started training
    weights: dict[int, np.ndarray] = field(default_factory=dict)  # sample weights by 0-based epoch
    divergence: dict | None = None  # why the run diverged (noisybench.record.diverged)
    method_metrics: dict = field(default_factory=dict)  # the last epoch's epoch_metrics
    # per-class weight statistics of every evaluated epoch (noisybench.class_weights), in the checkpoint
    class_weights: list[dict] = field(default_factory=list)

    def train_time(self) -> float:
        return self.spent + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch, "batch": self.batch, "perm": self.perm, "total": self.total,
            "rows": self.rows, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "method": self.method.state_dict(), "rng": self._rng_state(),
            "train_time": self.train_time(), "resumed_from": self.resumed_from,
            "revisions": self.revisions, "threads": self.threads, "class_weights": self.class_weights,
            # the cost so far, this write counted
            "checkpoint_stats": {**self.stats, "writes": self.stats["writes"] + 1}}

    def load_state_dict(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.method.load_state_dict(ckpt["method"])
        self._set_rng_state(ckpt["rng"])
        self.epoch, self.batch, self.rows = ckpt["epoch"], ckpt["batch"], ckpt["rows"]
        self.spent = ckpt["train_time"]
        if ckpt["perm"] is not None:
            self.perm = to_device(ckpt["perm"], self.device)
            self.total = ckpt["total"].to(self.device)
        self.resumed_from = list(ckpt["resumed_from"])
        self.revisions = list(ckpt.get("revisions", [None]))  # (older checkpoints have none)
        self.threads = list(ckpt.get("threads", []))  # (nor these)
        self.stats.update(ckpt["checkpoint_stats"])
        self.class_weights = list(ckpt.get("class_weights", []))  # (older checkpoints have none)

    def _rng_state(self) -> dict:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"torch": torch.get_rng_state(), "cuda": cuda,
                "shuffle": self.shuffle.get_state(), "augment": self.aug_gen.get_state()}

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
        self.shuffle.set_state(state["shuffle"])
        self.aug_gen.set_state(state["augment"])


def run(cfg: DictConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train one run in `out_dir`, or resume it from its checkpoint, or (already finished) return its
    record with `skipped: True`. Owns the directory's life (noisybench.rundir): a NoisybenchError or
    a crash leaves failed.json and nothing else; a signal leaves a checkpoint and nothing else. One
    process at a time: another process's run in `out_dir` is DirBusy (noisybench.locks), nothing written."""
    with locked(out_dir):
        return _run_locked(cfg, out_dir, progress)


def _run_locked(cfg: DictConfig, out_dir: Path, progress: bool) -> dict:
    rd = RunDir(out_dir, cfg)
    rd.unplant()  # a symlink where the run appends (train.log, trackers' folders) is set aside, not followed
    rd.claim()  # refuses a directory that holds another configuration (nothing written into it)
    rd.remove_leftovers()  # half-written files of a killed attempt (this process holds the lock)
    done = rd.finished()
    if done is not None:
        if not cfg.trainer.get("keep_checkpoint"):
            rd.remove_checkpoint()  # a stray one: the run crashed between result.json and its removal
        rd.write_attempt("skipped")
        return {**done, "skipped": True}
    rd.check_attempt()
    retry = rd.clear_failure()
    try:
        check_trainer(cfg.trainer)
        with thread_pools(cfg.trainer.get("threads")):  # noisybench.threads: the policy, no flag
            return _train(cfg, rd, progress, retry)
    except Interrupted:
        logging.getLogger(f"noisybench.run.{out_dir}").info("interrupted (checkpoint saved)")
        raise
    except NoisybenchError as e:
        rd.fail(one_line(e), type(e).__name__)
        raise
    except Exception as e:  # a crash (a bug, out of memory): still never a result a table counts
        if isinstance(e, OSError) and e.errno in DISK_FULL:  # nothing more can be written: keep what is there
            raise DiskFull(_disk_full_line(rd, e)) from None
        missing = explain(e, f"method={cfg.method.name}", only="numba")  # numba failing: one line, the pip command
        if missing is not None:
            rd.fail(one_line(missing), type(missing).__name__)
            raise missing from None
        rd.fail(f"{type(e).__name__}: {one_line(e)[:500]}", type(e).__name__)
        raise
    finally:
        _close_log(logging.getLogger(f"noisybench.run.{out_dir}"))


class DiskFull(NoisybenchError):
    """The disk filled up during the run: its last checkpoint is kept (written to a temporary file and
    renamed, so a failed write leaves the previous one), no failed.json (it could not be written either)."""


DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _disk_full_line(rd: RunDir, e: OSError) -> str:
    kept = rd.load_checkpoint("cpu") if os.path.lexists(rd.file(CHECKPOINT)) else None
    at = f"its last checkpoint (after epoch {kept['epoch']}) is kept" if kept else "it has no checkpoint yet"
    target = rd.path.parent if (rd.path.parent / "multirun.yaml").is_file() else rd.path
    return (f"the disk of {rd.path} is full ({e.strerror or 'no space left'}); {at}; free some space, then continue "
            f"with: noisybench train --resume {target}")


def _train(cfg: DictConfig, rd: RunDir, progress: bool, retry: bool) -> dict:
    """One attempt: the phases, with the run's log, progress bar, trackers and signal handling."""
    revision = git_revision()  # the code this attempt runs (the tree may change while it trains)
    ckpt = rd.load_checkpoint("cpu")  # verified (noisybench.rundir): a bad one is set aside
    _begin_attempt(rd, ckpt, retry)
    r, st = setup(cfg, rd, revision)
    if ckpt is not None:
        try:
            resume(r, st, ckpt)
        except Exception as e:  # checked, yet it does not fit this run's objects: set aside, start over
            rd.set_aside_checkpoint(f"does not fit this run ({type(e).__name__}: {one_line(e)[:120]})")
            ckpt = None
            _begin_attempt(rd, ckpt, retry)
            r, st = setup(cfg, rd, revision)
    st.started = time.perf_counter()
    epoch_log = _run_log(rd.path)
    epoch_log.info("%s %s after %d of %d epochs", "resumed" if ckpt else "started", rd.path,
                   st.epoch, r.epochs)
    bar = tqdm(range(st.epoch, r.epochs), desc=f"{cfg.method.name} {cfg.dataset.name}",
               disable=not progress, leave=False, initial=st.epoch, total=r.epochs)
    # trackers (logger=...): given the epochs a checkpoint holds, then each epoch; closed as
    # interrupted or failed when an exception leaves the loop, finished with the record
    skip = lambda seconds: setattr(st, "started", st.started + seconds)  # noqa: E731  (not training: off the clock)
    with loggers.opened(cfg, rd, st.rows) as trackers, StopOnSignal() as signalled, numba_compiles(skip):
        st.started = time.perf_counter()  # after the trackers started (a tracking server's time-outs are not training)
        for _ in bar:
            row = run_epoch(r, st, signalled)
            if "test" in row:  # an evaluated epoch
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=row["val"], test=row["test"])
            with excluded(skip):
                trackers.log_epoch(row)
            epoch_log.info(_epoch_line(row, r.epochs))
            if st.divergence is not None:  # stop here: the record says so, the tables mark it
                epoch_log.info("diverged: %s", st.divergence["message"])
                break
            _after_epoch(r, st, signalled)
    train_time = st.train_time()
    bar.close()
    return finish(r, st, trackers, epoch_log, train_time)


def _begin_attempt(rd: RunDir, ckpt: dict | None, retry: bool) -> None:
    """attempt.json; a run that starts over loses the rows and weights of earlier attempts."""
    rd.write_attempt("resumed" if ckpt else ("retried" if retry else "new"),
                     **({"from_epoch": ckpt["epoch"], "from_batch": ckpt["batch"]} if ckpt else {}))
    if ckpt is None:
        (rd.path / "metrics.csv").unlink(missing_ok=True)  # an earlier attempt's rows
        (rd.path / WEIGHTS).unlink(missing_ok=True)


def setup(cfg: DictConfig, rd: RunDir, revision: str | None) -> tuple[Run, RunState]:
    """The data (noise.json written), then, seeded, the model, method, optimizer and schedule as a
    new run starts them (resume() loads a checkpoint into them)."""
    t, seed = cfg.trainer, int(cfg.seed)
    device = resolve_device(str(t.device))
    task = make_task(cfg.dataset)
    ds, noise_report = task.build_data(cfg)
    atomic_write_json(rd.path / "noise.json", noise_report)
    ds = ds.to(device)
    torch.manual_seed(seed)  # model init and dropout draw from torch's (now seeded) default RNG
    shuffle = torch.Generator().manual_seed(seed)
    model, augment = _build_model(cfg, task, ds)
    aug_gen = torch.Generator(device=device).manual_seed(seed)
    model = model.to(device)
    fast = resolve_fast_path(t, device, ds.x_train, model)  # noisybench.fastpath
    model = fast.prepare(model)  # channels_last / compiled, in place (same state_dict keys)
    method = build(cfg.method)(num_classes=task.num_classes(ds)).to(device)
    method.task = task
    epochs, bs = int(t.epochs), int(t.batch_size)
    steps = epochs * -(-len(ds.y_train) // bs)  # the run's optimizer steps, for per-step schedules
    optimizer, scheduler, step_schedule = _build_optimizer(cfg.optim, model, steps)
    method.on_train_start(ds.x_train, ds.y_train, seed)
    if method.needs_clean_validation:  # opt-in baselines only; recorded as uses_clean_labels
        method.on_clean_validation(ds.x_val, ds.y_val_clean)
    if method.needs_transition_matrix:  # opt-in oracle baselines only; recorded as uses_clean_labels
        method.on_transition_matrix(torch.tensor(noise_report["transition_matrix"], dtype=torch.float32, device=device))
    if method.needs_noise_rate:  # the config's nominal rate (side information); recorded as uses_noise_rate
        method.on_noise_rate(cfg.noise.get("rate"))
    method.on_model(model, optimizer, Builders(model=lambda s: _seeded_model(cfg, task, ds, device, fast, s),
                                               optimizer=lambda params: _make_optimizer(cfg.optim, params)))
    r = Run(cfg=cfg, rd=rd, device=device, task=task, ds=ds, noise_report=noise_report,
            fast=fast, augment=augment, step_schedule=step_schedule,
            corrupted=ds.y_train != ds.y_train_clean, revision=revision, epochs=epochs,
            batch_size=bs, eval_batch_size=int(t.eval_batch_size), eval_every=int(t.eval_every),
            checkpoint_every=int(t.get("checkpoint_every", 1)),
            keep_checkpoint=bool(t.get("keep_checkpoint")),
            max_loss=t.get("max_train_loss", DEFAULT_MAX_TRAIN_LOSS),
            save_weights_at=weight_epochs(t))
    st = RunState(model=model, optimizer=optimizer, scheduler=scheduler, method=method,
                  device=device, shuffle=shuffle, aug_gen=aug_gen, revisions=[revision],
                  threads=[torch.get_num_threads()])
    return r, st


def _build_model(cfg: DictConfig, task: Task, ds: Dataset):
    """(model, augmentation or None). The dataset's transform: normalisation inside the model
    (every caller of the model gets normalised floats from the compact stored tensors),
    augmentation of training batches only."""
    model = task.build_model(cfg.model, ds)
    transform = build(cfg.dataset.transform) if cfg.dataset.get("transform") is not None else None
    if transform is None:
        return model, None
    augment = transform.augment if transform.augments else None
    return torch.nn.Sequential(transform.normalizer(), model), augment


def _seeded_model(cfg: DictConfig, task: Task, ds: Dataset, device: torch.device, fast: FastPath,
                  seed: int) -> torch.nn.Module:
    """Another model of the run's architecture initialised from `seed` (a method's own, e.g.
    Co-teaching's second network), built as the run's; torch's global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model, _ = _build_model(cfg, task, ds)
        return fast.prepare(model.to(device))


def _make_optimizer(optim: DictConfig, params) -> torch.optim.Optimizer:
    try:
        return build(optim.optimizer)(params)
    except ValueError as e:
        raise ConfigError(f"optim.optimizer: {e}") from None


def _build_optimizer(optim: DictConfig, model: torch.nn.Module, steps: int):
    """(optimizer, scheduler or None, whether the scheduler steps per optimizer step); `steps`:
    the run's optimizer steps, for per-step schedules that take `total_steps`."""
    optimizer = _make_optimizer(optim, model.parameters())
    sched_cfg = optim.get("scheduler")
    if sched_cfg is None or not sched_cfg.get("_target_"):
        return optimizer, None, False
    make_scheduler = build(sched_cfg)
    takes = inspect.signature(make_scheduler).parameters
    scheduler = make_scheduler(optimizer,
                               **({"total_steps": steps} if "total_steps" in takes else {}))
    per_step = getattr(scheduler, "interval", "epoch") == "step"  # else stepped once per epoch
    return optimizer, scheduler, per_step


def resume(r: Run, st: RunState, ckpt: dict) -> None:
    """Continue where the checkpoint left off; this attempt joins the run's history."""
    st.load_state_dict(ckpt)
    batches = -(-st.batch // r.batch_size)
    st.resumed_from.append({"epochs_done": st.epoch, "batches_done": batches})
    st.revisions.append(r.revision)
    threads, before = torch.get_num_threads(), st.threads[-1] if st.threads else None
    if before is not None and before != threads:  # another summation order: the same run up to rounding
        log.warning("noisybench: warning: resuming with %d torch thread(s), the checkpoint was computed with %d: "
                    "results may differ from an uninterrupted run in the last digits (trainer.threads=%d "
                    "resumes as it ran)", threads, before, before)
    st.threads.append(threads)
    log.info("resuming %s after %d of %d epochs%s", r.rd.path, st.epoch, r.epochs,
             f" and {batches} batches" if st.batch else "")
    # per-sample weights at the epochs the earlier attempts finished
    st.weights = {e: w for e, w in load_weights(r.rd.path).items() if e < st.epoch}
    if st.epoch >= r.epochs:  # a checkpoint at the very end (keep_checkpoint): on to the record
        st.method_metrics = st.method.epoch_metrics(r.corrupted)


def run_epoch(r: Run, st: RunState, signalled: StopOnSignal) -> dict:
    """One epoch (or the rest of an interrupted one): its steps, then its row in metrics.csv."""
    epoch = st.epoch
    total = _steps(r, st, signalled)
    lr = st.optimizer.param_groups[0]["lr"]
    if st.scheduler is not None and not r.step_schedule:
        st.scheduler.step()
    train_loss = float(total) / r.n  # host sync, once per epoch
    st.epoch, st.batch, st.perm, st.total = epoch + 1, 0, None, None
    st.divergence = diverged(train_loss, r.max_loss, epoch)
    try:
        st.method_metrics = st.method.epoch_metrics(r.corrupted)
    except Exception:
        if st.divergence is None:
            raise
        st.method_metrics = {}  # diagnostics of non-finite weights: not worth a crash
    row = {"epoch": epoch, "train_loss": train_loss, "lr": lr, **st.method.state(),
           **st.method_metrics}
    if epoch in r.save_weights_at:
        _keep_weights(r, st, epoch)
    if (epoch + 1) % r.eval_every == 0 or epoch == r.epochs - 1 or st.divergence:
        with r.fast.autocast():
            row.update(r.task.evaluate(st.model, r.ds, r.eval_batch_size))
        _class_weights(r, st, epoch, row)
        if st.method.needs_validation_scores and r.cfg.noise.get("apply_to_val", True) and row.get("val") is not None:
            st.method.on_validation(epoch, float(row["val"]), str(r.cfg.dataset.metric))  # noisy labels only
    st.rows.append(row)
    atomic_write_text(r.rd.path / "metrics.csv", _csv(st.rows))
    return row


def _steps(r: Run, st: RunState, signalled: StopOnSignal) -> torch.Tensor:
    """The epoch's optimizer steps from st.batch on; returns the loss sum over its samples (on the
    device). At a signal: a checkpoint after the step, then Interrupted."""
    ds, method, n, bs = r.ds, st.method, r.n, r.batch_size
    if st.perm is None:  # a new epoch (not the rest of an interrupted one)
        method.on_epoch_start(st.epoch, r.epochs)
        st.perm = to_device(torch.randperm(n, generator=st.shuffle), r.device)
        st.total, st.batch = torch.zeros((), device=r.device), 0
    st.model.train()
    for i in range(st.batch, n, bs):
        idx = st.perm[i:i + bs]
        x = ds.x_train[idx] if r.augment is None else r.augment(ds.x_train[idx], st.aug_gen)
        with r.fast.autocast():  # one context per step: its bf16 weight copies die with the step
            loss = method.train_step(st.model, st.optimizer, Batch(x, ds.y_train[idx], idx))
        st.total += loss * len(idx)  # in place, on the device: no host sync
        if r.step_schedule:
            st.scheduler.step()
        if signalled.signum is not None:  # a safe point: the step is complete
            st.batch = i + bs
            _save(r, st)
            _interrupt(r, st, signalled)
    return st.total


def _keep_weights(r: Run, st: RunState, epoch: int) -> None:
    w = st.method.sample_weights()
    if w is not None:  # a method with per-sample weights (a reweighting method); evaluation only
        st.weights[epoch] = w.detach().float().cpu().numpy().astype(np.float16)
        save_weights(r.rd.path, st.weights, r.task.sample_corrupted(r.corrupted), r.task.sample_classes(r.ds.y_train))


def _class_weights(r: Run, st: RunState, epoch: int, row: dict) -> None:
    """A method with per-sample weights: their per-class statistics (noisybench.class_weights) into
    the epoch's row (summary columns) and the run's history (result.json). Evaluation only."""
    w = st.method.sample_weights()
    if w is None:
        return
    s = class_weights.stats(w.detach().float().cpu().numpy(), r.task.sample_classes(r.ds.y_train).cpu().numpy(),
                            r.task.sample_corrupted(r.corrupted).cpu().numpy(), r.task.num_classes(r.ds))
    row.update(class_weights.columns(s))
    st.class_weights.append({"epoch": epoch, **s})


def _after_epoch(r: Run, st: RunState, signalled: StopOnSignal) -> None:
    """The checkpoint every trainer.checkpoint_every epochs (after the last epoch only with
    keep_checkpoint); at a signal, one now (unless just written), then Interrupted."""
    last = st.epoch == r.epochs
    due = bool(r.checkpoint_every) and st.epoch % r.checkpoint_every == 0
    if (due and not last) or (last and r.keep_checkpoint):
        _save(r, st)
    if signalled.signum is not None and not last:
        if not due:
            _save(r, st)
        _interrupt(r, st, signalled)


def _save(r: Run, st: RunState) -> None:
    t = time.perf_counter()
    st.stats["bytes"] = r.rd.save_checkpoint(st.state_dict())
    st.stats["writes"] += 1
    st.stats["seconds"] += time.perf_counter() - t


def _interrupt(r: Run, st: RunState, signalled: StopOnSignal) -> None:
    """Stop at this safe point (its checkpoint written): Interrupted says where."""
    signalled.after_checkpoint()
    bs = r.batch_size
    where = (f"the end of epoch {st.epoch} of {r.epochs}" if st.batch == 0 else
             f"epoch {st.epoch + 1} of {r.epochs}, batch {-(-st.batch // bs)} of {-(-r.n // bs)}")
    raise Interrupted(signalled.signum, where, r.rd.path)


def finish(r: Run, st: RunState, trackers: loggers.Trackers, epoch_log: logging.Logger,
           train_time: float) -> dict:
    """result.json (the run is finished from then on), the trackers' result, no checkpoint."""
    try:  # a failure before the trackers have the result closes them as failed (not left running)
        record = make_record(r.cfg, st.rows, r.noise_report, r.ds, st.method, r.task.metric,
                             r.device, train_time, st.method_metrics, revision=st.revisions[-1])
        record.update(r.fast.record())  # the effective precision, channels_last and compile
        if len({rev for rev in st.revisions if rev}) > 1:
            record["git_revisions"] = st.revisions  # resumed under other code: oldest first
        if len(set(st.threads)) > 1:
            record["torch_threads_by_attempt"] = st.threads  # resumed with other threads: oldest first
        stats = {**st.stats, "seconds": round(st.stats["seconds"], 4)}
        record.update(diverged=st.divergence, identity=r.rd.hash, resumed_from=st.resumed_from,
                      checkpoint={"every": r.checkpoint_every, **stats})
        if st.class_weights:  # a method with per-sample weights
            names = r.noise_report.get("class_names")
            names = list(names) if names is not None and len(names) == r.task.num_classes(r.ds) else None
            record["class_weights"] = class_weights.record(st.class_weights, names)
        atomic_write_json(r.rd.path / "result.json", record)
    except BaseException:
        trackers.close("failed")
        raise
    trackers.finish(record)
    epoch_log.info("finished: test_last=%.4f test_selected=%s val_selected=%s train_time=%.1fs",
                   record["test_last"], _fmt(record["test_selected"]), _fmt(record["val_selected"]),
                   record["train_time_s"])
    starved = class_weights.starved_line(record.get("class_weights"))
    if starved:
        epoch_log.info("%s", starved)
    _close_log(epoch_log)
    if not r.keep_checkpoint:
        r.rd.remove_checkpoint()
    return record


# ---- the run's log and metrics.csv ----

def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{epochs}", f"loss={row['train_loss']:.4f}"]
    for key in ("val", "test", "memorized_noisy_frac", "detect_auc"):
        if key in row:
            parts.append(f"{key}={_fmt(row[key])}")
    return " ".join(parts)


class _RunLogHandler(logging.StreamHandler):
    """train.log, appended to without following a symlink (noisybench.rundir.open_append). A failed
    write (a full disk) is raised to the run, which stops with one line, instead of logging's printed
    traceback."""

    def __init__(self, path: Path) -> None:
        super().__init__(open_append(path))

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:  # a full disk: the write that failed already ended the run with one line
            pass
        finally:
            super().close()

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # called inside logging's `except`: the write's own exception


def _run_log(out_dir: Path) -> logging.Logger:
    """train.log in the run directory: one line per epoch and the result, so a long job's progress can
    be followed (tail -f) wherever it runs; appended to across resumed attempts."""
    logger = logging.getLogger(f"noisybench.run.{out_dir}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    _close_log(logger)
    try:
        handler = _RunLogHandler(out_dir / "train.log")
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise NoisybenchError(f"{out_dir / 'train.log'} was replaced by a symlink while the run started; remove "
                              "it (noisybench never makes one) and run the command again") from None
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
