"""Each loss against its formula, including the DAL schedule numbers from the issue."""
from __future__ import annotations

import math

import pytest
import torch

from noisybench.errors import ConfigError
from noisybench.methods.ce import CrossEntropy
from noisybench.methods.dal import DAL, dal_schedule
from noisybench.methods.gce import GCE


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g) * 3
    targets = torch.randint(0, 5, (16,), generator=g)
    return logits.double(), targets


def test_ce_matches_negative_log_softmax(batch):
    logits, y = batch
    expected = -torch.log(torch.softmax(logits, 1)[torch.arange(16), y])
    torch.testing.assert_close(CrossEntropy(5)(logits, y), expected)


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_formula(batch, q):
    logits, y = batch
    p = torch.softmax(logits, 1).clamp(min=1e-6)[torch.arange(16), y]
    torch.testing.assert_close(GCE(5, q=q)(logits, y), (1 - p ** q) / q)


def test_gce_clamps_tiny_probabilities():
    logits = torch.tensor([[100.0, -100.0]])
    loss = GCE(2, q=0.7)(logits, torch.tensor([1]))
    assert torch.isclose(loss, (1 - torch.tensor(1e-6) ** 0.7) / 0.7).all()


def test_gce_approaches_ce_as_q_goes_to_zero(batch):
    logits, y = batch
    torch.testing.assert_close(GCE(5, q=1e-6)(logits, y), CrossEntropy(5)(logits, y), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("q", [0.0, -0.5])
def test_gce_rejects_nonpositive_q(q):
    with pytest.raises(ConfigError, match="method.q"):
        GCE(5, q=q)


def test_dal_schedule_numbers_for_150_epochs():
    E, qs, qe = 150, 0.6, 1.5
    t0 = (1 - qs) * E / (qe - qs)
    assert t0 == pytest.approx(66.6667, abs=1e-4)
    lams = [dal_schedule(e, E, qs, qe)[1] for e in range(E)]
    first = next(e for e, lam in enumerate(lams) if lam > 0)
    assert first == 67
    assert lams[E - 1] == pytest.approx((149 - t0) / (150 - t0)) and lams[E - 1] == pytest.approx(0.988, abs=1e-3)
    q0, _ = dal_schedule(0, E, qs, qe)
    qlast, _ = dal_schedule(E - 1, E, qs, qe)
    assert q0 == pytest.approx(0.6) and qlast == pytest.approx(0.6 + 0.9 * 149 / 150)


def test_dal_lambda_zero_whenever_q_at_most_one():
    # the published formula gives lambda(0) = 4 for q_s=0.6, q_e=0.9; the guard keeps it 0
    for e in range(100):
        assert dal_schedule(e, 100, 0.6, 0.9)[1] == 0.0
    for e in range(100):
        q, lam = dal_schedule(e, 100, 0.6, 1.5)
        assert (lam > 0) == (q > 1)


def test_dal_loss_formula(batch):
    logits, y = batch
    m = DAL(5, q_start=0.6, q_end=1.5)
    m.on_epoch_start(120, 150)
    q, lam = dal_schedule(120, 150, 0.6, 1.5)
    assert lam > 0
    p = torch.softmax(logits, 1)
    gce = (1 - p.clamp(min=1e-6)[torch.arange(16), y] ** q) / q
    ent = -(p * torch.log(p + 1e-6)).sum(1)
    torch.testing.assert_close(m(logits, y), gce + lam * ent / (q * math.log(5)))
    assert m.state() == {"q": q, "lambda": lam}


def test_dal_is_plain_gce_before_q_crosses_one(batch):
    logits, y = batch
    m = DAL(5)
    m.on_epoch_start(10, 150)
    torch.testing.assert_close(m(logits, y), GCE(5, q=0.6 + 0.9 * 10 / 150)(logits, y))


def test_dal_hard_bootstrap(batch):
    logits, y = batch
    m = DAL(5, bootstrap="hard")
    m.on_epoch_start(149, 150)
    q, lam = m.q, m.lam
    p = torch.softmax(logits, 1)
    gce = (1 - p.clamp(min=1e-6)[torch.arange(16), y] ** q) / q
    hard = -torch.log(p.max(1).values)
    torch.testing.assert_close(m(logits, y), gce + lam * hard / (q * math.log(5)))


@pytest.mark.parametrize("kw", [{"q_start": 0.6, "q_end": 0.6}, {"q_start": 1.0, "q_end": 0.5},
                                {"q_start": 0.0}, {"bootstrap": "medium"}])
def test_dal_rejects_bad_hyperparameters(kw):
    with pytest.raises(ConfigError, match="method"):
        DAL(5, **kw)
