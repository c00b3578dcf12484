"""Per-step schedules (TripPy's linear warm-up) and the transformer DST protocol."""
from __future__ import annotations

import csv

import pytest
import torch

from noisybench.schedules import LinearWarmup
from noisybench.train import run


def hf_linear_schedule_with_warmup(step: int, warmup: int, total: int) -> float:
    """transformers.get_linear_schedule_with_warmup's lr_lambda, written out."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def test_linear_warmup_is_hugging_faces_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-4)
    sched = LinearWarmup(opt, total_steps=100, warmup_fraction=0.1)
    for step in range(100):
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * hf_linear_schedule_with_warmup(step, 10, 100))
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0


def test_the_runner_steps_a_per_step_schedule_after_every_batch(make_cfg, tmp_path):
    cfg = make_cfg("optim/scheduler=linear_warmup", "trainer.epochs=3")  # 128 samples - val, batch 64
    run(cfg, tmp_path, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    n_train = int(__import__("json").loads((tmp_path / "result.json").read_text())["num_train"])
    per_epoch = -(-n_train // 64)
    total, warm = 3 * per_epoch, int(0.1 * 3 * per_epoch)
    lr = float(cfg.optim.optimizer.lr)
    # metrics.csv logs the lr at the end of each epoch: after (e + 1) * per_epoch steps
    expected = [lr * hf_linear_schedule_with_warmup((e + 1) * per_epoch, warm, total) for e in range(3)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected)


@pytest.mark.parametrize("method", ["ce", "gce", "dal", "storm"])
def test_transformer_tracker_on_multiwoz_gets_trippys_protocol_for_every_method(make_cfg, method):
    cfg = make_cfg("dataset=multiwoz", "model=dst_transformer", f"method={method}", tiny=False)
    assert float(cfg.optim.optimizer.lr) == 1e-4
    assert cfg.optim.scheduler._target_ == "noisybench.schedules.LinearWarmup"
    assert cfg.optim.scheduler.warmup_fraction == 0.1
    assert cfg.dataset.task.max_len == 180 and cfg.model.dropout == 0.3  # STORM does not lower it
    assert cfg.trainer.batch_size == 48 and cfg.trainer.epochs == 10
    conv = make_cfg("dataset=multiwoz", f"method={method}", tiny=False)  # the conv tracker keeps its own
    assert conv.model.name == "dst" and conv.dataset.task.max_len == 96
