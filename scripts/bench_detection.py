"""What the detection score costs (docs/definitions.md, "Detection score"): the default job
(`noisybench train` with no overrides: mnist1d, cnn1d, CE, 100 epochs, evaluated every epoch), run by
the real runner in this process, alternately with the score and without it (interleaved, so machine
load hits both alike).

    python scripts/bench_detection.py                  # 2 repeats of the full default job
    python scripts/bench_detection.py --repeats 3 --epochs 20

Then the score's two parts alone (the cross-entropy of the training split's logits, `detection`), timed
`--rounds` times on the default job's model, against the epoch time: the figure that machine load
(other processes on the cores) disturbs least; the wall-time ratio of whole runs is the most exposed.

"Without" is the evaluation as it was before the score: the training split's predictions only
(`predict`), no per-sample cross-entropy, no AUC. Printed per repeat and as medians: the training time
(result.json `train_time_s`, evaluations included) with and without, their ratio, and the seconds spent
in the score's own work (the per-sample cross-entropy and `noisybench.metrics.detection`, timed inside
the runs with the score) as a share of the training time.
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

from noisybench.config import hydra_context, register_resolvers
from noisybench.tasks import classification
from noisybench.train import run

SPENT = {"seconds": 0.0}
ORIGINAL = (classification.predict_with_loss, classification.detection)


def _timed_detection(loss, corrupted):
    t = time.perf_counter()
    out = ORIGINAL[1](loss, corrupted)
    SPENT["seconds"] += time.perf_counter() - t
    return out


def _timed_predict_with_loss(model, x, y, batch_size):
    """The pass with the loss, and (timed) the loss's share of it: the cross-entropy of every batch."""
    real_ce = torch.nn.functional.cross_entropy

    def ce(*a, **k):
        t = time.perf_counter()
        out = real_ce(*a, **k)
        SPENT["seconds"] += time.perf_counter() - t
        return out

    classification.F.cross_entropy = ce
    try:
        return ORIGINAL[0](model, x, y, batch_size)
    finally:
        classification.F.cross_entropy = real_ce


def _without_predict(model, x, y, batch_size):
    pred = classification.predict(model, x, batch_size)
    return pred, torch.zeros(len(pred), device=pred.device)


def _without_detection(loss, corrupted):
    nan = torch.tensor(float("nan"))
    return nan, nan


def one_run(data_dir: str, with_score: bool, epochs: int | None, threads: int) -> float:
    classification.predict_with_loss, classification.detection = (
        (_timed_predict_with_loss, _timed_detection) if with_score else (_without_predict, _without_detection))
    extra = [f"trainer.epochs={epochs}"] if epochs else []
    with hydra_context():
        cfg = compose("train", overrides=[f"data_dir={data_dir}", "trainer.device=cpu", "trainer.progress=false",
                                          f"trainer.threads={threads}", *extra])
    try:
        rec = run(cfg, Path(tempfile.mkdtemp(prefix="bench-detect-")), progress=False)
    finally:
        classification.predict_with_loss, classification.detection = ORIGINAL
    assert (rec["detect_auc"] is not None) == with_score
    return rec["train_time_s"]


def components(data_dir: str, rounds: int, threads: int) -> tuple[float, float]:
    """Median seconds of the score's two parts in one evaluation of the default job's model: the
    per-sample cross-entropy of the training split's logits (batch by batch, as the evaluation computes
    it; the logits themselves, which the evaluation computes anyway, not counted) and `detection`."""
    import torch.nn.functional as F

    from noisybench.tasks import make_task

    torch.set_num_threads(threads)
    with hydra_context():
        cfg = compose("train", overrides=[f"data_dir={data_dir}", "trainer.device=cpu"])
    task = make_task(cfg.dataset)
    ds, _ = task.build_data(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg.model, ds).eval()
    bs = int(cfg.trainer.eval_batch_size)
    with torch.no_grad():
        logits = [model(ds.x_train[i:i + bs]) for i in range(0, len(ds.y_train), bs)]
    bad = ds.y_train != ds.y_train_clean
    ce, det = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        loss = torch.cat([F.cross_entropy(lo.float(), ds.y_train[k * bs:(k + 1) * bs], reduction="none")
                          for k, lo in enumerate(logits)])
        ce.append(time.perf_counter() - t)
        t = time.perf_counter()
        ORIGINAL[1](loss, bad)
        det.append(time.perf_counter() - t)
    return statistics.median(ce), statistics.median(det)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="default: the default job's (100)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the runs (default 1)")
    p.add_argument("--data-dir", default=None, help="default: the default job's data_dir")
    p.add_argument("--rounds", type=int, default=50, help="timings of the score's parts (default 50)")
    a = p.parse_args()
    if a.repeats < 1 or a.rounds < 1 or (a.epochs is not None and a.epochs < 1):
        p.error("--repeats, --epochs and --rounds must be at least 1")
    register_resolvers()
    data_dir = a.data_dir or tempfile.mkdtemp(prefix="bench-detect-data-")
    ratios, shares, per_epoch = [], [], []
    for r in range(a.repeats):
        times = {}
        for with_score in (True, False) if r % 2 == 0 else (False, True):
            SPENT["seconds"] = 0.0
            times[with_score] = one_run(data_dir, with_score, a.epochs, a.threads)
            if with_score:
                shares.append(SPENT["seconds"] / times[True])
            else:
                per_epoch.append(times[False] / (a.epochs or 100))
        ratios.append(times[True] / times[False])
        print(f"  repeat {r}: train time {times[True]:.2f} s with the score, {times[False]:.2f} s without "
              f"(ratio {ratios[-1]:.3f}); the score's own work {shares[-1] * 100:.2f} % of training time", flush=True)
    print(f"default job{f' ({a.epochs} epochs)' if a.epochs else ''}, evaluated every epoch: training time with / "
          f"without the detection score {statistics.median(ratios):.3f}; the score's own work "
          f"{statistics.median(shares) * 100:.2f} % of training time (medians of {a.repeats}, {a.threads} thread(s))")
    ce, det = components(data_dir, a.rounds, a.threads)
    epoch = statistics.median(per_epoch)
    print(f"the score's parts in one evaluation (medians of {a.rounds}): cross-entropy of the training logits "
          f"{ce * 1000:.2f} ms, detection {det * 1000:.2f} ms; together {(ce + det) / epoch * 100:.3f} % of an "
          f"epoch (training and evaluation, {epoch:.2f} s without the score)")

if __name__ == "__main__":
    main()
