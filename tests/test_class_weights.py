"""Starvation diagnostics (noisybench.class_weights, for any method with per-sample weights), STORM's
control baseline (method.apply_weights=false) and class_mass without a division by a zero coefficient."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noisybench import class_weights
from noisybench.methods.base import Batch, LossMethod
from noisybench.methods.storm import STORM
from noisybench.methods.storm.directional import directional
from noisybench.models.mlp import MLP
from noisybench.record import WEIGHTS
from noisybench.train import run


# ---- the statistics -------------------------------------------------------------------------------
def test_per_class_shares_by_hand():
    w = np.array([0.01, 0.02, 0.9, 0.5, 0.04, np.nan, 0.3, 0.3])
    classes = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    bad = np.array([False, False, True, False, True, False, False, False])
    s = class_weights.stats(w, classes, bad, 4)
    assert s["count"] == [3, 3, 1, 0]  # the NaN (not weighted this epoch) is left out
    assert s["share_below"] == [pytest.approx(2 / 3, abs=1e-4), pytest.approx(1 / 3, abs=1e-4), 0.0, None]
    assert s["share_below_clean"] == [1.0, 0.0, 0.0, None]  # class 0's clean samples: both below 0.05
    assert s["share_below_corrupted"] == [0.0, 1.0, None, None]
    assert s["mean_weight"][1] == pytest.approx((0.5 + 0.04 + 0.3) / 3, abs=1e-4)
    assert class_weights.columns(s) == {"starved_max_share": s["share_below"][0], "starved_max_share_clean": 1.0,
                                        "min_class_mean_weight": 0.28}
    rec = class_weights.record([{"epoch": 4, **s}], ["a", "b", "c", "d"])
    assert rec["last"]["starved"] == [{"class": 0, "share_below_clean": 1.0}]
    line = class_weights.starved_line(rec)
    assert "class 0 (a): 100 % of its clean samples" in line and "epoch 5" in line
    s["share_below_clean"][0] = 0.25  # not MORE than 25 %: not starved
    assert class_weights.starved_line(class_weights.record([{"epoch": 0, **s}])) is None


class _Fixed(LossMethod):
    """A loss method with per-sample weights it never uses: class 0 gets weight 0.01, others 0.5."""

    def on_train_start(self, x, y, seed):
        self._w = torch.where(y == 0, 0.01, 0.5)

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, reduction="none")

    def sample_weights(self):
        return self._w


def test_the_runner_reports_any_method_with_weights(make_cfg, tmp_path, monkeypatch):
    """Method-agnostic: a method that only implements sample_weights() gets the columns, the record and
    the end-of-run line (train.log); a method without weights gets none of them."""
    import noisybench.train as train

    real = train.build
    monkeypatch.setattr(train, "build", lambda node: _Fixed if node.get("_target_") == "noisybench.methods.ce."
                        "CrossEntropy" else real(node))
    cfg = make_cfg("method=ce", "trainer.epochs=2", "trainer.save_weights_at=[2]")
    rec = run(cfg, tmp_path / "fixed", progress=False)
    header = (tmp_path / "fixed" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-3:] == ["starved_max_share", "starved_max_share_clean", "min_class_mean_weight"]
    cw = rec["class_weights"]
    assert json.loads((tmp_path / "fixed" / "result.json").read_text())["class_weights"] == cw
    assert [e["epoch"] for e in cw["epochs"]] == [0, 1] and cw["last"]["share_below"][0] == 1.0
    assert cw["last"]["starved"] == [{"class": 0, "share_below_clean": 1.0}]
    assert cw["last"]["share_below"][1:] == [0.0] * 9 and cw["last"]["mean_weight"][0] == 0.01
    assert "starved classes at epoch 2" in (tmp_path / "fixed" / "train.log").read_text()
    with np.load(tmp_path / "fixed" / WEIGHTS) as z:
        assert "classes" in z.files and len(z["classes"]) == len(z["corrupted"])
    monkeypatch.setattr(train, "build", real)
    plain = run(make_cfg("method=ce", "trainer.epochs=2"), tmp_path / "ce", progress=False)
    assert "class_weights" not in plain
    assert "starved" not in (tmp_path / "ce" / "metrics.csv").read_text()


def test_storm_run_records_class_weights_and_plots_the_class_panel(make_cfg, tmp_path):
    from noisybench.report.figures import figures
    from noisybench.report.records import load_runs

    rec = run(make_cfg("method=storm", "trainer.epochs=2", "trainer.save_weights_at=[2]"), tmp_path / "s",
              progress=False)
    last = rec["class_weights"]["last"]
    assert len(last["share_below"]) == rec["num_classes"] and sum(last["count"]) == rec["num_train"]
    plots = {p.name: p for p in figures(load_runs([tmp_path / "s"])[0])}
    weights = next(p for n, p in plots.items() if n.endswith("weights_storm"))
    assert "per class" in weights.caption and len(weights.figure.axes) == 2  # one epoch + the class panel


# ---- the control baseline --------------------------------------------------------------------------
def _train(x, y, mode: str, steps: int = 4):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()  # no dropout: same passes
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    method = STORM(num_classes=3, forward_passes=1, apply_weights=mode == "weighted").double()
    method.on_train_start(x, y, seed=0)
    method.on_epoch_start(0, 1)
    omega0 = [p.detach().clone() for p in method.rescaler.parameters()]
    for i in range(steps):
        b = slice(12 * i, 12 * (i + 1))
        if mode == "plain":
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            method.train_step(model, opt, Batch(x[b], y[b], torch.arange(len(y))[b]))
    return [p.detach() for p in model.parameters()], omega0, method


def test_apply_weights_false_updates_the_model_on_the_unweighted_loss_and_still_trains_omega():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 6, dtype=torch.float64, generator=gen), torch.randint(3, (48,), generator=gen)
    control, omega0, method = _train(x, y, "control")
    plain, _, _ = _train(x, y, "plain")
    weighted, _, _ = _train(x, y, "weighted")
    for c, p in zip(control, plain):
        torch.testing.assert_close(c, p, rtol=1e-12, atol=1e-12)
    assert max(float((w - p).abs().max()) for w, p in zip(weighted, plain)) > 1e-4  # the weights do matter
    assert max(float((a.detach() - b).abs().max()) for a, b in zip(method.rescaler.parameters(), omega0)) > 1e-6
    w = method.sample_weights()
    assert bool(torch.isfinite(w).all()) and float(w.std()) > 0  # recorded, and not all alike
    assert method.apply_weights is False  # (recorded from the config, as every method key)


# ---- class_mass: no division by an exact zero -----------------------------------------------------------
def test_directional_with_a_zero_coefficient_is_finite():
    layer = nn.Linear(3, 2).double()
    h = torch.randn(4, 3, dtype=torch.float64)
    delta = torch.randn(4, 2, dtype=torch.float64)
    coef = torch.tensor([0.5, 0.0, 0.25, 0.0], dtype=torch.float64)
    u = {id(layer.weight): torch.randn(2, 3, dtype=torch.float64), id(layer.bias): torch.randn(2, dtype=torch.float64)}
    a = directional([layer], {0: h}, {0: coef[:, None] * delta}, u, coef)
    assert bool(torch.isfinite(a).all()) and a[1] == 0 and a[3] == 0
    want = ((h @ u[id(layer.weight)].T + u[id(layer.bias)]) * delta).sum(1)
    torch.testing.assert_close(a[[0, 2]], want[[0, 2]])


def test_class_mass_with_a_class_at_zero_loss_keeps_omega_finite():
    """Every loss of class 0 is exactly 0 (its logit far above the others): c_i = 0 for its samples
    under class_mass. Two steps (the second completes the first's second-order term): Ω stays finite."""
    torch.manual_seed(0)
    model = MLP((6,), 3, hidden=(8,), dropout=0.3)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.bias.copy_(torch.tensor([200.0, 0.0, 0.0]))
    x = torch.randn(48, 6)
    y = torch.tensor([0, 1, 2] * 16)
    method = STORM(num_classes=3, weight_norm="class_mass")
    method.on_train_start(x, y, seed=0)
    method.on_epoch_start(0, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = method.base_loss(model(x), y)
    assert bool((losses[y == 0] == 0).all())  # the case: class 0's losses are exactly 0
    for i in range(3):
        b = slice(16 * i, 16 * (i + 1))
        method.train_step(model, opt, Batch(x[b], y[b], torch.arange(48)[b]))
        assert all(bool(torch.isfinite(p).all()) for p in method.rescaler.parameters()), i
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
