"""STORM: rescaler, features, lookahead, exact meta-gradient, runner integration."""
from __future__ import annotations

import copy
import functools
import json
import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose
from torch import nn
from torch.func import functional_call

from noisybench.config import config_files, hydra_context
from noisybench.errors import ConfigError
from noisybench.methods.base import Batch
from noisybench.methods.storm import STORM, Rescaler, adam_step, fast_dropout, lookahead, lookahead_vjp
from noisybench.methods.storm.features import GroupMemory, gaussian_kl, gaussian_overlap, pass_stats
from noisybench.models import split_at_dropout
from noisybench.models.cnn1d import CNN1D
from noisybench.models.cnn28 import CNN28
from noisybench.models.linear import Linear
from noisybench.models.mlp import MLP
from noisybench.train import run


def compose_cfg(tmp_path, *overrides):
    with hydra_context():
        return compose("train", overrides=[
            "dataset=digits", "trainer.epochs=1", "trainer.device=cpu", "trainer.progress=false",
            f"data_dir={tmp_path / 'data'}", *overrides])


# ---- Ω ------------------------------------------------------------------------------------------

def test_rescaler_shapes_and_range_match_per_class_modules():
    torch.manual_seed(0)
    r = Rescaler(19, heads=3)
    r.reset_parameters(torch.Generator().manual_seed(1))
    f, head = torch.randn(16, 19) * 5, torch.randint(3, (16,))
    w = r(f, head)
    assert w.shape == (16,) and bool(((w > 0) & (w < 1)).all())
    for c in range(3):  # each head is Linear → BN → ReLU → Linear → BN → softmax[:, 1] on the whole batch
        ref = nn.Sequential(nn.Linear(19, 19), nn.BatchNorm1d(19, affine=False), nn.ReLU(),
                            nn.Linear(19, 2), nn.BatchNorm1d(2, affine=False), nn.Softmax(dim=1)).train()
        with torch.no_grad():
            ref[0].weight.copy_(r.w1[c]), ref[0].bias.copy_(r.b1[c])
            ref[3].weight.copy_(r.w2[c]), ref[3].bias.copy_(r.b2[c])
        torch.testing.assert_close(w[head == c], ref(f)[:, 1][head == c], atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("compiled", [True, False], ids=["host-loops", "tensor-kernels"])
@pytest.mark.parametrize("batches", [1, 2])
def test_omega_node_equals_autograd_through_the_layers(batches, compiled, monkeypatch):
    """Ω's written-out forward and backward (one autograd node; the compiled host loops a CPU runs, and
    the tensor kernels other devices run) give the values and ω-gradients of autograd through
    `_all_heads` (float64; every head's BN over the whole batch)."""
    from noisybench.methods.storm import _Omega

    monkeypatch.setattr(_Omega, "compiled", compiled)
    torch.manual_seed(0)
    r = Rescaler(19, heads=4).double()
    r.reset_parameters(torch.Generator().manual_seed(1))
    with torch.no_grad():  # away from the init, so every term of the gradient matters
        for p in r.parameters():
            p.add_(torch.randn(p.shape, dtype=torch.float64) * 0.3)
    f, head = torch.randn(24, batches, 19, dtype=torch.float64) * 3, torch.randint(4, (24, batches))
    c = torch.randn(24, batches, dtype=torch.float64)
    w = r._picked(f, head, None)
    assert w.grad_fn is not None and "Omega" in type(w.grad_fn).__name__
    w_ref = r.all_heads(f).gather(2, head[..., None]).squeeze(2)
    torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-14)
    objective = lambda w: (w * c).sum() + (w ** 2).sum() / w.sum()  # noqa: E731  (a local helper)
    got = torch.autograd.grad(objective(w), [r.w1, r.w2])
    want = torch.autograd.grad(objective(w_ref), [r.w1, r.w2])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert b.abs().max() > 1e-3


@pytest.mark.parametrize("weight_norm", ["none", "weight_sum", "mass", "class_sum", "class_mass"])
def test_closed_form_objective_gradient_equals_autograd(weight_norm):
    """`_rescaled_grad` is d`_rescaled`/dw, also where a class's weights sum to 0 (clamped: a constant)."""
    method = STORM(num_classes=4, weight_norm=weight_norm)
    gen = torch.Generator().manual_seed(0)
    for trial in range(4):
        w = torch.rand(40, dtype=torch.float64, generator=gen)
        head = torch.randint(4, (40,), generator=gen)
        head[:4] = torch.arange(4)
        if trial == 3:
            w[head == 2] = 0.0
        values = torch.rand(40, dtype=torch.float64, generator=gen)
        ell = torch.randn(40, dtype=torch.float64, generator=gen)
        leaf = w.clone().requires_grad_()
        want, = torch.autograd.grad(method._rescaled(0.8, values, leaf, 50, ell, head), leaf)
        got = method._rescaled_grad(0.8, values, w, 50, ell, head)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))

# ---- features -------------------------------------------------------------------------------------

def _ref_kl(mp, sp, mq, sq):
    if sp == 0 or sq == 0:
        return 0.0
    return math.log(sq / sp) + (sp ** 2 + (mp - mq) ** 2) / (2 * sq ** 2) - 0.5


def _ref_features(rows, y_batch):
    """Independent per-sample loops over the memory rows (class, l̄, l̆, p̄, p̆, cat)."""
    def std(v):
        return statistics.stdev(v) if len(v) > 1 else 1e-8

    out = []
    for _i, (c, lm, ls, pm, ps, cat) in enumerate(y_batch):
        grp = [r for r in rows if r[0] == c and r[5] == cat]
        cols = [[r[k] for r in grp] for k in range(1, 5)]
        gm_l, gm_s = statistics.fmean(cols[0]), statistics.fmean(cols[1])
        kls = [_ref_kl(r[1], r[2], gm_l, gm_s) for r in grp]
        ovls = [statistics.NormalDist(r[1], max(r[2], 1e-8)).overlap(statistics.NormalDist(gm_l, max(gm_s, 1e-8)))
                for r in grp]
        kl = _ref_kl(lm, ls, gm_l, gm_s)
        ovl = statistics.NormalDist(lm, max(ls, 1e-8)).overlap(statistics.NormalDist(gm_l, max(gm_s, 1e-8)))
        f = []
        for own, col in zip((lm, ls, pm, ps), cols):
            f += [own, statistics.fmean(col), std(col)]
        f += [kl, statistics.fmean(kls), std(kls), ovl, statistics.fmean(ovls), std(ovls), float(cat)]
        out.append(f)
    return torch.tensor(out, dtype=torch.float64)


def test_pass_stats_by_hand():
    losses = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]], dtype=torch.float64)  # G=3, B=2
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]],
                          dtype=torch.float64)
    s = torch.from_numpy(pass_stats(losses, logits, torch.tensor([0, 1])))
    torch.testing.assert_close(s[:, 0], torch.tensor([2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(s[:, 1], torch.tensor([1.0, 0.0], dtype=torch.float64))
    pmax = torch.softmax(logits, 2).max(2).values
    torch.testing.assert_close(s[:, 2], pmax.mean(0))
    torch.testing.assert_close(s[:, 3], pmax.std(0))
    assert s[:, 4].tolist() == [1.0, 1.0]  # 2 of 3 passes agree for both samples
    # a tie (G=2, one agreeing pass) goes to pass 0
    tie = pass_stats(losses[:2], logits[:2], torch.tensor([0, 1]))
    assert tie[:, 4].tolist() == [1.0, 1.0]
    tie = pass_stats(losses[:2].flip(0), logits[:2].flip(0), torch.tensor([0, 1]))
    assert tie[:, 4].tolist() == [0.0, 1.0]


def test_nineteen_features_against_independent_loops():
    g = torch.Generator().manual_seed(0)
    mem = GroupMemory(num_classes=3)

    def batch(n):
        y = torch.randint(3, (n,), generator=g)
        st = torch.rand(n, 5, generator=g, dtype=torch.float64)
        st[:, 4] = (st[:, 4] > 0.4).double()
        st[0, 1] = 0.0  # a zero loss std: KL 0 and the overlap's σ floor
        return st, y

    history = []
    for n in (7, 6, 5):  # window 4 per class: older samples must drop out, newest kept
        st, y = batch(n)
        mem.update(st, y, size=4)
        history += [(int(c), *map(float, r)) for c, r in zip(y, st)]
    kept = []
    for c in range(3):
        kept += [r for r in history if r[0] == c][-4:]
    assert sorted(kept) == sorted((int(c), *map(float, r)) for c, r in zip(mem.slot, mem.stats))
    f = torch.from_numpy(mem.features(st, y))
    assert f.shape == (5, 19)
    ref = _ref_features(kept, [(int(c), *map(float, r)) for c, r in zip(y, st)])
    torch.testing.assert_close(f, ref, atol=1e-9, rtol=1e-7)


def test_kl_and_overlap_closed_forms():
    mp, sp, mq, sq = (torch.tensor(v, dtype=torch.float64) for v in ([0.3, 1.0, 2.0, 0.5], [0.2, 0.0, 1.5, 0.7],
                                                                     [0.1, 1.0, -1.0, 0.5], [0.4, 0.3, 1.5, 0.7]))
    kl = torch.from_numpy(gaussian_kl(mp, sp, mq, sq))
    ovl = torch.from_numpy(gaussian_overlap(mp, sp, mq, sq))
    for i in range(4):
        assert kl[i].item() == pytest.approx(_ref_kl(*(t[i].item() for t in (mp, sp, mq, sq))))
        ref = statistics.NormalDist(mp[i].item(), max(sp[i].item(), 1e-8)).overlap(
            statistics.NormalDist(mq[i].item(), max(sq[i].item(), 1e-8)))
        assert ovl[i].item() == pytest.approx(ref, abs=1e-9)


# ---- the lookahead replicates the optimizer ------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, dampening=0.0),
    lambda ps: torch.optim.SGD(ps, lr=0.1),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-1),
])
def test_lookahead_equals_optimizer_step(make):
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(5))
    opt = make([p])
    kind = "sgd" if isinstance(opt, torch.optim.SGD) else "adam"
    for _ in range(3):
        g = torch.randn(5)
        pred = lookahead(p.detach(), g, opt.param_groups[0], opt.state.get(p, {}), kind,
                         isinstance(opt, torch.optim.AdamW))
        p.grad = g
        opt.step()
        torch.testing.assert_close(pred, p.detach())


@pytest.mark.parametrize("kind,group,state", [
    ("sgd", dict(lr=0.1, weight_decay=1e-2, momentum=0.9, dampening=0.0, nesterov=False), {}),
    ("sgd", dict(lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.3, nesterov=False), {"momentum_buffer": 0.0}),
    ("sgd", dict(lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=True), {"momentum_buffer": 0.0}),
    ("sgd", dict(lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=True), {}),
    ("sgd", dict(lr=0.1, weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False), {}),
    ("adam", dict(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8), {}),
    ("adam", dict(lr=1e-2, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8), "filled"),
    ("adam", dict(lr=1e-2, weight_decay=1e-1, betas=(0.8, 0.99), eps=1e-6, decoupled=True), "filled"),
])
def test_closed_form_lookahead_vjp_equals_autograd(kind, group, state):
    """(∂θ*/∂g)ᵀ v in closed form equals autograd through `lookahead`, including gradient entries that
    are exactly 0 with an empty Adam state (v = 0 there: sqrt is held constant); SGD bit for bit."""
    gen = torch.Generator().manual_seed(0)
    p, v = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(7, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    g[0] = 0.0
    if state == "filled":
        state = {"exp_avg": torch.randn(7, 5, generator=gen, dtype=torch.float64) * 0.1,
                 "exp_avg_sq": torch.rand(7, 5, generator=gen, dtype=torch.float64) * 0.01, "step": 4.0}
    gq = g.clone().requires_grad_(True)
    theta = lookahead(p, gq, group, state, kind, group.get("decoupled", False))
    (expected,) = torch.autograd.grad(theta, gq, v)
    got = lookahead_vjp(p, g, v, group, state, kind)
    assert torch.isfinite(got).all()
    if kind == "sgd":
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
        assert not torch.equal(got, torch.zeros_like(got))


def test_omega_adam_step_is_torch_adam_bit_for_bit():
    """Ω's lean Adam step equals torch.optim.Adam(fused=True).step() bit for bit, state included, and
    the foreach and per-tensor Adam up to rounding."""
    results = []
    for lean, kind in ((True, "fused"), (False, "fused"), (False, "foreach"), (False, "loop")):
        torch.manual_seed(0)
        r = Rescaler(19, heads=3)
        r.reset_parameters(torch.Generator().manual_seed(0))
        opt = torch.optim.Adam(r.parameters(), lr=1e-2, fused=kind == "fused" or None, foreach=kind == "foreach")
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in r.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            adam_step(opt) if lean else opt.step()
        results.append(([p.detach().clone() for p in r.parameters()], opt.state_dict()["state"]))
    for i, (params, state) in enumerate(results[1:]):
        same = torch.equal if i == 0 else functools.partial(torch.testing.assert_close, rtol=1e-6, atol=1e-7)
        for a, b in zip(results[0][0], params):
            assert same(a, b) is not False
        for k in state:
            for m in state[k]:
                assert same(torch.as_tensor(state[k][m]), torch.as_tensor(results[0][1][k][m])) is not False
    start = Rescaler(19, heads=3)
    start.reset_parameters(torch.Generator().manual_seed(0))
    assert not torch.equal(results[0][0][0], start.w1)  # the steps moved Ω


def test_fast_dropout_rate_scale_and_replay():
    """STORM's cheap masks: the drop rate is p (rounded to 1/32768), kept values are scaled so the mean
    is unchanged, the same RNG state gives the same mask, and the model's own dropout is back after."""
    x = torch.ones(400_000)
    torch.manual_seed(0)
    y = fast_dropout(x, 0.1)
    dropped = float((y == 0).float().mean())
    assert dropped == pytest.approx(3277 / 32768, abs=3e-3)  # 0.100006; binomial sd 5e-4
    assert float(y.mean()) == pytest.approx(1.0, abs=3e-3)
    kept = y[y != 0]
    assert torch.all(kept == kept[0]) and float(kept[0]) == pytest.approx(32768 / (32768 - 3277))
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x, 0.1), y)
    small = torch.randn(6, 5)
    torch.manual_seed(1)
    copied = fast_dropout(small.repeat(3, 1), 0.1)
    torch.manual_seed(1)
    assert torch.equal(fast_dropout(small, 0.1, repeat=3), copied)  # `repeat` = the masks of the repeated batch
    assert torch.equal(fast_dropout(x[:7], 0.0), x[:7]) and not fast_dropout(x[:5], 1.0).any()
    torch.manual_seed(0)
    model = MLP((6,), 3, hidden=(8,), dropout=0.3)
    xs, ys = torch.randn(16, 6), torch.randint(3, (16,))
    method = STORM(num_classes=3)
    method.on_train_start(xs, ys, seed=0)
    method.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), Batch(xs, ys, torch.arange(16)))
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all("forward" not in vars(m) for m in drops)


def _splitmix64(seed, j):
    """Output j of SplitMix64 (Steele, Lea and Flood 2014) started at `seed`, in Python integers."""
    m = (1 << 64) - 1
    z = (seed + (j + 1) * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_cpu_dropout_masks_are_splitmix64_bits_and_one_stream_for_all_passes():
    """On a CPU, element e is kept iff bits 16(e mod 4) .. +14 of SplitMix64 output e // 4 are >= round(p·32768),
    the generator seeded by one 63-bit draw from torch's; with gradients the same mask multiplies; and
    `dropout_passes` is `fast_dropout(repeat=G)` split into pass 0 (with the graph) and the others, so a
    replay of pass 0 alone (the JVP's) draws pass 0's mask."""
    from noisybench.methods.storm import _random_bits, dropout_passes

    bits = np.empty(3, np.uint64)
    _random_bits(bits, np.uint64(1234567))  # the published first outputs of SplitMix64 seeded 1234567
    assert bits.tolist() == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    assert [_splitmix64(1234567, j) for j in range(3)] == bits.tolist()
    x = torch.randn(5, 7)  # 35 elements: the last 64-bit output only partly used
    torch.manual_seed(3)
    seed = int(torch.empty((), dtype=torch.int64).random_())
    drop = round(0.3 * 32768)
    keep = torch.tensor([((_splitmix64(seed, e // 4) >> (16 * (e % 4))) & 0x7FFF) >= drop for e in range(35)])
    scale = torch.tensor(32768 / (32768 - drop), dtype=torch.float32)
    want = torch.where(keep.view(5, 7), x * scale, torch.zeros(()))
    torch.manual_seed(3)
    assert torch.equal(fast_dropout(x, 0.3), want)
    xg = x.clone().requires_grad_()
    torch.manual_seed(3)
    yg = fast_dropout(xg, 0.3)
    assert torch.equal(yg.detach(), want)
    grad, = torch.autograd.grad(yg.sum(), xg)
    assert torch.equal(grad, torch.where(keep.view(5, 7), scale, torch.zeros(())))
    torch.manual_seed(4)
    ref = fast_dropout(x, 0.3, repeat=3)
    torch.manual_seed(4)
    first, rest = dropout_passes(xg, 0.3, 3)
    assert first.requires_grad and not rest.requires_grad
    assert torch.equal(first.detach(), ref[:5]) and torch.equal(rest, ref[5:])
    torch.manual_seed(4)
    assert torch.equal(fast_dropout(x, 0.3), ref[:5])


def test_pass_stats_of_separate_pass_arrays_and_memory_slot_range():
    g = torch.Generator().manual_seed(0)
    losses, logits, y = torch.rand(3, 9, generator=g), torch.randn(3, 9, 4, generator=g), torch.randint(4, (9,))
    assert np.array_equal(pass_stats(losses, logits, y), pass_stats(losses[:1], logits[:1], y, losses[1:], logits[1:]))
    with pytest.raises(ValueError, match="memory slot outside 0..2"):
        GroupMemory(num_classes=3).update(np.zeros((2, 5)), np.array([0, 3]), size=4)


@pytest.mark.parametrize("weight_norm", ["none", "weight_sum", "mass", "class_sum", "class_mass"])
def test_loss_coefficients_are_share_times_scale_times_weight(weight_norm):
    """c_m = share (M/B) s(w) w_m, whichever way it is computed (a CPU reads the scale of none/weight_sum
    on the host)."""
    from noisybench.tasks import LossTerms

    gen = torch.Generator().manual_seed(0)
    method = STORM(num_classes=3, weight_norm=weight_norm)
    M, B = 12, 10
    loss = torch.rand(M, generator=gen)
    head = torch.randint(3, (M,), generator=gen)
    terms = LossTerms(loss, torch.randn(M, 3, generator=gen), head, torch.zeros(M, dtype=torch.long),
                      torch.arange(M) % B, 0.8, torch.zeros(B))
    w = torch.rand(M, generator=gen)
    want = 0.8 * (M / B) * method._scale(w, loss, head) * w
    torch.testing.assert_close(method._coef(terms, w, B, head), want, rtol=1e-6, atol=0)


# ---- the meta-gradient is exact -------------------------------------------------------------------

def _toy_state(optim: str, weight_norm: str = "mass"):
    torch.manual_seed(0)
    model = MLP((6,), 3, hidden=(8,), dropout=0.3).double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(3, (40,))
    method = STORM(num_classes=3, weight_norm=weight_norm).double()
    method.on_train_start(x, y, seed=0)
    method.on_epoch_start(0, 1)
    opt = (torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3) if optim == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.05))
    method.train_step(model, opt, Batch(x[:12], y[:12], torch.arange(12)))  # fills memories and opt state
    method._pending = None  # (the copies below start a fresh meta step)
    return method, model, opt, (x[12:24], y[12:24], x[24:36], y[24:36])


def _meta_value(state, omega_inner, omega_meta, seeds, fixed=None, fixed_loss=None):
    """L_meta(ω) by direct evaluation with the same RNG draws as two STORM.train_step calls: the
    lookahead θ* on batch 1 with weights Ω_inner(f1), then the rescaled loss of batch 2 (the meta
    batch) at θ* with weights Ω_meta(f2). The meta features can be held at `fixed` (STORM treats
    features as constants), and so can the loss values inside the weight_norm=mass factor
    (`fixed_loss`: the factor is constant in θ*). Returns (value, features, loss values)."""
    method, model, opt, (x1, y1, x2, y2) = copy.deepcopy(state)
    method._setup(model, opt, len(y1))
    task = method._task()
    torch.manual_seed(seeds[0])
    out, h, dropped = method._run(x1)
    terms = task.loss_terms(method.base_loss, out, y1)
    slot, head = method._keys(terms)
    f = method._features(terms, h, y1, method.memory, slot, dropped)
    w = functional_call(method.rescaler, omega_inner, (f, head))
    params = [p for _, p, _ in method._params]
    g = torch.autograd.grad(method._batch_loss(terms, w.detach(), len(y1), head), params)
    with torch.no_grad():  # the model moves to θ*(w)
        for (_, p, k), gi in zip(method._params, g):
            p.copy_(lookahead(p.detach(), gi, opt.param_groups[k], opt.state.get(p, {}), method._kind))
    torch.manual_seed(seeds[1])
    out, h, dropped = method._run(x2)
    terms = task.loss_terms(method.base_loss, out, y2)
    slot, head = method._keys(terms)
    fm = method._features(terms, h, y2, method.memory, slot, dropped)  # the meta batch is a training batch
    wm = functional_call(method.rescaler, omega_meta, (fm if fixed is None else fixed, head))
    values = terms.loss.detach() if fixed_loss is None else fixed_loss
    value = terms.rest.sum() / len(y2) + method._rescaled(terms.share, values, wm, len(y2), terms.loss, head)
    return float(value.detach()), fm, terms.loss.detach()


@pytest.mark.parametrize("optim,first_order,weight_norm,directional", [
    ("sgd", False, "mass", "layers"), ("adam", False, "mass", "layers"), ("sgd", False, "none", "layers"),
    ("adam", False, "weight_sum", "layers"), ("sgd", True, "none", "layers"), ("adam", True, "weight_sum", "layers"),
    ("sgd", False, "class_sum", "layers"), ("adam", True, "class_sum", "layers"),
    ("adam", False, "class_mass", "layers"), ("sgd", False, "weight_sum", "jvp"), ("adam", False, "class_mass", "jvp"),
])
def test_meta_gradient_matches_finite_differences(optim, first_order, weight_norm, directional):
    """The Ω update that step t+1 makes for step t is the exact gradient of L_meta(θ*(ω), ω), with a_i
    from the recorded layers or from forward mode."""
    state = _toy_state(optim, weight_norm)
    seeds = (123, 456)
    method, model, opt, (x1, y1, x2, y2) = copy.deepcopy(state)
    method.first_order = first_order
    method.directional = directional
    method.meta_optimizer = torch.optim.SGD(method.rescaler.parameters(), lr=0.0)  # keep ω, read its grad
    torch.manual_seed(seeds[0])
    method.train_step(model, opt, Batch(x1, y1, torch.arange(len(y1))))
    torch.manual_seed(seeds[1])
    method.train_step(model, opt, Batch(x2, y2, torch.arange(len(y2))))
    grad = {n: p.grad.clone() for n, p in method.rescaler.named_parameters()}

    omega = {n: p.detach().clone() for n, p in state[0].rescaler.named_parameters()}
    d = {n: torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(7)) for n, p in omega.items()}
    _, fixed, fixed_loss = _meta_value(state, omega, omega, seeds)
    eps = 1e-7  # Adam's early steps are strongly curved in ω (at 1e-6 one case is 0.7 % off); float64 allows it

    def shifted(s):
        om = {n: omega[n] + s * eps * d[n] for n in omega}
        return _meta_value(state, omega if first_order else om, om, seeds, fixed, fixed_loss)[0]

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    analytic = sum(float((grad[n] * d[n]).sum()) for n in omega)
    assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_jvp_replays_pass_zero_dropout_masks():
    """The second-order term needs J·u at pass 0's masks: check against autograd double-backward."""
    state = _toy_state("sgd")
    method, model, opt, (x, y, _, _) = copy.deepcopy(state)
    u = [torch.randn_like(p) for _, p, _ in method._params]
    from noisybench.methods.storm import replay_rng, rng_state

    saved = rng_state(x.device)
    loss0 = method.base_loss(model(x), y)
    model(x)  # later draws must not disturb the replay
    ones = torch.ones_like(loss0, requires_grad=True)
    g = torch.autograd.grad((ones * loss0).sum(), [p for _, p, _ in method._params], create_graph=True)
    ref = torch.autograd.grad(g, ones, u)[0]
    primals = {n: p.detach() for n, p, _ in method._params}
    with replay_rng(x.device, saved):
        out, a = torch.func.jvp(lambda ps: method.base_loss(functional_call(model, ps, (x,)), y),
                                (primals,), (dict(zip(primals, u)),))
    torch.testing.assert_close(out, loss0.detach())
    torch.testing.assert_close(a, ref)


# ---- the cheap paths are exact ----------------------------------------------------------------------

SMALL_MODELS = {
    "mlp": (lambda: MLP((6,), 3, hidden=(8, 8), dropout=0.3), (6,)),
    "cnn1d": (lambda: CNN1D((12,), 3, channels=4, dropout=0.3), (12,)),
    "cnn28": (lambda: CNN28((1, 8, 8), 3, channels=2, hidden=8, dropout=0.3), (1, 8, 8)),
    "linear": (lambda: Linear((6,), 3, dropout=0.3), (6,)),
}


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_split_at_dropout_composes_to_the_model(name):
    make, shape = SMALL_MODELS[name]
    torch.manual_seed(0)
    model, x = make(), torch.randn(5, *shape)
    trunk, head = split_at_dropout(model)
    torch.manual_seed(1)
    full = model(x)
    torch.manual_seed(1)
    h = trunk(x)
    torch.testing.assert_close(head(h), full)  # same ops, same dropout draws
    torch.testing.assert_close(trunk(x), h)  # no dropout before the cut
    assert split_at_dropout(nn.Sequential(nn.Dropout(0.1), nn.Linear(3, 3))) is None  # no stages(): run whole


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_layer_directional_derivatives_equal_forward_mode(name):
    """a_i = <u, ∇ℓ_i> from the recorded layer inputs and output gradients of a weighted backward
    equals torch.func.jvp at pass 0's dropout masks."""
    from noisybench.methods.storm import rng_state

    make, shape = SMALL_MODELS[name]
    torch.manual_seed(0)
    model = make().double()
    x, y = torch.randn(10, *shape, dtype=torch.float64), torch.randint(3, (10,))
    method = STORM(num_classes=3).double()
    method.on_train_start(x, y, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method._setup(model, opt, len(y))
    assert method._capture is not None
    params = [p for _, p, _ in method._params]
    rng0 = rng_state(x.device)
    rec = method._capture.record()
    out = method._run(x)[0]
    method._capture.stop()
    coef = torch.rand(len(y), dtype=torch.float64) + 0.1
    rec.grad((coef * method.base_loss(out, y)).sum(), params)
    u = [torch.randn_like(p) for p in params]
    a_layers = rec.directional(dict(zip([id(p) for p in params], u)), coef)
    primals = {n: p.detach().clone() for n, p, _ in method._params}
    a_jvp = method._jvp_fn(primals, x, y, rng0)(u)
    torch.testing.assert_close(a_layers, a_jvp)


def test_batchnorm_models_use_forward_mode():
    from noisybench.methods.storm.directional import supported

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.1), nn.Linear(4, 2))
    assert not supported(model, list(model.parameters()))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 2))
    assert supported(model, list(model.parameters()))


# ---- config and runner ---------------------------------------------------------------------------

def test_storm_defaults_per_dataset(tmp_path):
    """Dialogue datasets get the per-gate-class normalisation (conf/method_dataset); others keep
    weight_sum; the command line wins."""
    assert compose_cfg(tmp_path, "method=storm").method.weight_norm == "weight_sum"
    assert compose_cfg(tmp_path, "method=storm", "dataset=synthwoz").method.weight_norm == "class_mass"
    assert compose_cfg(tmp_path, "method=storm", "dataset=multiwoz").method.weight_norm == "class_mass"
    assert compose_cfg(tmp_path, "method=storm", "dataset=synthwoz",
                       "method.weight_norm=mass").method.weight_norm == "mass"


def test_bench_script_prints_ratios_of_the_checkout_it_sits_in(tmp_path):
    """Run as a user runs it (another working directory, no PYTHONPATH): it measures the noisybench of
    its own checkout, says so, and prints a ratio per setting."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    path = root / "scripts" / "bench_storm.py"
    if not path.is_file():
        pytest.skip("scripts/ is not shipped with an installed package")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, str(path), "--epochs", "1", "--data-dir", str(tmp_path),
                        "--workload", "tiny=dataset.subset=256", "--threads", "policy"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert out.splitlines()[0].startswith(f"noisybench from {root / 'noisybench'} (revision ")
    assert out.count("ratio to CE") == 3 and "[tiny]" in out and "storm fast" in out


def test_dropout_is_switched_on_never_lowered_and_recorded(tmp_path):
    """A model whose dropout is 0 gets STORM's 0.1 in its dropout layers (recorded); a set rate stays."""
    off = run(compose_cfg(tmp_path, "method=storm", "model.dropout=0.0", "dataset.subset=64"), tmp_path / "off")
    assert off["method"]["dropout_enabled"] == {"p": 0.1, "layers": 1}
    assert off["config"]["model"]["dropout"] == 0.0
    on = run(compose_cfg(tmp_path, "method=storm", "model.dropout=0.3", "dataset.subset=64"), tmp_path / "on")
    assert on["method"]["dropout_enabled"] is None and on["config"]["model"]["dropout"] == 0.3


def test_config_errors(tmp_path):
    method = STORM(num_classes=3)
    x, y = torch.randn(8, 4), torch.randint(3, (8,))
    method.on_train_start(x, y, seed=0)
    plain = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ConfigError, match="no dropout layer"):
        method._setup(plain, torch.optim.SGD(plain.parameters(), lr=0.1), 8)
    with pytest.raises(ConfigError, match="base_loss"):
        STORM(num_classes=3, base_loss="nope")
    with pytest.raises(ConfigError, match="base_loss"):
        STORM(num_classes=3, base_loss="storm")
    with pytest.raises(ConfigError, match="first_order"):
        STORM(num_classes=3, first_order=True, meta_loss_rescaling=False)
    with pytest.raises(ConfigError):
        STORM(num_classes=3, features="grad")


def _models():
    return sorted(p.name[:-5] for p in config_files().joinpath("model").iterdir()
                  if p.name.endswith(".yaml"))


@pytest.mark.parametrize("model", _models())
def test_storm_trains_every_model_for_two_batches(tmp_path, model):
    cfg = compose_cfg(tmp_path, "method=storm", f"model={model}", "dataset.subset=64", "trainer.batch_size=32",
                      "noise.rate=0.4")
    try:
        rec = run(cfg, tmp_path / "r", progress=False)
    except ConfigError as e:
        if "does not fit" in str(e):  # a model for another task (e.g. DST)
            pytest.skip(str(e))
        raise
    assert rec["method"]["name"] == "storm" and rec["uses_clean_labels"] is False
    mm = rec["method_metrics"]
    assert set(mm) >= {"weight_auc", "mean_weight_clean", "mean_weight_corrupted"}
    assert 0 < mm["mean_weight"] < 1
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0]
    assert "weight_auc" in header


@pytest.mark.parametrize("overrides", [
    ["method.base_loss=dal"],
    ["method@method.base_loss=gce", "method.base_loss.q=0.5"],
    ["method.first_order=true", "method.meta_interval=2", "method.features=loss", "method.class_separation=false",
     "method.bn_scope=batch"],
    ["method.bn_scope=batch", "method.class_floor=0.5"],
    ["method.meta_loss_rescaling=false", "optim=adam"],
    ["method.weight_norm=mass", "optim=adam"],
    ["method.weight_norm=none", "method.lookahead=fresh_adam", "optim=adam"],
])
def test_storm_options_run(tmp_path, overrides):
    cfg = compose_cfg(tmp_path, "method=storm", "model=mlp", "dataset.subset=64", "trainer.batch_size=32",
                      "trainer.epochs=2", *overrides)
    rec = run(cfg, tmp_path / "r", progress=False)
    assert math.isfinite(rec["method_metrics"]["mean_weight"])
    if "dal" in overrides[0]:
        assert rec["method"]["base_loss"] == "dal"
        assert "q" in (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0]  # DAL's schedule is driven
    if "gce" in overrides[0]:
        assert rec["method"]["base_loss.q"] == 0.5


def test_clean_val_meta_source_is_recorded(tmp_path):
    cfg = compose_cfg(tmp_path, "method=storm", "model=mlp", "dataset.subset=64", "trainer.batch_size=32",
                      "method.meta_source=clean_val", "method.meta_loss_rescaling=false")
    rec = run(cfg, tmp_path / "r", progress=False)
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert rec["uses_clean_labels"] is True and saved["uses_clean_labels"] is True


def test_fresh_adam_lookahead_is_the_first_adam_step(tmp_path):
    """lookahead=fresh_adam: every update is Adam's first step from an empty state (public storm.py)."""
    torch.manual_seed(0)
    model = MLP((6,), 3, hidden=(8,), dropout=0.3).double()
    x, y = torch.randn(24, 6, dtype=torch.float64), torch.randint(3, (24,))
    method = STORM(num_classes=3, lookahead="fresh_adam").double()
    method.on_train_start(x, y, seed=0)
    method.on_epoch_start(0, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for i in range(2):
        before = [p.detach().clone() for p in model.parameters()]
        method.train_step(model, opt, Batch(x[12 * i:12 * (i + 1)], y[12 * i:12 * (i + 1)], torch.arange(12)))
        assert not opt.state  # the runner's optimizer never accumulates state
        for b, p in zip(before, model.parameters()):
            step = (p.detach() - b).abs()
            # first Adam step: |Δθ| = lr·|g|/(|g| + eps), i.e. lr wherever the gradient is not tiny
            assert bool((step <= 0.05 + 1e-12).all()) and float(step.max()) > 0.049
    with pytest.raises(ConfigError, match="optim=adam"):
        method2 = STORM(num_classes=3, lookahead="fresh_adam").double()
        method2.on_train_start(x, y, seed=0)
        method2.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), Batch(x[:12], y[:12], torch.arange(12)))
    with pytest.raises(ConfigError, match="weight_norm"):
        STORM(num_classes=3, weight_norm="mean")
    with pytest.raises(ConfigError, match="first_order"):
        STORM(num_classes=3, weight_norm="mass", first_order=True)


def test_weights_separate_clean_from_corrupted(tmp_path):
    """Toy problem, 40 % symmetric noise, STORM's default settings (small MLP for speed): the weights
    favour the clean samples."""
    cfg = compose_cfg(tmp_path, "method=storm", "model=mlp", "noise.rate=0.4", "trainer.epochs=8")
    rec = run(cfg, tmp_path / "r", progress=False)
    mm = rec["method_metrics"]
    assert mm["weight_auc"] > 0.5
    assert mm["mean_weight_clean"] > mm["mean_weight_corrupted"]


def test_bn_scope_group_equals_omega_called_per_group():
    """bn_scope=group: Ω's BatchNorm statistics are those of each sample's group (the public DST code
    calls Ω once per slot): the same weights as calling Ω on each group's samples alone."""
    from noisybench.methods.storm import Rescaler

    torch.manual_seed(0)
    omega = Rescaler(19, 3).double()
    omega.reset_parameters(torch.Generator().manual_seed(1))
    f = torch.randn(40, 19, dtype=torch.float64)
    head, group = torch.randint(3, (40,)), torch.randint(4, (40,))
    together = omega(f, head, group)
    for gi in range(4):
        m = group == gi
        torch.testing.assert_close(together[m], omega(f[m], head[m]))
    assert not torch.allclose(together, omega(f, head))  # pooled statistics differ


@pytest.mark.parametrize("weight_norm, alive", [("class_sum", True), ("weight_sum", True), ("none", True),
                                                ("class_mass", False), ("mass", False)])
def test_which_normalisations_keep_the_meta_loss_direct_term(weight_norm, alive):
    """The meta loss's direct term (Eq. 5, meta loss rescaling) is the ω-gradient of the rescaled loss
    with the losses held fixed. class_mass/mass keep each class's (or the batch's) loss mass exactly, so
    it is zero (rounding only); class_sum keeps each class's SAMPLE share and lets the relative weights
    inside a class follow the losses, so it is not."""
    from noisybench.methods.storm import Rescaler

    torch.manual_seed(0)
    method = STORM(num_classes=3, weight_norm=weight_norm).double()
    method.rescaler = Rescaler(19, 3).double()
    method.rescaler.reset_parameters(torch.Generator().manual_seed(1))
    f, head = torch.randn(64, 19, dtype=torch.float64), torch.randint(3, (64,))
    loss = torch.rand(64, dtype=torch.float64) * 3
    w = method.rescaler(f, head)
    objective = method._rescaled(1.0, loss, w, 64, loss, head)
    grad = torch.autograd.grad(objective, list(method.rescaler.parameters()))
    norm = float(torch.sqrt(sum((g * g).sum() for g in grad)))
    assert (norm > 1e-6) if alive else (norm < 1e-10), norm


def test_first_order_with_a_mass_normalisation_is_refused():
    for weight_norm in ("mass", "class_mass"):
        with pytest.raises(ConfigError, match="first_order=true with method.weight_norm"):
            STORM(num_classes=3, first_order=True, weight_norm=weight_norm)


@pytest.mark.parametrize("detached", [False, True])
def test_public_dst_mass_preservation_leaves_omega_without_gradient(detached):
    """A replica of the public DST code's gate loss: per slot, the rescaled gate losses are multiplied by
    s = Σℓ / Σwℓ, and the factor is NOT detached. The gate total is then Σℓ whatever w is, in the
    lookahead and in the meta loss, so Ω's meta-gradient (through θ* and through w′) vanishes up to
    rounding. With the factor detached (a constant), Ω gets a real gradient."""
    torch.manual_seed(0)
    S, B, F, K = 3, 16, 5, 4  # slots, turns, features, gate classes
    theta = torch.randn(S, F, K, dtype=torch.float64, requires_grad=True)
    omega = torch.nn.Linear(F, 1).double()
    x, y = torch.randn(S, B, F, dtype=torch.float64), torch.randint(K, (S, B))
    xm, ym = torch.randn(S, B, F, dtype=torch.float64), torch.randint(K, (S, B))

    def gate_loss(th, xs, ys):
        w = torch.sigmoid(omega(xs)).squeeze(-1)  # [S, B] weights from Ω
        ell = torch.nn.functional.cross_entropy(torch.einsum("sbf,sfk->sbk", xs, th).reshape(-1, K),
                                                ys.reshape(-1), reduction="none").view(S, B)
        factor = ell.sum(1) / (w * ell).sum(1)  # per slot: Σℓ / Σwℓ
        if detached:
            factor = factor.detach()
        return (factor[:, None] * w * ell).sum()

    g = torch.autograd.grad(gate_loss(theta, x, y), theta, create_graph=True)[0]
    theta_star = theta - 0.1 * g  # the lookahead
    meta = gate_loss(theta_star, xm, ym)
    grads = torch.autograd.grad(meta, list(omega.parameters()))
    norm = float(torch.sqrt(sum((gr * gr).sum() for gr in grads)))
    if detached:
        assert norm > 1e-3
    else:
        assert norm < 1e-10  # rounding only: the public code's Ω is not trained by its meta loss


def test_bn_scope_class_cannot_starve_a_class():
    """bn_scope=class: each Ω head's BatchNorm uses the statistics of the rows of its own class, so the
    logit z1 - z0 has mean 0 over every class present: whatever Ω's parameters, every class keeps a
    sample with w >= 0.5. With the pooled statistics (bn_scope=batch), parameters exist that send a
    whole class below 0.05 (the starvation of a class)."""
    from noisybench.methods.storm import Rescaler

    omega = Rescaler(19, 3).double()
    omega.reset_parameters(torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    f = torch.randn(60, 19, dtype=torch.float64, generator=gen)
    head = torch.arange(60) % 2 * 2  # classes 0 and 2 ...
    head[:4] = 1  # ... and a rare class 1 (4 rows), apart in feature space
    f[head == 1, 0] += 20.0
    with torch.no_grad():  # a head that separates its class's rows from the rest of the batch
        omega.w1.zero_()
        omega.w1[1, :, 0] = 1.0
        omega.w2.zero_()
        omega.w2[1, 0, :] = 5.0
    method = STORM(num_classes=3, bn_scope="class")
    with torch.no_grad():
        pooled = omega(f, head)
        per_class = omega(f, head, method._bn_group(SimpleNamespace(target=head, group=None)))
    assert float(pooled[head == 1].max()) < 0.05  # starved under pooled statistics
    for c in range(3):
        assert float(per_class[head == c].max()) >= 0.5
        with torch.no_grad():
            torch.testing.assert_close(per_class[head == c], omega(f[head == c], head[head == c]))


def test_bn_scope_class_with_a_class_absent_from_the_batch():
    """A class without any row in the batch leaves the others' statistics finite (no 0/0)."""
    from noisybench.methods.storm import Rescaler

    omega = Rescaler(19, 4).double()
    omega.reset_parameters(torch.Generator().manual_seed(1))
    f = torch.randn(12, 19, dtype=torch.float64)
    head = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2, 3, 3, 3, 3])  # class 1 absent
    w = omega(f, head, head)
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_own_head_compiled_equals_autograd(dtype):
    """bn_scope=class on a CPU: the compiled forward/backward (`_OwnHead`) gives the weights and Ω's
    gradients of autograd through `Rescaler._own_head` (one head absent, one with a single row)."""
    from noisybench.methods.storm import Rescaler

    omega = Rescaler(19, 5).to(dtype)
    omega.reset_parameters(torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    f = torch.randn(40, 19, dtype=torch.float64, generator=gen)
    head = torch.randint(3, (40,), generator=gen)
    head[7] = 4  # class 4: one row; class 3: none
    dw = torch.randn(40, dtype=dtype, generator=gen)
    w = omega(f, head, head)
    (w * dw).sum().backward()
    compiled = [p.grad.clone() for p in omega.parameters()]
    omega.zero_grad()
    ref = omega._own_head(f.to(dtype), head)
    (ref * dw).sum().backward()
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(w, ref, **tol)
    for got, want in zip(compiled, (p.grad for p in omega.parameters())):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, **tol)


def test_class_floor_lifts_a_starving_class_and_keeps_the_meta_gradient_exact():
    """class_floor=0.5: a class whose mean weight is far below the batch's is lifted to half the batch
    mean (its relative weights kept); classes above the floor are untouched. The closed-form
    w-gradient of the rescaled loss is autograd's with the lift held constant."""
    from noisybench.methods.storm import weighting

    gen = torch.Generator().manual_seed(0)
    head = torch.arange(30) % 3
    w = torch.rand(30, dtype=torch.float64, generator=gen) * 0.5 + 0.4
    w[head == 1] *= 0.01  # class 1 starves
    phi = weighting.class_boost(w, head, 3, 0.5)
    lifted = w * phi
    assert float(lifted[head == 1].mean()) == pytest.approx(0.5 * float(w.mean()))
    torch.testing.assert_close(lifted[head != 1], w[head != 1])
    torch.testing.assert_close(lifted[head == 1] / lifted[head == 1].sum(), w[head == 1] / w[head == 1].sum())
    method = STORM(num_classes=3, class_floor=0.5).double()
    loss = torch.rand(30, dtype=torch.float64, generator=gen) * 3
    wv = w.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(method._rescaled(1.0, loss, wv, 30, loss, head), wv)
    torch.testing.assert_close(method._rescaled_grad(1.0, loss, w, 30, loss, head), auto)
    with pytest.raises(ConfigError, match="class_floor"):
        STORM(num_classes=3, class_floor=1.5)
    with pytest.raises(ConfigError, match="method.class_separation=true"):
        STORM(num_classes=3, bn_scope="class", class_separation=False)


@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_sharpness_doubles_the_logit_and_keeps_the_meta_gradient_exact(floor):
    """sharpness=τ: the weights the losses get are σ(τ logit w) (a weight of 0.12 at τ = 2 becomes
    0.018, the mean weight 0.5 stays 0.5); the closed-form w-gradient of the rescaled loss is
    autograd's through the sharpening (and through a class floor held constant); τ = 1 is the paper's
    weights, untouched."""
    gen = torch.Generator().manual_seed(1)
    head = torch.arange(30) % 3
    w = torch.rand(30, dtype=torch.float64, generator=gen) * 0.98 + 0.01
    method = STORM(num_classes=3, sharpness=2.0, class_floor=floor).double()
    if floor == 0.0:
        got = method._effective(w, head)
        torch.testing.assert_close(torch.logit(got), 2.0 * torch.logit(w))
        assert float(method._effective(torch.tensor([0.5], dtype=torch.float64), head[:1])) == pytest.approx(0.5)
    loss = torch.rand(30, dtype=torch.float64, generator=gen) * 3
    wv = w.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(method._rescaled(1.0, loss, wv, 30, loss, head), wv)
    torch.testing.assert_close(method._rescaled_grad(1.0, loss, w, 30, loss, head), auto)
    paper = STORM(num_classes=3)
    assert paper._effective(w, head) is w
    with pytest.raises(ConfigError, match="method.sharpness"):
        STORM(num_classes=3, sharpness=0.5)


def test_auto_sharpness_from_the_noisy_validation_accuracy():
    """sharpness=auto: τ = 1 up to about 21 % of corrupted labels, then what takes the corrupted group's
    weight down to 0.02 in the two-group model (1.5 at η = 0.38, 2.2 at 0.55), at most 4; 1 during the
    first 10 % of the epochs, and 1 for a metric that is not an accuracy."""
    from noisybench.methods.storm import weighting

    assert weighting.auto_sharpness(0.05) == 1.0 and weighting.auto_sharpness(0.2) == 1.0
    assert weighting.auto_sharpness(0.38) == pytest.approx(1.52, abs=0.01)
    assert weighting.auto_sharpness(0.55) == pytest.approx(2.15, abs=0.01)
    assert weighting.auto_sharpness(0.95) == 4.0 and weighting.auto_sharpness(1.0) == 4.0
    method = STORM(num_classes=3, sharpness="auto")
    assert method.needs_validation_scores and method.state() == {"sharpness": 1.0}
    method.on_epoch_start(0, 20)  # warm-up: the first 2 epochs
    method.on_validation(0, 0.45, "acc")
    assert method.state()["sharpness"] == 1.0
    method.on_validation(1, 0.40, "acc")  # the best so far (0.45) counts
    assert method.state()["sharpness"] == pytest.approx(weighting.auto_sharpness(0.55))
    assert method.result_extras({}) == {"sharpness": method.state()["sharpness"],
                                        "sharpness_source": "noisy validation accuracy", "sharpness_val_best": 0.45}
    f1 = STORM(num_classes=3, sharpness="auto")
    f1.on_epoch_start(0, 20)
    for epoch in range(5):
        f1.on_validation(epoch, 0.3, "f1")
    assert f1.state()["sharpness"] == 1.0 and "not an accuracy" in f1.result_extras({})["sharpness_source"]
    fixed = STORM(num_classes=3, sharpness=2)
    assert not fixed.needs_validation_scores and "sharpness" not in fixed.state() and fixed.result_extras({}) == {}
    for bad in ("sharp", 0.5, None):
        with pytest.raises(ConfigError, match="method.sharpness"):
            STORM(num_classes=3, sharpness=bad)


@pytest.mark.parametrize("apply_to_val", [True, False])
def test_the_runner_passes_only_noisy_validation_scores_to_sharpness_auto(cli_env, tmp_path, apply_to_val):
    """The runner calls on_validation only when the validation labels are noisy: with clean validation labels
    (noise.apply_to_val=false) STORM's default sharpness=auto stays at 1 and says why; with noisy ones it reads
    τ from them (an untrained 3-epoch model at 60 % noise: τ > 1 after the first epoch)."""
    from cli_helpers import nb

    run = tmp_path / "run"
    p = nb("train", "experiment=smoke", "method=storm", "trainer.epochs=3", "noise.rate=0.6",
           f"noise.apply_to_val={str(apply_to_val).lower()}", "trainer.threads=1", f"hydra.run.dir={run}",
           env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    extras = json.loads((run / "result.json").read_text())["method_result"]
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    tau = [float(r.split(",")[header.split(",").index("sharpness")]) for r in rows]
    if apply_to_val:
        assert extras["sharpness_source"] == "noisy validation accuracy" and tau[0] == 1.0 and tau[-1] > 1.0
        assert extras["sharpness"] > 1.0  # (set after the last evaluation, for epochs that would follow)
    else:
        assert extras["sharpness_source"].startswith("off: no score on noisy validation labels")
        assert tau == [1.0, 1.0, 1.0] and extras["sharpness_val_best"] is None
