"""STORM: Self-Taught On-the-fly Meta loss Rescaling (Heck et al., "Learning from Noisy Labels via
Self-Taught On-the-Fly Meta Loss Rescaling", AAAI 2025, arXiv 2412.12955; public code `storm.py`,
`modeling.py`, `utils_storm.py`).

A step method: per training batch B (noisy labels),
  1. G forward passes with dropout (pass 0 keeps the graph; passes 1..G-1 without gradients, run as
     ONE batched call on the batch repeated G-1 times: same distribution of dropout masks);
  2. the 19 per-sample features of `storm_features` (per-class memory of the last |B| samples,
     split by prediction/label agreement; cleared every epoch; the meta batches have their own);
  3. weights w_i = Ω_{ỹ_i}(f_i) ∈ (0, 1) (Eq. 6): Linear(F,F) → BN → ReLU → Linear(F,2) → BN →
     softmax, column 1; BN always on batch statistics; one Ω per class, each run on the whole batch;
  4. lookahead θ* = one step of the inner optimizer on L(θ, w) = Σ_i w_i ℓ_i(θ) / Σ_i w_i (Eq. 1;
     normalisation: see `weight_norm` below);
  5. a meta batch drawn uniformly with replacement from the noisy TRAINING split, its weights w′
     from the same Ω (meta loss rescaling, Eq. 5): L_meta = Σ_j w′_j ℓ_j(θ*) / Σ_j w′_j;
  6. Ω takes one Adam step (lr 1e-2, every step, no warm-up) on dL_meta/dω: the outer term through
     w′ plus the second-order term through θ* (as in Meta-Weight-Net; `first_order` drops it);
  7. the model takes the step of 4 (model ← θ*, as the public `storm.py` does).

Exactness and speed. θ*(w) depends on w only through g(w) = s(w) Σ_i w_i ∇ℓ_i, so

    ⟨u, g(w)⟩ = s(w) Σ_i w_i a_i,   a_i = ⟨u, ∇ℓ_i(θ)⟩,   u = (∂θ*/∂g)ᵀ ∇_θ* L_meta,

and the second-order term is the ω-gradient of s(w) Σ_i w_i a_i with a held constant;
the a_i are a Jacobian-vector product of the per-sample training losses in the
direction u (one forward-mode pass of `torch.func.jvp`, replaying pass 0's dropout masks by
restoring the RNG state), instead of a backward through a create_graph backward. This is the
exact MW-Net/`higher` meta-gradient (tests check it against finite differences), not an
approximation. g itself is then computed without a graph, and step 7 reuses it: the real update is
`optimizer.step()` with p.grad = g, which is what the lookahead replicated.

Deliberate departures from the public code:
- Lookahead = the runner's optimizer, with its persistent state (SGD momentum buffer, or Adam's
  moments and step count) read as constants, and the real update is that optimizer's step with the
  same gradient, so θ* and the new θ agree. The public code's `higher` lookahead starts from an
  empty Adam state at every step (a sign-like first Adam step, probably unintended); available as
  `lookahead=fresh_adam` (below), not the default. Supported: torch.optim.SGD (momentum, dampening, nesterov, weight decay) and Adam/AdamW.
- Loss normalisation `weight_norm` (the rescaled loss is s(w) Σ_i w_i ℓ_i, in the lookahead AND in
  the meta loss, and the meta-gradient includes ds/dw):
    weight_sum (default): s = 1/Σw, as MW-Net's PGC script. NOT the paper, which sums w ℓ unnormalised.
      Why: with a persistent optimizer the scale of w is a learning rate, and the meta loss's direct
      term d(Σ w′ℓ)/dω pushes every weight down (measured: mean weight ~0.1, mnist1d test 0.36 vs CE
      0.86). With 1/Σw only the RELATIVE weights matter; the direct term keeps its useful part,
      (ℓ_j − weighted mean)/Σw′, i.e. "down-weight the meta batch's outliers" (Eq. 5's intuition).
    none: s = 1/|B|, the paper and public storm.py (Σ w ℓ; here a mean, so the runner's learning
      rates keep their meaning; with Adam the factor is a no-op).
    mass: s = Σℓ / (Σ wℓ · |B|), our reading of the public DST code's mass preservation, with the
      losses in the factor taken as constants in θ (else L would not depend on w at all). The meta
      loss's value is then the unweighted mean, so the direct term vanishes; measured to favour the
      CORRUPTED samples on sms_spam (weight_auc 0.30), so not the default.
- `lookahead=fresh_adam` reproduces the public storm.py exactly in this respect: the lookahead is
  Adam's first step from an empty state (`higher` never sees the optimizer's state), and the model
  takes θ*; the runner's optimizer keeps no state (optim=adam required).
- `meta_interval=k` updates Ω only every k-th step (steps in between use the current Ω without a
  lookahead); `meta_source=clean_val` draws meta batches from the validation split with CLEAN labels
  (the paper's "meta learning w/ clean val." baseline when also `meta_loss_rescaling=false`); the
  run record then says `uses_clean_labels: true`.
- Ω's BN over a batch of one gives w = 0.5 instead of an error.

Other behaviour:
- Models with BatchNorm: the extra passes (and the meta passes) also update running statistics, as
  in the public code; passes 1..G-1 then run one at a time so batch statistics stay per pass.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, jvp

from noisybench.config import config_files
from noisybench.errors import ConfigError
from noisybench.methods.base import Batch, LossMethod
from noisybench.methods.storm_features import NUM_FULL, NUM_LOSS, GroupMemory, pass_stats

FEATURES = ("full", "loss")
WEIGHT_NORMS = ("mass", "none", "weight_sum")
LOOKAHEADS = ("persistent", "fresh_adam")
META_SOURCES = ("noisy_train", "clean_val")
INIT_STD = 0.02  # HF `init_weights` of the public code: Linear ~ N(0, 0.02), bias 0
BN_EPS = 1e-5  # torch BatchNorm1d default, as in the public code's Ω


def _bn(x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d(affine=False) in training mode over dim 1 of [heads, batch, features]."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + BN_EPS)


class Rescaler(nn.Module):
    """`heads` copies of Ω (Eq. 6), evaluated together on the whole batch."""

    def __init__(self, num_features: int, heads: int) -> None:
        super().__init__()
        F_ = int(num_features)
        self.w1 = nn.Parameter(torch.zeros(heads, F_, F_))
        self.b1 = nn.Parameter(torch.zeros(heads, F_))
        self.w2 = nn.Parameter(torch.zeros(heads, 2, F_))
        self.b2 = nn.Parameter(torch.zeros(heads, 2))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        for w in (self.w1, self.w2):
            w.copy_(torch.randn(w.shape, generator=generator) * INIT_STD)
        self.b1.zero_()
        self.b2.zero_()

    def all_heads(self, f: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [heads, B] weights (softmax column 1, as in the code)."""
        h = torch.relu(_bn(torch.einsum("bf,hgf->hbg", f, self.w1) + self.b1[:, None]))
        z = _bn(torch.einsum("hbf,hgf->hbg", h, self.w2) + self.b2[:, None])
        return torch.softmax(z, dim=2)[..., 1]

    def forward(self, f: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Sample i takes the output of Ω_{head[i]}."""
        return self.all_heads(f).gather(0, head[None]).squeeze(0)


# ---- the inner optimizer as a differentiable function of the gradient -------------------------

def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    if isinstance(optimizer, torch.optim.SGD):
        kind = "sgd"
    elif isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        kind = "adam"
    else:
        raise ConfigError(f"method=storm needs its lookahead to replicate the optimizer, and "
                          f"{type(optimizer).__name__} is not supported; use optim=sgd or optim=adam")
    for group in optimizer.param_groups:
        for flag in ("maximize", "amsgrad"):
            if group.get(flag):
                raise ConfigError(f"method=storm does not support optim.optimizer.{flag}=true; set it to false")
    return kind


def lookahead(p: torch.Tensor, g: torch.Tensor, group: dict, state: dict, kind: str,
              decoupled: bool = False) -> torch.Tensor:
    """θ after one step of torch's SGD/Adam(W) with gradient g, differentiable in g (state constant)."""
    lr, wd = group["lr"], group["weight_decay"]
    if kind == "sgd":
        d = g + wd * p if wd else g
        mu = group["momentum"]
        if mu:
            buf = state.get("momentum_buffer")
            buf = d if buf is None else mu * buf + (1 - group["dampening"]) * d
            d = d + mu * buf if group["nesterov"] else buf
        return p - lr * d
    beta1, beta2 = group["betas"]
    if wd and decoupled:
        p = p * (1 - lr * wd)
    elif wd:
        g = g + wd * p
    step = float(state["step"]) + 1 if "step" in state else 1.0
    m = (1 - beta1) * g if "exp_avg" not in state else beta1 * state["exp_avg"] + (1 - beta1) * g
    v = (1 - beta2) * g * g if "exp_avg_sq" not in state else beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
    pos = v > 0  # sqrt'(0) = inf would turn the zero gradients of unused units into NaN
    root = torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))
    denom = root / math.sqrt(1 - beta2 ** step) + group["eps"]
    return p - (lr / (1 - beta1 ** step)) * m / denom


@contextlib.contextmanager
def replay_rng(device: torch.device, saved: tuple):
    """Run the block with the RNG state `saved` (so dropout redraws the same masks), then restore."""
    now = rng_state(device)
    set_rng_state(device, saved)
    try:
        yield
    finally:
        set_rng_state(device, now)


def rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


# ---- the base loss: a method config from the registry --------------------------------------

def _base_loss_node(base_loss) -> dict:
    """`base_loss` is a method config node (dict with `_target_`) or the name of one (`dal`)."""
    if isinstance(base_loss, (DictConfig, dict)):
        node = OmegaConf.to_container(base_loss, resolve=True) if isinstance(base_loss, DictConfig) else dict(base_loss)
        if "_target_" not in node:
            raise ConfigError("method.base_loss must be a method config (with _target_) or the name of one, e.g. dal")
        return node
    name = str(base_loss)
    path = config_files().joinpath("method", f"{name}.yaml")
    if name == "storm" or not path.is_file():
        choices = sorted(p.name[:-5] for p in config_files().joinpath("method").iterdir()
                         if p.name.endswith(".yaml") and p.name != "storm.yaml")
        raise ConfigError(f"method.base_loss={name!r} is not a method config; use one of {', '.join(choices)}")
    return OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)


def build_base_loss(base_loss, num_classes: int) -> tuple[str, LossMethod]:
    from noisybench.config import build

    node = _base_loss_node(base_loss)
    name = str(node.get("name", node["_target_"].rsplit(".", 1)[-1]))
    loss = build(OmegaConf.create(node))(num_classes=num_classes)
    if type(loss).forward is LossMethod.forward or type(loss).train_step is not LossMethod.train_step:
        raise ConfigError(f"method.base_loss={name} is not a per-sample loss method; use ce, gce or dal")
    return name, loss


class STORM(LossMethod):
    def __init__(self, num_classes: int, base_loss="ce", forward_passes: int = 3,
                 class_separation: bool = True, first_order: bool = False, meta_interval: int = 1,
                 features: str = "full", meta_loss_rescaling: bool = True, meta_source: str = "noisy_train",
                 rescaler_lr: float = 1e-2, weight_norm: str = "weight_sum", lookahead: str = "persistent") -> None:
        super().__init__(num_classes)
        if int(forward_passes) < 1:
            raise ConfigError(f"method.forward_passes={forward_passes} must be >= 1 (the paper uses 3)")
        if int(meta_interval) < 1:
            raise ConfigError(f"method.meta_interval={meta_interval} must be >= 1 (1 = update Ω every step)")
        if features not in FEATURES:
            raise ConfigError(f"method.features={features!r} is unknown; use full (19 features) or loss")
        if meta_source not in META_SOURCES:
            raise ConfigError(f"method.meta_source={meta_source!r} is unknown; use noisy_train or clean_val")
        if not float(rescaler_lr) > 0:
            raise ConfigError(f"method.rescaler_lr={rescaler_lr} must be > 0 (the paper uses 1e-2)")
        if weight_norm not in WEIGHT_NORMS:
            raise ConfigError(f"method.weight_norm={weight_norm!r} is unknown; use {', '.join(WEIGHT_NORMS)}")
        if lookahead not in LOOKAHEADS:
            raise ConfigError(f"method.lookahead={lookahead!r} is unknown; use {' or '.join(LOOKAHEADS)}")
        if first_order and not meta_loss_rescaling:
            raise ConfigError("method.first_order=true with method.meta_loss_rescaling=false gives Ω no "
                              "gradient at all; set one of them to the other value")
        if first_order and weight_norm == "mass":
            raise ConfigError("method.first_order=true with method.weight_norm=mass gives Ω no gradient (the "
                              "mass-preserved meta loss does not depend on w'); set first_order=false")
        self.base_name, self.base_loss = build_base_loss(base_loss, num_classes)
        self.forward_passes = int(forward_passes)
        self.class_separation = bool(class_separation)
        self.first_order = bool(first_order)
        self.meta_interval = int(meta_interval)
        self.features = features
        self.meta_loss_rescaling = bool(meta_loss_rescaling)
        self.meta_source = meta_source
        self.rescaler_lr = float(rescaler_lr)
        self.weight_norm = weight_norm
        self.lookahead = lookahead
        self.needs_clean_validation = meta_source == "clean_val"
        self.rescaler = Rescaler(NUM_FULL if features == "full" else NUM_LOSS,
                                 num_classes if class_separation else 1)
        self.memory = GroupMemory(num_classes, class_separation)
        self.meta_memory = GroupMemory(num_classes, class_separation)
        self._meta_x = self._meta_y = None
        self._model_id = None
        self._steps = 0
        self._weights: torch.Tensor | None = None  # last weight of every training sample this epoch

    # ---- protocol hooks ----
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.base_loss(logits, targets)

    def on_train_start(self, x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> None:
        task = getattr(self, "task", None)
        if task is not None and not task.plain_logits:
            raise ConfigError(f"method=storm does not support {task.kind} datasets yet (the per-slot gate-loss "
                              "rescaling of the paper's DST variant is not implemented); use method=ce, gce or dal")
        # private streams derived from the training seed: Ω's init and the meta-batch draws
        s_init, s_meta = np.random.SeedSequence([int(seed), 0x5709]).generate_state(2)
        self.rescaler.reset_parameters(torch.Generator().manual_seed(int(s_init)))
        self._meta_gen = torch.Generator().manual_seed(int(s_meta))
        self.meta_optimizer = torch.optim.Adam(self.rescaler.parameters(), lr=self.rescaler_lr)
        if self.meta_source == "noisy_train":
            self._meta_x, self._meta_y = x_train, y_train
        self._weights = torch.full((len(y_train),), float("nan"), device=y_train.device)
        self.base_loss.on_train_start(x_train, y_train, seed)

    def on_clean_validation(self, x_val: torch.Tensor, y_val_clean: torch.Tensor) -> None:
        if len(y_val_clean) == 0:
            raise ConfigError("method.meta_source=clean_val needs a validation split; set dataset.val_fraction > 0")
        self._meta_x, self._meta_y = x_val, y_val_clean

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.memory.clear()
        self.meta_memory.clear()
        if self._weights is not None:
            self._weights.fill_(float("nan"))
        self.base_loss.on_epoch_start(epoch, num_epochs)

    def hparams(self) -> dict:
        return {"base_loss": self.base_name, **{f"base_loss.{k}": v for k, v in self.base_loss.hparams().items()},
                "forward_passes": self.forward_passes, "class_separation": self.class_separation,
                "first_order": self.first_order, "meta_interval": self.meta_interval,
                "features": self.features, "meta_loss_rescaling": self.meta_loss_rescaling,
                "meta_source": self.meta_source, "rescaler_lr": self.rescaler_lr,
                "weight_norm": self.weight_norm, "lookahead": self.lookahead}

    def state(self) -> dict:
        return self.base_loss.state()

    def epoch_metrics(self, corrupted: torch.Tensor) -> dict:
        """Weight diagnostics against the corruption mask (never used for training)."""
        if self._weights is None:
            return {}
        w = self._weights.cpu().numpy()  # host sync, once per epoch
        bad = corrupted.cpu().numpy().astype(bool)
        seen = ~np.isnan(w)
        w, bad = w[seen], bad[seen]
        out = {"mean_weight": float(w.mean()) if len(w) else None,
               "mean_weight_clean": float(w[~bad].mean()) if (~bad).any() else None,
               "mean_weight_corrupted": float(w[bad].mean()) if bad.any() else None,
               "weight_auc": None}
        if bad.any() and (~bad).any():
            from sklearn.metrics import roc_auc_score

            out["weight_auc"] = float(roc_auc_score(~bad, w))  # P(w_clean > w_corrupted), ties count 1/2
        return out

    # ---- the step ----
    def _setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int) -> None:
        if self._model_id == (id(model), id(optimizer)):
            return
        if self._weights is None:
            raise ConfigError("STORM.on_train_start was not called before training")
        if self.forward_passes > 1 and not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                                               for m in model.modules()):
            raise ConfigError("method=storm needs dropout in the model (its features come from "
                              f"{self.forward_passes} dropout passes); set model.dropout=0.1 or higher")
        self._kind = _optimizer_kind(optimizer)
        if self.lookahead == "fresh_adam" and self._kind != "adam":
            raise ConfigError("method.lookahead=fresh_adam replays the public code's Adam lookahead and needs "
                              "optim=adam; or use method.lookahead=persistent")
        self._decoupled = [bool(g.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)))
                           for g in optimizer.param_groups]
        names = {id(p): n for n, p in model.named_parameters()}
        self._params = [(names[id(p)], p, gi) for gi, g in enumerate(optimizer.param_groups)
                        for p in g["params"] if p.requires_grad]
        self._batched = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self._msize = int(batch_size)  # the code's msize = B: the window per class
        self._model_id = (id(model), id(optimizer))

    def _extra_logits(self, forward, x: torch.Tensor) -> torch.Tensor:
        """[G-1, B, K] logits of the extra dropout passes, without gradients."""
        n = self.forward_passes - 1
        with torch.no_grad():
            if self._batched:
                return forward(x.repeat(n, *([1] * (x.dim() - 1)))).view(n, len(x), -1)
            return torch.stack([forward(x) for _ in range(n)])

    def _weigh(self, forward, x, y, logits0, loss0, memory: GroupMemory) -> torch.Tensor:
        """Ω's weights (gradient to ω if grad mode is on) on features without gradient."""
        f = self._features(forward, x, y, logits0, loss0, memory)
        return self.rescaler(f, y if self.class_separation else torch.zeros_like(y))

    def _features(self, forward, x, y, logits0, loss0, memory: GroupMemory) -> torch.Tensor:
        with torch.no_grad():
            logits = logits0.detach()[None]
            losses = loss0.detach()[None]
            if self.forward_passes > 1:
                extra = self._extra_logits(forward, x)
                n = extra.shape[0]
                extra_loss = self.base_loss(extra.reshape(n * len(y), -1), y.repeat(n)).view(n, len(y))
                logits, losses = torch.cat([logits, extra]), torch.cat([losses, extra_loss])
            dtype = torch.float32 if x.device.type == "mps" else torch.float64
            stats = pass_stats(losses.to(dtype), logits.to(dtype), y)
            if self.features == "full":
                memory.update(stats, y, self._msize)
                f = memory.features(stats, y)
            else:
                f = torch.stack([losses[0], stats[:, 4]], dim=1)
            return f.to(self.rescaler.w1.dtype)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
        self._setup(model, optimizer, len(batch.y))
        meta = self._steps % self.meta_interval == 0
        self._steps += 1
        x, y, B = batch.x, batch.y, len(batch.y)
        rng0 = rng_state(x.device) if meta and not self.first_order else None  # pass 0's dropout masks
        logits0 = model(x)  # pass 0: the graph that trains
        loss0 = self.base_loss(logits0, y)
        with torch.set_grad_enabled(meta):
            w = self._weigh(model, x, y, logits0, loss0, self.memory)
        params = [p for _, p, _ in self._params]
        scale = self._scale(w.detach(), loss0.detach())
        g = torch.autograd.grad(scale * (w.detach() * loss0).sum(), params)  # linear in w: no graph needed
        if meta:
            self._meta_step(model, optimizer, x, y, g, w, loss0.detach(), rng0)
        self._update_model(optimizer, params, g)  # step 7
        self._weights[batch.index] = w.detach().to(self._weights.dtype)
        return loss0.detach().mean()

    def _update_model(self, optimizer, params, g) -> None:
        if self.lookahead == "persistent":  # the lookahead's update, with the optimizer's own state
            for p, gi in zip(params, g):
                p.grad = gi
            optimizer.step()
            return
        with torch.no_grad():  # fresh_adam: model <- θ*, as the public storm.py copies fθ back
            for (_, p, k), gi in zip(self._params, g):
                p.copy_(lookahead(p, gi, optimizer.param_groups[k], {}, "adam", self._decoupled[k]))
                p.grad = None
        optimizer.step()  # every grad is None: no update; only marks the step for LR schedulers

    def _scale(self, w: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """s(w) with the rescaled batch loss L = s(w) Σ_i w_i ℓ_i; `loss` holds detached values.

        none: 1/|B| (the paper's Σ w ℓ, as a mean); weight_sum: 1/Σw (MW-Net's PGC script);
        mass: Σℓ / (Σ wℓ |B|), the public DST code's mass preservation (the loss value stays the
        unweighted mean; only the RELATIVE weights matter). The factor is differentiable in w (the
        meta-gradient includes its derivative) and constant in θ, else L would not depend on w.
        """
        if self.weight_norm == "none":
            return torch.ones((), dtype=w.dtype, device=w.device) / len(w)
        if self.weight_norm == "weight_sum":
            return 1.0 / w.sum().clamp(min=1e-12)
        return loss.sum() / ((w * loss).sum().clamp(min=1e-12) * len(w))

    def _opt_state(self, optimizer, p) -> dict:
        # fresh_adam: the public code's `higher` lookahead starts every step from an EMPTY Adam state
        return optimizer.state.get(p, {}) if self.lookahead == "persistent" else {}

    def _meta_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # uniform with replacement, like the public code's WeightedRandomSampler(ones)
        idx = torch.randint(len(self._meta_y), (size,), generator=self._meta_gen).to(self._meta_y.device)
        return self._meta_x[idx], self._meta_y[idx]

    def _meta_step(self, model, optimizer, x, y, g, w, loss0, rng0) -> None:
        second = not self.first_order
        xm, ym = self._meta_batch(len(y))
        # 4. lookahead θ*(g): differentiable in g only for the second-order term
        gq = [gi.detach().requires_grad_(second) for gi in g]
        with torch.set_grad_enabled(second):
            theta = [lookahead(p.detach(), gi, optimizer.param_groups[k], self._opt_state(optimizer, p),
                               self._kind, self._decoupled[k]) for (_, p, k), gi in zip(self._params, gq)]
        star = {n: t.detach().requires_grad_(second) for (n, _, _), t in zip(self._params, theta)}

        def at_star(inp):
            return functional_call(model, star, (inp,))

        # 5. meta loss at θ* on a fresh batch, rescaled by the same Ω
        with torch.set_grad_enabled(second):
            logits_m = at_star(xm)
            loss_m = self.base_loss(logits_m, ym)
        if self.meta_loss_rescaling:
            w_m = self._weigh(at_star, xm, ym, logits_m, loss_m, self.meta_memory)
        else:
            w_m = torch.ones_like(loss_m)
        meta_loss = self._scale(w_m, loss_m.detach()) * (w_m * loss_m).sum()
        omega = list(self.rescaler.parameters())
        # 6. dL_meta/dω = outer term (through w′) + second-order term (through θ*)
        if second:
            stars = list(star.values())
            grads = torch.autograd.grad(meta_loss, stars + omega, materialize_grads=True)
            v, outer = grads[:len(stars)], grads[len(stars):]
            u = torch.autograd.grad(theta, gq, v)
            names = [n for n, _, _ in self._params]
            primals = {n: p.detach() for n, p, _ in self._params}

            def train_losses(ps):
                return self.base_loss(functional_call(model, ps, (x,)), y)

            with replay_rng(x.device, rng0):  # the same dropout masks as pass 0
                _, a = jvp(train_losses, (primals,), (dict(zip(names, u)),))
            # g(w) = s(w) Σ_i w_i ∇ℓ_i, so <u, g(w)> = s(w) Σ_i w_i a_i: its ω-gradient is the term
            inner = torch.autograd.grad(self._scale(w, loss0) * (w * a.detach()).sum(), omega)
            total = [i + o for i, o in zip(inner, outer)]
        else:
            total = torch.autograd.grad(meta_loss, omega)
        for p, gr in zip(omega, total):
            p.grad = gr
        self.meta_optimizer.step()
