"""The baselines against references written from their papers and public code (the code's lines,
transcribed to per-sample PyTorch / numpy; the module docstrings say which code and where they
depart): loss values and gradients on fixed tensors, to float tolerance."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noisybench.errors import ConfigError
from noisybench.methods.apl import NCEandRCE
from noisybench.methods.base import Batch, Builders
from noisybench.methods.coteaching import CoTeaching, forget_rate_at, rate_schedule, small_loss_exchange
from noisybench.methods.elr import ELR
from noisybench.methods.forward import ForwardCorrection, anchor_point_estimate
from noisybench.methods.sce import SymmetricCrossEntropy

K = 4


def fixed(n: int = 6, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(n, K, generator=g)).to(dtype)
    y = torch.randint(K, (n,), generator=g)
    # saturated softmax, the clamps matter: a wrong label (p_y < 1e-7) and a right one (the others < 1e-7)
    logits[0], logits[1] = torch.tensor([30.0, -5.0, 0.0, 1.0]), torch.tensor([-5.0, 30.0, 0.0, 1.0])
    y[0] = y[1] = 1
    return logits, y


def value_and_grad(fn, logits, y):
    x = logits.clone().requires_grad_(True)
    loss = fn(x, y)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


def assert_same(method_fn, ref_fn, dtype=torch.float64):
    logits, y = fixed(dtype=dtype)
    v, g = value_and_grad(method_fn, logits, y)
    rv, rg = value_and_grad(ref_fn, logits, y)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, rv, **tol)
    torch.testing.assert_close(g, rg, **tol)


# ---- SCE: HanxunH/SCELoss-Reproduce loss.py, SCELoss.forward (per sample) --------------------------

def ref_rce(pred, labels):
    pred = F.softmax(pred, dim=1)
    pred = torch.clamp(pred, min=1e-7, max=1.0)
    label_one_hot = torch.nn.functional.one_hot(labels, K).to(pred.dtype)
    label_one_hot = torch.clamp(label_one_hot, min=1e-4, max=1.0)
    return -1 * torch.sum(pred * torch.log(label_one_hot), dim=1)


def ref_sce(alpha, beta):
    return lambda pred, labels: alpha * F.cross_entropy(pred, labels, reduction="none") + beta * ref_rce(pred, labels)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha,beta", [(0.1, 1.0), (6.0, 0.1)])
def test_sce_matches_the_public_code(alpha, beta, dtype):
    assert_same(SymmetricCrossEntropy(K, alpha=alpha, beta=beta), ref_sce(alpha, beta), dtype)


def test_sce_defaults_are_the_papers_cifar10_setting():
    m = SymmetricCrossEntropy(K)
    assert (m.alpha, m.beta) == (0.1, 1.0)


# ---- APL NCE+RCE: HanxunH/Active-Passive-Losses loss.py, NormalizedCrossEntropy + ReverseCrossEntropy --

def ref_nce_rce(alpha, beta):
    def loss(pred, labels):
        logp = F.log_softmax(pred, dim=1)
        label_one_hot = torch.nn.functional.one_hot(labels, K).to(logp.dtype)
        nce = -1 * torch.sum(label_one_hot * logp, dim=1) / (-logp.sum(dim=1))
        return alpha * nce + beta * ref_rce(pred, labels)
    return loss


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (10.0, 0.1)])
def test_apl_matches_the_public_code(alpha, beta, dtype):
    assert_same(NCEandRCE(K, alpha=alpha, beta=beta), ref_nce_rce(alpha, beta), dtype)


def test_apl_defaults_are_the_papers_cifar10_setting():
    m = NCEandRCE(K)
    assert (m.alpha, m.beta) == (1.0, 1.0)


# ---- ELR: shengliu66/ELR ELR/model/loss.py, elr_loss.forward (per sample) ---------------------------

class RefELR:
    def __init__(self, num_examp, beta, lam):
        self.target = torch.zeros(num_examp, K, dtype=torch.float64)
        self.beta, self.lam = beta, lam

    def __call__(self, index, output, label):
        y_pred = F.softmax(output, dim=1)
        y_pred = torch.clamp(y_pred, 1e-4, 1.0 - 1e-4)
        y_pred_ = y_pred.data.detach()
        self.target[index] = self.beta * self.target[index] + (1 - self.beta) * (
            (y_pred_) / (y_pred_).sum(dim=1, keepdim=True))
        ce_loss = F.cross_entropy(output, label, reduction="none")
        elr_reg = (1 - (self.target[index] * y_pred).sum(dim=1)).log()
        return ce_loss + self.lam * elr_reg


class Logits(nn.Module):
    """A 'model' whose output for sample i is a free row of logits: the gradient is d loss / d logits."""

    def __init__(self, logits):
        super().__init__()
        self.w = nn.Parameter(logits.clone())

    def forward(self, index):
        return self.w[index]


def test_elr_matches_the_public_code_over_steps():
    logits, y = fixed(8)
    n = len(y)
    method, ref = ELR(K, lam=3.0, beta=0.7).double(), RefELR(n, beta=0.7, lam=3.0)
    method.on_train_start(torch.arange(n), y, seed=0)
    model = Logits(logits)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ref_logits = logits.clone()
    batches = ([0, 1, 2, 3], [2, 5, 7], [0, 2, 5, 6], [1, 3, 6, 7])  # sample 4 never seen
    for index in map(torch.tensor, batches):
        loss = method.train_step(model, opt, Batch(index, y[index], index))
        x = ref_logits[index].clone().requires_grad_(True)
        ref_loss = ref(index, x, y[index]).mean()
        (g,) = torch.autograd.grad(ref_loss, x)
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-10, atol=1e-12)
        expected_grad = torch.zeros_like(ref_logits).index_put_((index,), g, accumulate=True)
        torch.testing.assert_close(model.w.grad, expected_grad, rtol=1e-10, atol=1e-12)
        ref_logits = ref_logits - 0.5 * expected_grad  # SGD, as the method's optimizer
        torch.testing.assert_close(method.target, ref.target, rtol=1e-12, atol=1e-14)
    assert (method.target[1] != 0).all() and (method.target[4] == 0).all()  # only the samples seen


def test_elr_targets_are_in_the_state_dict_and_need_on_train_start():
    m = ELR(K)
    m.on_train_start(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long), 0)
    assert m.state_dict()["target"].shape == (5, K)
    with pytest.raises(ConfigError, match="one label per sample"):
        ELR(K).on_train_start(torch.zeros(5, 2), torch.zeros(5, 3, dtype=torch.long), 0)
    with pytest.raises(RuntimeError, match="indices"):
        m(torch.zeros(2, K), torch.zeros(2, dtype=torch.long))


# ---- forward correction: giorgiop/loss-correction loss.py robust('forward') and noise.py NoiseEstimator --

def ref_forward(P):
    def loss(y_pred_logits, labels):
        y_pred = F.softmax(y_pred_logits, dim=1)
        y_pred = y_pred / y_pred.sum(dim=-1, keepdim=True)
        y_pred = torch.clamp(y_pred, 1e-7, 1.0 - 1e-7)
        y_true = F.one_hot(labels, K).to(y_pred.dtype)
        return -torch.sum(y_true * torch.log(y_pred @ P.to(y_pred.dtype)), dim=-1)
    return loss


def noisy_channel():
    return torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.0, 0.7, 0.3, 0.0], [0.1, 0.0, 0.8, 0.1], [0.0, 0.0, 0.2, 0.8]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_loss_matches_the_public_code(dtype):
    m = ForwardCorrection(K, transition="oracle")
    assert m.needs_transition_matrix and m.uses_clean_labels
    m.on_transition_matrix(noisy_channel())
    assert_same(m, ref_forward(noisy_channel()), dtype)


def ref_estimator(eta_corr, filter_outlier=True):
    """NoiseEstimator.fit's loop, on a copy of each column (see the module's departure (2))."""
    c = eta_corr.shape[1]
    T = np.empty((c, c))
    for i in np.arange(c):
        if not filter_outlier:
            idx_best = np.argmax(eta_corr[:, i])
        else:
            eta_thresh = np.percentile(eta_corr[:, i], 97, method="higher")
            robust_eta = eta_corr[:, i].copy()
            robust_eta[robust_eta >= eta_thresh] = 0.0
            idx_best = np.argmax(robust_eta)
        for j in np.arange(c):
            T[i, j] = eta_corr[idx_best, j]
    return T


def test_anchor_point_estimate_matches_the_public_code_and_finds_T():
    rng = np.random.default_rng(0)
    T = noisy_channel().double().numpy()
    clean = rng.dirichlet(np.full(K, 0.3), size=400)  # clean posteriors, some near one-hot (anchor points)
    eta = clean @ T  # the noisy posterior a perfect CE model learns
    est = anchor_point_estimate(eta)
    np.testing.assert_array_equal(est, ref_estimator(eta))
    assert np.abs(est - T).mean() < 0.05
    assert np.abs(anchor_point_estimate(eta, 100.0) - T).mean() < np.abs(np.eye(K) - T).mean()


def test_forward_estimates_T_after_the_warm_up_and_reports_its_error():
    logits, y = fixed(8)
    n = len(y)
    m = ForwardCorrection(K, warmup_epochs=1.0).double()
    m.on_train_start(torch.arange(n), y, seed=0)
    model = Logits(logits)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed logits: the estimate is checkable
    for epoch in range(2):
        m.on_epoch_start(epoch, 2)
        for i in range(0, n, 4):
            idx = torch.arange(i, min(i + 4, n))
            m.train_step(model, opt, Batch(idx, y[idx], idx))
            if epoch == 0:
                assert m.T is None  # CE during the warm-up
    expected = anchor_point_estimate(torch.softmax(logits, 1).numpy())
    np.testing.assert_allclose(m.T.double().numpy(), expected, rtol=1e-6)
    out = m.result_extras({"transition_matrix": noisy_channel().tolist()})
    assert out["T_estimated_at_epoch"] == 1.0 and np.array(out["T_estimated"]).shape == (K, K)
    error = np.abs(np.array(out["T_estimated"]) - noisy_channel().numpy())
    assert out["T_mae"] == pytest.approx(error.mean(), abs=1e-6)
    assert not m.uses_clean_labels
    with pytest.raises(ConfigError, match="method.warmup_epochs=3 leaves no epoch"):
        ForwardCorrection(K, warmup_epochs=3).on_epoch_start(0, 3)


# ---- Co-teaching: bhanML/Co-teaching loss.py loss_coteaching and main.py rate_schedule --------------

def ref_loss_coteaching(y_1, y_2, t, forget_rate):
    """loss_coteaching's lines (without the pure ratios, which need the noise flags)."""
    loss_1 = F.cross_entropy(y_1, t, reduction="none")
    ind_1_sorted = torch.from_numpy(np.argsort(loss_1.data.cpu().numpy()))
    loss_1_sorted = loss_1[ind_1_sorted]
    loss_2 = F.cross_entropy(y_2, t, reduction="none")
    ind_2_sorted = torch.from_numpy(np.argsort(loss_2.data.cpu().numpy()))
    remember_rate = 1 - forget_rate
    num_remember = int(remember_rate * len(loss_1_sorted))
    ind_1_update = ind_1_sorted[:num_remember]
    ind_2_update = ind_2_sorted[:num_remember]
    # exchange
    loss_1_update = F.cross_entropy(y_1[ind_2_update], t[ind_2_update])
    loss_2_update = F.cross_entropy(y_2[ind_1_update], t[ind_1_update])
    return (torch.sum(loss_1_update) / num_remember, torch.sum(loss_2_update) / num_remember,
            ind_1_update, ind_2_update, num_remember)


def ref_rate_schedule(forget_rate, num_gradual, exponent, n_epoch):
    rate_schedule = np.ones(n_epoch) * forget_rate
    rate_schedule[:num_gradual] = np.linspace(0, forget_rate ** exponent, num_gradual)
    return rate_schedule


def coteaching_on(logits_1, logits_2, lr=0.0, **kw):
    """A CoTeaching with free logit rows as both networks (net 2 built by the Builders, as the runner does)."""
    m = CoTeaching(K, **kw).double()
    n = len(logits_1)
    m.on_train_start(torch.arange(n), torch.zeros(n, dtype=torch.long), seed=0)
    if m.needs_noise_rate:
        m.on_noise_rate(0.4)
    net1 = Logits(logits_1)
    opt = torch.optim.SGD(net1.parameters(), lr=lr)
    m.on_model(net1, opt, Builders(model=lambda seed: Logits(logits_2),
                                   optimizer=lambda ps: torch.optim.SGD(ps, lr=lr)))
    return m, net1, opt


@pytest.mark.parametrize("forget_rate", [0.0, 0.2, 0.45, 0.7, 0.85])
def test_coteaching_exchange_matches_the_public_code(forget_rate):
    logits_1, y = fixed(10)
    logits_2 = fixed(10)[0].flip(0) + 0.1 * torch.arange(10.0, dtype=torch.float64)[:, None]
    m, net1, opt = coteaching_on(logits_1, logits_2, forget_rate=forget_rate, num_gradual=0)
    assert m.current_forget_rate() == forget_rate  # num_gradual=0: tau from the first epoch
    index = torch.arange(10)
    loss = m.train_step(net1, opt, Batch(index, y, index))
    x1, x2 = logits_1.clone().requires_grad_(True), logits_2.clone().requires_grad_(True)
    ref_1, ref_2, keep_1, keep_2, num_remember = ref_loss_coteaching(x1, x2, y, forget_rate)
    assert num_remember == int((1 - forget_rate) * 10) and not torch.equal(keep_1, keep_2)
    mine_1, mine_2 = small_loss_exchange(F.cross_entropy(logits_1, y, reduction="none"),
                                         F.cross_entropy(logits_2, y, reduction="none"), forget_rate)
    assert torch.equal(mine_1, keep_1) and torch.equal(mine_2, keep_2)
    # departure 2: the mean over the kept samples (the code divides that mean by num_remember again)
    torch.testing.assert_close(loss, (ref_1 * num_remember).detach(), rtol=1e-12, atol=1e-14)
    g1, g2 = torch.autograd.grad(ref_1 * num_remember + ref_2 * num_remember, (x1, x2))
    torch.testing.assert_close(net1.w.grad, g1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.net2.w.grad, g2, rtol=1e-12, atol=1e-14)
    assert (net1.w.grad[keep_2] != 0).any() and (net1.w.grad[~torch.isin(index, keep_2)] == 0).all()
    assert m.kept[0].sum() == m.kept[1].sum() == num_remember  # net 1's and net 2's kept samples, counted
    assert torch.equal(m.kept[0].nonzero().squeeze(1), keep_1.sort().values)


def test_coteaching_keeps_at_least_one_sample():
    """Departure 3: where the code keeps int(0.5) = 0 samples (a mean over nothing: NaN), one is kept."""
    loss_1, loss_2 = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.5, 2.0, 0.1])
    keep_1, keep_2 = small_loss_exchange(loss_1, loss_2, 0.8)
    assert keep_1.tolist() == [1] and keep_2.tolist() == [2]


def test_coteaching_nets_learn_from_each_other_with_one_schedule():
    logits_1, y = fixed(8)
    logits_2 = logits_1.flip(0).clone()
    m, net1, opt = coteaching_on(logits_1, logits_2, lr=0.5, forget_rate=0.25, num_gradual=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    index = torch.arange(8)
    m.train_step(net1, opt, Batch(index, y, index))
    sched.step()
    m.train_step(net1, opt, Batch(index, y, index))
    assert m.optimizer2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert not torch.equal(net1.w, m.net2.w) and not torch.equal(m.net2.w, logits_2)


@pytest.mark.parametrize("tau,num_gradual,exponent", [(0.2, 10, 1.0), (0.45, 5, 0.5), (0.5, 15, 2.0),
                                                      (0.3, 0, 1.0), (0.3, 1, 1.0), (0.8, 2, 1.0)])
def test_coteaching_schedule_is_the_public_codes(tau, num_gradual, exponent):
    ref = ref_rate_schedule(tau, num_gradual, exponent, 200)
    np.testing.assert_array_equal(rate_schedule(tau, num_gradual, exponent, 200), ref)
    np.testing.assert_array_equal(rate_schedule(tau, num_gradual, exponent, 3), ref[:3])  # fewer epochs than T_k
    # the runner's epoch e is the code's training epoch e + 1 (its epoch 0 only evaluates)
    assert [forget_rate_at(e, tau, num_gradual, exponent) for e in range(199)] == ref[1:].tolist()


def test_coteaching_default_schedule_values():
    assert forget_rate_at(0, 0.4, 10, 1.0) == pytest.approx(0.4 / 9)
    assert forget_rate_at(7, 0.4, 10, 1.0) == pytest.approx(0.4 * 8 / 9)
    assert forget_rate_at(8, 0.4, 10, 1.0) == forget_rate_at(100, 0.4, 10, 1.0) == 0.4


def test_coteaching_takes_the_nominal_noise_rate_as_side_information():
    m = CoTeaching(K)
    assert m.needs_noise_rate and m.uses_noise_rate and not m.uses_clean_labels
    m.on_noise_rate(0.35)
    assert m.tau == 0.35 and "nominal" in m.result_extras({})["tau_from"]
    with pytest.raises(ConfigError, match="method.forget_rate=NUMBER"):
        CoTeaching(K).on_noise_rate(None)  # e.g. noise=real
    assert not CoTeaching(K, forget_rate=0.2).uses_noise_rate
    assert not CoTeaching(K, forget_rate="estimate").uses_noise_rate
    with pytest.raises(ConfigError, match="one label per sample"):
        CoTeaching(K).on_train_start(torch.zeros(5, 2), torch.zeros(5, 3, dtype=torch.long), 0)


def test_coteaching_estimates_tau_from_anchor_points():
    logits, y = fixed(8)
    m, net1, opt = coteaching_on(logits, logits.flip(0).clone(), forget_rate="estimate", estimate_epoch=1)
    index = torch.arange(8)
    m.on_epoch_start(0, 2)
    m.train_step(net1, opt, Batch(index, y, index))
    assert m.tau is None and m.current_forget_rate() == 0.0  # before the estimate: every sample
    m.on_epoch_start(1, 2)
    m.train_step(net1, opt, Batch(index, y, index))
    T = anchor_point_estimate(torch.softmax(logits, 1).numpy())
    assert m.tau == pytest.approx(1 - np.mean(np.diag(T)), abs=1e-6) and 0 < m.tau < 1
    assert m.result_extras({})["tau_estimated_at_epoch"] == 1
    with pytest.raises(ConfigError, match="method.estimate_epoch=2 leaves no epoch"):
        CoTeaching(K, forget_rate="estimate", estimate_epoch=2).on_epoch_start(0, 2)


def test_coteaching_in_the_runner_builds_net_2_from_its_own_seed(make_cfg, tmp_path):
    """Net 1 is initialised as a CE run of the same seed (net 2's initialisation leaves torch's RNG as it
    was); net 2 has its own weights, the same for the same seed, other for another seed; its optimizer is
    the run's optim.optimizer; the nominal noise.rate reaches the method and result.json says so."""
    from types import SimpleNamespace

    from noisybench.train import run, setup

    def built(*overrides):
        cfg = make_cfg(*overrides, "noise.rate=0.3", "optim.optimizer.lr=0.02")
        (tmp_path / "rd").mkdir(exist_ok=True)
        _, st = setup(cfg, SimpleNamespace(path=tmp_path / "rd"), None)
        return st

    ce = built("method=ce")
    rng_ce = torch.get_rng_state()
    ct = built("method=coteaching")
    assert torch.equal(torch.get_rng_state(), rng_ce)  # dropout and the rest draw as in a CE run
    again, other = built("method=coteaching"), built("method=coteaching", "seed=1")
    net1, net2 = ct.model.state_dict(), ct.method.net2.state_dict()
    assert all(torch.equal(v, ce.model.state_dict()[k]) for k, v in net1.items())
    assert not any(torch.equal(v, net1[k]) for k, v in net2.items() if v.is_floating_point())
    assert all(torch.equal(v, again.method.net2.state_dict()[k]) for k, v in net2.items())
    assert not torch.equal(next(iter(net2.values())), next(iter(other.method.net2.state_dict().values())))
    assert type(ct.method.optimizer2) is type(ct.optimizer)
    assert ct.method.optimizer2.defaults == ct.optimizer.defaults and ct.optimizer.defaults["lr"] == 0.02
    assert ct.method.tau == 0.3 and f"net2.{next(iter(net2))}" in ct.method.state_dict()
    record = run(make_cfg("method=coteaching", "noise.rate=0.3"), tmp_path / "run", progress=False)
    assert record["uses_noise_rate"] is True and record["uses_clean_labels"] is False
    assert record["method"]["forget_rate"] is None and record["method_result"]["tau"] == 0.3
