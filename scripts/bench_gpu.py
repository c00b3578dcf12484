"""Epoch time and images per second of DAL's CIFAR-10 model, float32 against the fast path.

    python scripts/bench_gpu.py                        # CUDA when present, else the CPU (short)
    python scripts/bench_gpu.py --batches 50 --compile # on a GPU: longer, and with torch.compile

The model, optimizer, loss and batch size are those of `experiment=dal_cifar10` (CIFAR ResNet-18,
SGD lr 0.01 / momentum 0.9 / weight decay 1e-4, DAL, batch 128), composed from the real config and
trained by the runner's step (`method.train_step` inside the fast path's autocast) on random
CIFAR-shaped data (3 x 32 x 32 floats, 10 classes) already on the device. Settings:

  fp32  trainer.precision=fp32, no channels_last, no compile
  fast  the fast path: bf16 autocast (float32 weights and losses) and channels_last (the `auto` of a
        CUDA run; forced on other devices), plus torch.compile with --compile

Timed: --batches training steps per setting and round after --warmup untimed ones, settings
alternating within each round (machine load hits both alike), median step time. Epoch time = that
times the 391 steps of 50,000 images (the preset trains on all of them). The device is printed first;
on a CPU bf16 is usually no faster (no bf16 matrix units): the fast path is for GPUs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))  # this checkout's noisybench is measured, not an installed one

import torch
from hydra import compose
from omegaconf import OmegaConf

from noisybench.config import build, hydra_context, register_resolvers, resolve_device
from noisybench.fastpath import resolve
from noisybench.methods.base import Batch

TRAIN_IMAGES = 50_000


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} torch threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host sync: only at timing boundaries


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument("--batches", type=int, default=None, help="timed steps per setting and round "
                   "(default 50 on a GPU, 2 on a CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per setting (default 10 GPU, 1 CPU)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the settings")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's 128")
    p.add_argument("--compile", action="store_true", help="the fast setting also uses trainer.compile=true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = p.parse_args(argv)
    from noisybench.utils import code_origin

    print(code_origin(), flush=True)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    gpu = device.type == "cuda"
    batches = a.batches or (50 if gpu else 2)
    warmup = a.warmup if a.warmup is not None else (10 if gpu else 1)
    register_resolvers()
    with hydra_context():
        cfg = compose("train", overrides=["experiment=dal_cifar10", f"trainer.device={device}"])
    bs = a.batch_size or int(cfg.trainer.batch_size)
    shape, classes = (3, 32, 32), 10
    print(f"device: {device_name(device)}; model {cfg.model.name}, method {cfg.method.name}, batch {bs}; "
          f"torch {torch.__version__}", flush=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(bs, *shape, generator=gen).to(device)
    y = torch.randint(classes, (bs,), generator=gen).to(device)
    idx = torch.arange(bs, device=device)
    fast_keys = {"precision": "bf16", "channels_last": True, "compile": a.compile}
    settings = {"fp32": {"precision": "fp32", "channels_last": False, "compile": False}, "fast": fast_keys}
    runs = {}
    for name, keys in settings.items():
        torch.manual_seed(0)
        model = build(cfg.model)(input_shape=shape, num_classes=classes).to(device)
        fast = resolve(OmegaConf.create(keys), device, x, model)
        model = fast.prepare(model)
        method = build(cfg.method)(num_classes=classes).to(device)
        method.on_train_start(x, y, 0)
        method.on_epoch_start(0, int(cfg.trainer.epochs))
        optimizer = build(cfg.optim.optimizer)(model.parameters())
        model.train()
        runs[name] = (model, method, optimizer, fast)
    times: dict[str, list[float]] = {k: [] for k in runs}

    def steps(name: str, n: int) -> float:
        model, method, optimizer, fast = runs[name]
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            with fast.autocast():
                method.train_step(model, optimizer, Batch(x, y, idx))
        sync(device)
        return (time.perf_counter() - t) / max(n, 1)

    for name in runs:
        steps(name, warmup)
    for r in range(a.rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            times[name].append(steps(name, batches))
    per_epoch = -(-TRAIN_IMAGES // bs)
    print(f"{'setting':<6} {'used':<52} {'ms/step':>9} {'images/s':>10} {'epoch_s':>9}")
    med = {}
    for name, (_, _, _, fast) in runs.items():
        med[name] = statistics.median(times[name])
        used = ", ".join(f"{k}={v}" for k, v in fast.record().items())
        print(f"{name:<6} {used:<52} {1000 * med[name]:>9.1f} {bs / med[name]:>10.0f} {per_epoch * med[name]:>9.1f}")
    print(f"speedup fast/fp32: {med['fp32'] / med['fast']:.2f}x on {device_name(device)} "
          f"({a.rounds} rounds x {batches} steps per setting; epoch = {per_epoch} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
