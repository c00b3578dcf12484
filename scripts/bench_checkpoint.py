"""What checkpointing costs: write time per checkpoint relative to the epoch time, and file size.

    python scripts/bench_checkpoint.py                 # default job (mnist1d, cnn1d, CE) + CIFAR ResNet-18
    python scripts/bench_checkpoint.py --repeats 3 --skip-resnet

1. The default job (`noisybench train` with no overrides, 100 epochs, trainer.checkpoint_every=1),
   run by the real runner in this process, alternately with checkpoints every epoch and with
   checkpoint_every=0 (interleaved, so machine load hits both alike). Printed: the measured write
   seconds over the training seconds without them (the runner times every write: result.json ->
   checkpoint), the wall-time ratio of the two settings, and the file size.
2. A CIFAR ResNet-18 (DAL's CIFAR-10 preset: model, SGD with momentum, batch 128): the checkpoint the
   runner writes (model, optimizer, scheduler, method and RNG states) saved the same way, against an
   epoch time extrapolated from timed training steps on random 32x32 images (no CIFAR images here),
   45,000 training images = 352 steps. On a GPU the epoch is far shorter: measure there with
   `--device cuda` (not measured by us).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))  # this checkout's noisybench is measured, not an installed one

import torch
from hydra import compose

from noisybench.config import build, hydra_context, register_resolvers
from noisybench.rundir import RunDir
from noisybench.train import run


def default_job(data_dir: str, repeats: int, epochs: int | None, threads: int) -> None:
    register_resolvers()
    extra = [f"trainer.epochs={epochs}"] if epochs else []
    ratios, fractions, sizes, per_write = [], [], [], []
    for r in range(repeats):
        times = {}
        for every in (1, 0) if r % 2 == 0 else (0, 1):
            with hydra_context():
                cfg = compose("train", overrides=[f"data_dir={data_dir}", "trainer.device=cpu",
                                                  "trainer.progress=false", f"trainer.threads={threads}",
                                                  f"trainer.checkpoint_every={every}", *extra])
            out = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
            rec = run(cfg, out, progress=False)
            times[every] = rec["train_time_s"]
            if every:
                c = rec["checkpoint"]
                fractions.append(c["seconds"] / (rec["train_time_s"] - c["seconds"]))
                sizes.append(c["bytes"])
                per_write.append(c["seconds"] / max(1, c["writes"]))
                epochs_run = rec["epochs"]
        ratios.append(times[1] / times[0])
        print(f"  repeat {r}: train time {times[1]:.2f} s with checkpoints, {times[0]:.2f} s without; "
              f"writes {fractions[-1] * 100:.2f} % of training time", flush=True)
    print(f"default job ({epochs_run} epochs, checkpoint every epoch): write time / training time "
          f"{statistics.median(fractions) * 100:.2f} % (median of {repeats}); "
          f"{statistics.median(per_write) * 1000:.1f} ms per write; "
          f"file {statistics.median(sizes) / 1e3:.0f} kB; wall ratio with/without {statistics.median(ratios):.3f}")


def resnet18(data_dir: str, device: str, steps: int, threads: int) -> None:
    with hydra_context():
        cfg = compose("train", overrides=["experiment=dal_cifar10", f"data_dir={data_dir}", f"trainer.device={device}"])
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build(cfg.model)(input_shape=(3, 32, 32), num_classes=10).to(dev)
    optimizer = build(cfg.optim.optimizer)(model.parameters())
    scheduler = build(cfg.optim.scheduler)(optimizer)
    method = build(cfg.method)(num_classes=10).to(dev)
    bs = int(cfg.trainer.batch_size)
    x = torch.randn(bs, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (bs,), device=dev)
    model.train()

    def step() -> None:
        loss = method(model(x), y).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (allocations; fills the momentum buffers the checkpoint then holds)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - t) / steps
    steps_per_epoch = -(-45000 // bs)
    epoch = per_step * steps_per_epoch
    rd = RunDir(Path(tempfile.mkdtemp(prefix="bench-ckpt-")), cfg)
    writes = []
    for _ in range(3):
        t = time.perf_counter()
        size = rd.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "method": method.state_dict(),
                                   "rng": {"torch": torch.get_rng_state()}})
        writes.append(time.perf_counter() - t)
    w = statistics.median(writes)
    print(f"ResNet-18 (CIFAR, {device}, {threads} threads): {per_step * 1000:.0f} ms per step of {bs} -> epoch of "
          f"{steps_per_epoch} steps ~ {epoch:.0f} s (extrapolated from {steps} steps); checkpoint {size / 1e6:.1f} MB, "
          f"{w * 1000:.0f} ms per write (median of 3) = {w / epoch * 100:.3f} % of an epoch")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="default-job pairs (with / without checkpoints)")
    p.add_argument("--epochs", type=int, default=None, help="override the default job's 100 epochs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--steps", type=int, default=5, help="timed ResNet-18 steps")
    p.add_argument("--device", default="cpu", help="device for the ResNet-18 part")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--data-dir", default=None, help="dataset cache (default: a temporary directory)")
    a = p.parse_args(argv)
    from noisybench.utils import code_origin

    print(code_origin(), flush=True)
    torch.set_num_threads(a.threads)
    data_dir = a.data_dir or tempfile.mkdtemp(prefix="noisybench-bench-")
    default_job(data_dir, a.repeats, a.epochs, a.threads)
    if not a.skip_resnet:
        resnet18(data_dir, a.device, a.steps, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
