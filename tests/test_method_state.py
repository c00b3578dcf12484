"""Checkpoint/resume of methods: a run saved at a batch boundary and resumed in FRESH objects gives the
same numbers, bit for bit, as a run that never stopped (losses, model, Ω, the method's whole state).

The resume follows the runner's protocol (noisybench.methods.base): build everything anew, set
`method.task`, `on_train_start` (and `on_clean_validation`), then load the method's, the model's, the
optimizer's and the LR scheduler's state dicts and torch's RNG state; `on_epoch_start` is called again
only when the save fell between two epochs. Checkpoints go through torch.save/torch.load
(weights_only=True) to prove they serialise.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from noisybench.errors import ConfigError
from noisybench.methods.base import Batch, Builders
from noisybench.methods.ce import CrossEntropy
from noisybench.methods.coteaching import CoTeaching
from noisybench.methods.dal import DAL
from noisybench.methods.elr import ELR
from noisybench.methods.forward import ForwardCorrection
from noisybench.methods.gce import GCE
from noisybench.methods.storm import STORM
from noisybench.models.cnn1d import CNN1D
from noisybench.models.mlp import MLP

N, BS, EPOCHS, K = 52, 12, 3, 3  # 5 batches per epoch, the last one of 4 rows


def _mlp():
    return MLP((12,), K, hidden=(8, 8), dropout=0.3)


def _bn_mlp():  # BatchNorm: the layer recording does not apply, a_i comes from forward mode
    return nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, K))


def _cnn1d():
    return CNN1D((12,), K, channels=4, dropout=0.3)


class _Tied(nn.Module):
    """A module reached by two paths (as DSTConv's token embedding, reused by its value head) and a
    parameter shared by two modules."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 8)
        self.again = self.inp
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8, bias=False)
        self.b.weight = self.a.weight
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, K)

    def forward(self, x):
        h = torch.relu(self.inp(x)) * torch.tanh(self.again(0.5 * x))
        h = torch.relu(self.a(h)) + self.b(h * h)
        return self.out(self.drop(h))


OPTIMS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),  # coupled weight decay
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
}


def _seeded(make: Callable[[], nn.Module]) -> Callable[[int], nn.Module]:
    """A model built as the runner's `Builders.model`: from its own seed, the global RNG left alone."""
    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return make()
    return build


@dataclass
class Case:
    method: Callable[[], nn.Module]
    model: Callable[[], nn.Module] = _mlp
    optim: str = "sgd"
    jvp: bool = False  # STORM: a_i by forward mode even where the layer recording applies
    data: dict = field(default_factory=dict)  # filled by _data()
    task: object = None
    batch_size: int = BS


def _data(case: Case) -> dict:
    if not case.data:
        g = torch.Generator().manual_seed(3)
        x, y = torch.randn(N, 12, generator=g), torch.randint(K, (N,), generator=g)
        xv, yv = torch.randn(20, 12, generator=g), torch.randint(K, (20,), generator=g)
        perms = [torch.randperm(N, generator=g) for _ in range(EPOCHS)]
        case.data.update(x=x, y=y, xv=xv, yv=yv, perms=perms)
    return case.data


class Run:
    """Model, optimizer, LR scheduler and method, built as the runner does."""

    def __init__(self, case: Case) -> None:
        d = _data(case)
        self.case = case
        torch.manual_seed(0)
        self.model = case.model()
        self.method = case.method()
        self.method.task = case.task
        if case.jvp:
            self.method.directional = "jvp"
        self.opt = OPTIMS[case.optim](self.model.parameters())
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=1, gamma=0.5)  # lr changes per epoch
        self.method.on_train_start(d["x"], d["y"], 0)
        if self.method.needs_clean_validation:
            self.method.on_clean_validation(d["xv"], d["yv"])
        if self.method.needs_transition_matrix:  # a fixed noisy-channel matrix stands in for the realised one
            self.method.on_transition_matrix(torch.full((K, K), 0.1) + 0.7 * torch.eye(K))
        if self.method.needs_noise_rate:  # a nominal noise.rate
            self.method.on_noise_rate(0.3)
        self.method.on_model(self.model, self.opt, Builders(model=_seeded(case.model), optimizer=OPTIMS[case.optim]))
        self.losses: list[torch.Tensor] = []

    def play(self, events) -> Run:
        d, bs = self.case.data, self.case.batch_size
        for kind, epoch, i in events:
            if kind == "start":
                self.method.on_epoch_start(epoch, EPOCHS)
                self.model.train()
            elif kind == "batch":
                idx = d["perms"][epoch][i:i + bs]
                loss = self.method.train_step(self.model, self.opt, Batch(d["x"][idx], d["y"][idx], idx))
                self.losses.append(loss)
            else:
                self.sched.step()
        return self

    def save(self) -> dict:
        buf = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(), "method": self.method.state_dict(),
                    "rng": torch.get_rng_state()}, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=True)

    @classmethod
    def resume(cls, case: Case, ck: dict) -> Run:
        r = cls(case)  # fresh objects, on_train_start as for a new run
        r.method.load_state_dict(ck["method"])
        r.model.load_state_dict(ck["model"])
        r.opt.load_state_dict(ck["optimizer"])
        r.sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        return r


def _events(case: Case) -> list[tuple]:
    n = len(_data(case)["y"])
    ev = []
    for e in range(EPOCHS):
        ev += [("start", e, 0)] + [("batch", e, i) for i in range(0, n, case.batch_size)] + [("end", e, 0)]
    return ev


def _cuts(events) -> dict[str, int]:
    """Save points (events done before the save), all in or around the second epoch."""
    start1 = events.index(("start", 1, 0))
    batches1 = [k for k, ev in enumerate(events) if ev[:2] == ("batch", 1)]
    return {"end_of_epoch": start1,  # between epochs: the resumed run calls on_epoch_start(1)
            "after_epoch_start": start1 + 1,  # memories cleared, nothing trained yet in this epoch
            "mid_epoch": batches1[1] + 1,  # memories non-empty, a pending meta update
            "before_last_batch": batches1[-1]}  # the next batch is the short one


def _first_difference(a: torch.Tensor, b: torch.Tensor):
    diff = (a != b) & ~(a.isnan() & b.isnan()) if a.is_floating_point() else a != b
    i = tuple(int(j) for j in diff.nonzero()[0]) if diff.any() else "(sign of zero or NaN payload)"
    return i if isinstance(i, str) else f"{i}: {a[i].item()!r} vs {b[i].item()!r}"


def _same(a, b, where="state") -> None:
    """Bit-for-bit equality of nested state (tensors compared by their bytes, so NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        bits = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731  (a local helper)
        assert torch.equal(bits(a), bits(b)), f"{where}: differs at {_first_difference(a, b)}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def check_resume(case: Case, cuts: list[str] | None = None) -> None:
    events = _events(case)
    ref = Run(case).play(events)  # never stopped, never saved
    all_cuts = _cuts(events)
    for name in cuts or list(all_cuts):
        cut = all_cuts[name]
        ck = Run(case).play(events[:cut]).save()
        done = sum(kind == "batch" for kind, _, _ in events[:cut])
        resumed = Run.resume(case, ck).play(events[cut:])
        assert len(resumed.losses) == len(ref.losses) - done
        _same(torch.stack(ref.losses[done:]), torch.stack(resumed.losses), f"{name}: losses")
        _same(dict(ref.model.state_dict()), dict(resumed.model.state_dict()), f"{name}: model")
        _same(ref.opt.state_dict(), resumed.opt.state_dict(), f"{name}: optimizer")
        _same(dict(ref.method.state_dict()), dict(resumed.method.state_dict()), f"{name}: method")


# ---- STORM ----------------------------------------------------------------------------------------

STORM_CASES = {
    "default": Case(lambda: STORM(num_classes=K)),
    "first_order": Case(lambda: STORM(num_classes=K, first_order=True)),
    "meta_interval_2": Case(lambda: STORM(num_classes=K, meta_interval=2)),
    "clean_val": Case(lambda: STORM(num_classes=K, meta_source="clean_val")),
    "clean_val_unweighted": Case(lambda: STORM(num_classes=K, meta_source="clean_val", meta_loss_rescaling=False)),
    "unweighted_meta_loss": Case(lambda: STORM(num_classes=K, meta_loss_rescaling=False), optim="adamw"),
    "fresh_adam": Case(lambda: STORM(num_classes=K, lookahead="fresh_adam", weight_norm="none"), optim="adam"),
    "adam_coupled_wd": Case(lambda: STORM(num_classes=K), optim="adam"),
    "adamw": Case(lambda: STORM(num_classes=K, weight_norm="mass"), optim="adamw"),
    "batchnorm_jvp": Case(lambda: STORM(num_classes=K), model=_bn_mlp, optim="nesterov"),
    "forced_jvp_adam": Case(lambda: STORM(num_classes=K), optim="adam", jvp=True),
    "class_mass": Case(lambda: STORM(num_classes=K, weight_norm="class_mass")),
    "tied_weights_jvp": Case(lambda: STORM(num_classes=K), model=_Tied, jvp=True),
    "cnn1d_dal_base": Case(lambda: STORM(num_classes=K, base_loss="dal", weight_norm="class_sum"), model=_cnn1d),
    "paper_undropped_trained_pass": Case(lambda: STORM(num_classes=K, lookahead="fresh_adam", weight_norm="none",
                                                       trained_pass_dropout=False), optim="adam"),
    "loss_features_shared": Case(lambda: STORM(num_classes=K, features="loss", class_separation=False,
                                               forward_passes=2, meta_interval=3)),
}


@pytest.mark.parametrize("name", list(STORM_CASES))
def test_storm_resume_is_bit_exact(name):
    check_resume(STORM_CASES[name])


def test_storm_jvp_keeps_tied_parameters():
    """Forward mode at step t's parameters puts θ_t into every place the model uses a trained
    parameter, gives <u, ∇ℓ_i> (checked against double backward), and leaves the model's own
    parameters in place (functional_call's tie_weights once left a stand-in in DSTConv's shared
    token embedding, which then stopped training)."""
    from noisybench.methods.storm import rng_state

    torch.manual_seed(0)
    model = _Tied().double()
    x, y = torch.randn(10, 12, dtype=torch.float64), torch.randint(K, (10,))
    method = STORM(num_classes=K).double()
    method.directional = "jvp"
    method.on_train_start(x, y, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method._setup(model, opt, len(y))
    params = [p for _, p, _ in method._params]
    assert len(params) == 6  # inp (w, b), a (w, b) = b.weight, out (w, b)
    rng0 = rng_state(x.device)
    loss = method.base_loss(method._run(x)[0], y)  # pass 0 as STORM runs it (its dropout masks)
    ones = torch.ones_like(loss, requires_grad=True)
    g = torch.autograd.grad((ones * loss).sum(), params, create_graph=True)
    u = [torch.randn_like(p) for p in params]
    ref = torch.autograd.grad(g, ones, u)[0]
    a = method._jvp_fn({n: p.detach().clone() for n, p, _ in method._params}, x, y, rng0)(u)
    torch.testing.assert_close(a, ref)
    now = list(model.parameters())
    assert len(now) == len(params) and all(p is q and type(p) is nn.Parameter for p, q in zip(now, params))
    assert model.again is model.inp and model.b.weight is model.a.weight


@pytest.mark.parametrize("extra", [[], ["method.weight_norm=class_sum", "method.bn_scope=group"]])
def test_storm_dst_resume_is_bit_exact(make_cfg, extra):
    """DST (synthwoz): memories per slot, one Ω per gate class, a_i by forward mode, Adam, the dataset's
    STORM defaults (and per-class sums with Ω's BatchNorm per slot)."""
    from noisybench.config import build
    from noisybench.tasks import make_task

    cfg = make_cfg("dataset=synthwoz", "method=storm", "dataset.subset=12", "dataset.loader.num_train=30",
                   "dataset.loader.num_test=5", "trainer.batch_size=24", *extra)
    task = make_task(cfg.dataset)
    ds, _ = task.build_data(cfg)
    perms_gen = torch.Generator().manual_seed(1)
    case = Case(lambda: build(cfg.method)(num_classes=task.num_classes(ds)), task=task,
                model=lambda: task.build_model(cfg.model, ds), optim="adam", batch_size=24,
                data=dict(x=ds.x_train, y=ds.y_train,
                          perms=[torch.randperm(len(ds.y_train), generator=perms_gen) for _ in range(EPOCHS)]))
    assert Run(case).method.weight_norm == cfg.method.weight_norm
    check_resume(case, ["mid_epoch", "after_epoch_start"])


def test_storm_resumes_twice_and_state_holds_no_graph():
    """A resumed run saves again and resumes again; the saved state is plain tensors and values."""
    case = STORM_CASES["default"]
    events = _events(case)
    ref = Run(case).play(events)
    cuts = _cuts(events)
    first, second = cuts["mid_epoch"], cuts["before_last_batch"]
    ck = Run(case).play(events[:first]).save()
    extra = ck["method"]["_extra_state"]
    assert extra["pending"] is not None and extra["pending"]["second"] is not None

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            assert obj.grad_fn is None and not obj.requires_grad
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        else:
            assert obj is None or isinstance(obj, (int, float, bool, str)), type(obj)
    walk(extra)
    ck2 = Run.resume(case, ck).play(events[first:second]).save()
    done = sum(kind == "batch" for kind, _, _ in events[:second])
    last = Run.resume(case, ck2).play(events[second:])
    _same(torch.stack(ref.losses[done:]), torch.stack(last.losses))
    _same(dict(ref.method.state_dict()), dict(last.method.state_dict()))
    _same(dict(ref.model.state_dict()), dict(last.model.state_dict()))


def test_storm_load_needs_on_train_start_and_the_same_training_set():
    case = STORM_CASES["default"]
    trained = Run(case).play(_events(case)[:3]).method.state_dict()
    with pytest.raises(ConfigError, match="on_train_start"):
        STORM(num_classes=K).load_state_dict(trained)
    other = STORM(num_classes=K)
    other.on_train_start(case.data["x"][:20], case.data["y"][:20], 0)
    with pytest.raises(ConfigError, match="training samples"):
        other.load_state_dict(trained)
    STORM(num_classes=K).load_state_dict(STORM(num_classes=K).state_dict())  # before on_train_start: parameters only


# ---- loss methods -----------------------------------------------------------------------------------

LOSS_CASES = {
    "ce": Case(lambda: CrossEntropy(num_classes=K)),
    "gce": Case(lambda: GCE(num_classes=K, q=0.7), optim="nesterov"),
    "dal": Case(lambda: DAL(num_classes=K, q_start=0.6, q_end=1.5)),  # q = 0.6, 0.9, 1.2: bootstrapping in epoch 2
    "dal_hard": Case(lambda: DAL(num_classes=K, q_start=0.9, q_end=1.2, bootstrap="hard"), optim="adam"),
    "elr": Case(lambda: ELR(num_classes=K)),  # the per-sample targets [N, K] are state
    "elr_adam": Case(lambda: ELR(num_classes=K, lam=7.0, beta=0.9), optim="adam"),
    # T estimated mid epoch 1 (after 3 of its 5 batches): the cuts fall before and after the estimate
    "forward_estimated": Case(lambda: ForwardCorrection(num_classes=K, warmup_epochs=1.5)),
    "forward_oracle": Case(lambda: ForwardCorrection(num_classes=K, transition="oracle"), optim="adam"),
    # two networks: net 2, its optimizer (following the run's StepLR) and the epoch's kept counts are state;
    # forget rates 0.15, 0.3, 0.3 (tau = the nominal 0.3)
    "coteaching": Case(lambda: CoTeaching(num_classes=K, num_gradual=3)),
    "coteaching_adam": Case(lambda: CoTeaching(num_classes=K, forget_rate=0.5, num_gradual=2), optim="adam"),
    # tau estimated at the first batch of epoch 1: the cuts fall before and after the estimate
    "coteaching_estimate": Case(lambda: CoTeaching(num_classes=K, forget_rate="estimate", estimate_epoch=1),
                                model=_cnn1d),
}


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_loss_method_resume_is_bit_exact(name):
    """Mid-epoch the resumed run does not call on_epoch_start: DAL's q and λ come from its state."""
    check_resume(LOSS_CASES[name])
