"""Training time per epoch of STORM relative to CE: same data, model, batch size and optimizer,
one process, interleaved epochs, median over epochs (evaluation excluded).

    python scripts/bench_storm.py                       # both workloads below, CPU: the default
                                                        # thread policy, then 1 thread
    python scripts/bench_storm.py --epochs 5 --workload mlp=model=mlp   # your own workload(s)

Steps are interleaved: every batch is trained by each setting in turn, so a loaded machine slows every
setting alike. The time of a setting is the median over blocks of 4 consecutive steps (each block's
total): the fast setting updates Ω on every 4th step only, so every block holds one of its meta steps
and one of its cheaper steps' triples (a median over single steps would report the cheaper steps
alone). `--breakdown` adds STORM ablations that show where its time goes (each a real configuration,
not a profiler estimate): without the second-order term, without the extra dropout passes, and with
Ω updated every 4th step.

Thread settings (`--threads`, comma-separated, each timed in turn, its ratios from one interleaved
pass): `policy` = what a single run gets (noisybench.threads.thread_pools: torch's default intra-op
threads, one BLAS thread), `N` = trainer.threads=N under the same policy, `unmanaged` = torch's
default threads with the BLAS pools left at their defaults (the runner before the thread policy;
docs/performance.md, "Threads").

Workloads (default): `small` = mnist1d / cnn1d as configured (25 channels: a CE step is ~4 ms on one
CPU thread, so STORM's fixed per-step costs -- features, Ω, bookkeeping -- dominate the ratio) and
`compute-bound` = the same with model.channels=128 (the model's passes dominate, as for real
models). Settings timed: `default` = the faithful configuration (G = 3, second order, Ω updated every
step) and `fast` = method.first_order=true method.meta_interval=4 (Ω updated every 4th step, without
the second-order term). Data come from the normal loaders (mnist1d is generated offline).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))  # this checkout's noisybench is measured, not an installed one

import torch
from hydra import compose

from noisybench.config import build, hydra_context
from noisybench.methods.base import Batch
from noisybench.pipeline import build_data
from noisybench.threads import thread_pools

FAST = "method.first_order=true method.meta_interval=4"
BREAKDOWN = {"storm first-order": ["method.first_order=true"],
             "storm 1 pass": ["method.forward_passes=1"],
             "storm interval 4": ["method.meta_interval=4"]}
WORKLOADS = {"small": [], "compute-bound": ["model.channels=128"]}
BLOCK = 4  # steps per timed block: the fast setting's meta_interval


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per setting (after one warm-up epoch)")
    p.add_argument("--threads", default="policy,1",
                   help="thread settings, comma-separated: policy, N, unmanaged (default: policy,1)")
    p.add_argument("--data-dir", default=None, help="dataset cache (default: a temporary directory)")
    p.add_argument("--fast", default=FAST, help=f"overrides of the fast setting (default: {FAST})")
    p.add_argument("--workload", action="append", default=None, metavar="NAME=OVERRIDES",
                   help="a workload: a name and comma-separated overrides (repeatable; default: "
                        + "; ".join(f"{k}={','.join(v)}" for k, v in WORKLOADS.items()) + ")")
    p.add_argument("--breakdown", action="store_true", help="also time STORM ablations: " + ", ".join(BREAKDOWN))
    p.add_argument("overrides", nargs="*", help="config overrides shared by all settings, e.g. model=mlp")
    a = p.parse_args(argv)
    from noisybench.utils import code_origin

    print(code_origin(), flush=True)
    settings = a.threads.split(",")
    bad = [t for t in settings if t not in ("policy", "unmanaged") and not (t.isdigit() and int(t) > 0)]
    if bad:
        p.error(f"--threads: {','.join(bad)} is not policy, unmanaged or a positive integer")
    default_threads = torch.get_num_threads()  # torch's own default, before any setting changes it
    data_dir = a.data_dir or tempfile.mkdtemp(prefix="noisybench-bench-")
    workloads = dict(WORKLOADS)
    if a.workload:
        workloads = {}
        for item in a.workload:
            name, _, ov = item.partition("=")
            workloads[name] = [o for o in ov.split(",") if o]
    for name, extra in workloads.items():
        for setting in settings:
            torch.set_num_threads(default_threads)
            pools = (nullcontext() if setting == "unmanaged"
                     else thread_pools(None if setting == "policy" else int(setting)))
            with pools:
                label = f"{setting} (torch {torch.get_num_threads()} threads)"
                bench(name, ["noise.rate=0.4", "trainer.device=cpu", f"data_dir={data_dir}", *a.overrides,
                             *extra], a.fast, a.epochs, label, a.breakdown)
    return 0


def bench(name: str, shared: list[str], fast: str, epochs: int, threads: str, breakdown: bool = False) -> None:
    with hydra_context():
        settings = {"ce": ["method=ce"], "storm default": ["method=storm"],
                    "storm fast": ["method=storm", *fast.split()]}
        if breakdown:
            settings.update({k: ["method=storm", *v] for k, v in BREAKDOWN.items()})
        cfgs = {k: compose("train", overrides=[*shared, *v]) for k, v in settings.items()}
    ds, _ = build_data(cfgs["ce"])
    bs, n, K = int(cfgs["ce"].trainer.batch_size), len(ds.y_train), ds.num_classes
    runs = {}
    for key, cfg in cfgs.items():
        torch.manual_seed(0)
        model = build(cfg.model)(input_shape=ds.input_shape, num_classes=K)
        method = build(cfg.method)(num_classes=K)
        opt = build(cfg.optim.optimizer)(model.parameters())
        method.on_train_start(ds.x_train, ds.y_train, 0)
        runs[key] = (model, method, opt)
    blocks: dict[str, list[float]] = {k: [] for k in runs}  # the time of each block of BLOCK consecutive steps
    gen = torch.Generator().manual_seed(0)
    full = max(1, n // bs)  # full batches per epoch (the short last one is trained, not timed)
    block = max(1, min(BLOCK, full))  # (a tiny training split: shorter blocks)
    for epoch in range(epochs + 1):  # epoch 0 warms up allocators and caches
        perm = torch.randperm(n, generator=gen)
        for model, method, _ in runs.values():
            method.on_epoch_start(epoch, epochs + 1)
            model.train()
        for step, i in enumerate(range(0, n, bs)):  # interleaved per step: machine load affects every setting alike
            idx = perm[i:i + bs]
            batch = Batch(ds.x_train[idx], ds.y_train[idx], idx)
            timed = epoch > 0 and step < full - full % block
            for key, (model, method, opt) in runs.items():
                t = time.perf_counter()
                method.train_step(model, opt, batch)
                if timed:
                    if step % block == 0:
                        blocks[key].append(0.0)
                    blocks[key][-1] += time.perf_counter() - t
    steps = -(-n // bs)
    ce = statistics.median(blocks["ce"])
    print(f"[{name}] dataset={cfgs['ce'].dataset.name} model={cfgs['ce'].model.name} "
          f"overrides={' '.join(shared[3:]) or '-'} batch={bs} n_train={n} threads={threads} epochs={epochs} "
          f"(median time of {block} consecutive steps x {steps}/{block} = s/epoch, training steps only; CE runs the "
          "model as configured, STORM switches a dropout of 0 on at 0.1)")
    for key, ts in blocks.items():
        med = statistics.median(ts)
        print(f"  {key:18s} {med * steps / block:8.3f} s/epoch   ratio to CE {med / ce:5.2f}x")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
