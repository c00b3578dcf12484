"""STORM: Self-Taught On-the-fly Meta loss Rescaling (Heck et al., "Learning from Noisy Labels via
Self-Taught On-the-Fly Meta Loss Rescaling", AAAI 2025, arXiv 2412.12955; public code `storm.py`,
`storm_dst.py`, `modeling.py`, `utils_storm.py`).

A step method. The *samples* it weighs are the task's `LossTerms` (noisybench.tasks): the batch rows
for classification; the (turn, slot) gate decisions for dialogue state tracking (paper Eq. 8: only
the gate loss is rescaled, share α = 0.8; the value and refer losses stay unweighted). Per training
batch B (noisy labels), step t:
  1. G forward passes with dropout: pass 0 keeps the graph; passes 1..G-1 run without gradients as
     ONE batched call on the batch repeated G-1 times (same distribution of dropout masks), and only
     the part of the model after its first active dropout layer is repeated when the model declares
     its `stages()` (noisybench.models.split_at_dropout: the part before it is identical in every pass);
  2. the 19 per-sample features of `storm_features`, from a memory of the last |B| samples per
     (group, target class), split by prediction/label agreement, cleared every epoch (group = the DST
     slot: "features and memories are kept per slot"; classification has one group);
  3. weights w_m = Ω_{ỹ_m}(f_m) ∈ (0, 1) (Eq. 6): Linear(F,F) → BN → ReLU → Linear(F,2) → BN →
     softmax, column 1; BN always on batch statistics; one Ω per class (DST: per gate class, shared
     across slots), each run on the whole batch;
  4. lookahead θ* = one step of the inner optimizer on the rescaled loss
     L(w) = mean_r rest_r + share (M/B) s(w) Σ_m w_m ℓ_m  (classification: s(w) Σ_i w_i ℓ_i; Eq. 1;
     s = 1/Σw by default, see `weight_norm` below);
  5. the meta batch is a fresh batch of the noisy TRAINING data with weights w′ from the same Ω (meta
     loss rescaling, Eq. 5): L_meta = L(w′) at θ*;
  6. Ω takes one Adam step (lr 1e-2, no warm-up) on dL_meta/dω: the outer term through w′ plus the
     second-order term through θ* (as in Meta-Weight-Net; `first_order` drops it);
  7. the model takes the step of 4 (model ← θ*, as the public `storm.py` does).

How 4-6 are computed (exact, and cheap). The model really takes the lookahead step, so θ* IS the
next step's parameters, and the meta batch of step t is the training batch of step t+1 (a fresh
random batch of the noisy training data, as step 5 asks). Step t+1's pass 0 is therefore the meta
forward pass at θ*, its features and weights are the meta features and w′, and its gradient
∇θ L(w′) at θ* is ∇θ* L_meta: the meta step costs no forward or backward pass of its own. Ω is
updated at step t+1, after that step's weights (so Ω's updates land one step late). The second-order
term: θ*(w) depends on w only through g(w) = ∇θ L(w) = ... + share (M/B) s(w) Σ_m w_m ∇ℓ_m, so with
u = (∂θ*/∂g)ᵀ ∇θ* L_meta (a backward through the elementwise optimizer step),

    <u, g(w)> = share (M/B) s(w) Σ_m w_m a_m,   a_m = <u, ∇θ ℓ_m(θ_t)>,

and the term is the ω-gradient of the right-hand side with a held constant. a_m is computed from
step t's own pass: `storm_directional` records each Linear/Conv layer's input and output gradient
and gets a_m with one extra layer evaluation per layer (exact; models without BatchNorm, one sample
per row), else a forward-mode `torch.func.jvp` at step t's parameters replaying pass 0's dropout
masks (DST, BatchNorm models). Tests check the Ω gradient against finite differences of L_meta.
The pending update step t leaves for step t+1 (`_Pending`) is a plain record, not a graph: g, the
group hyperparameters and the optimizer state the lookahead reads (as values: optimizer.step() and an
LR scheduler change them before step t+1), and what a_m needs (the recorded layers' tensors, or θ_t,
the batch and pass 0's RNG state for the JVP). Step t+1 rebuilds θ*(g) from it with the same ops,
so the numbers are those of a kept graph, and a checkpoint between the two steps (`get_extra_state`,
with the memories, Ω's optimizer and the step count) resumes bit for bit.

Deliberate departures from the paper and the public code:
- Meta batch = the next training batch (without replacement within the epoch, its features from the
  training memory), Ω updated one step late (above). The public code draws an independent batch
  with replacement, keeps a separate meta memory, and updates Ω before the model step. This halves
  the passes; single runs on mnist1d at 40 % noise gave test 0.75 / 0.81 (seeds 0 / 1, 30 epochs)
  against 0.81 / 0.67 for the previous, independent-batch implementation: within seed noise.
- Lookahead = the runner's optimizer, with its persistent state (SGD momentum buffer, or Adam's
  moments and step count) read as constants, and the real update is that optimizer's step with the
  same gradient, so θ* and the new θ agree. The public code's `higher` lookahead starts from an
  empty Adam state at every step (a sign-like first Adam step, probably unintended); available as
  `lookahead=fresh_adam` (below), not the default. Supported: torch.optim.SGD (momentum,
  dampening, nesterov, weight decay) and Adam/AdamW. The public DST code makes a third
  forward/backward for the real update with the pre-update weights; here, as in `storm.py`, the
  model takes θ*.
- Loss normalisation `weight_norm` (s(w) above, in the lookahead AND in the meta loss; the
  meta-gradient includes ds/dw):
    weight_sum (default): s = 1/Σw, as MW-Net's PGC script. NOT the paper, which sums w ℓ unnormalised.
      Why: with a persistent optimizer the scale of w is a learning rate, and the meta loss's direct
      term d(Σ w′ℓ)/dω pushes every weight down (measured: mean weight ~0.1, mnist1d test 0.36 vs CE
      0.86). With 1/Σw only the RELATIVE weights matter; the direct term keeps its useful part,
      (ℓ_j − weighted mean)/Σw′, i.e. "down-weight the meta batch's outliers" (Eq. 5's intuition).
    none: s = 1/M, the paper and public storm.py (Σ w ℓ; here a mean, so the runner's learning
      rates keep their meaning; with Adam the factor is a no-op).
    mass: s = Σℓ / (Σ wℓ · M), our reading of the public DST code's mass preservation, with the
      losses in the factor taken as constants in θ (else L would not depend on w at all). The meta
      loss's value is then the unweighted mean, so the direct term vanishes; measured to favour the
      CORRUPTED samples on sms_spam (weight_auc 0.30), so not the default.
- `lookahead=fresh_adam` reproduces the public storm.py in this respect: the lookahead is Adam's
  first step from an empty state (`higher` never sees the optimizer's state), and the model takes
  θ*; the runner's optimizer keeps no state (optim=adam required).
- `meta_interval=k` updates Ω only for every k-th step (steps in between use the current Ω without a
  lookahead); `meta_source=clean_val` computes the meta loss on a batch of the validation split with
  CLEAN labels (drawn with replacement, own meta memory), at the same parameters θ* (the paper's "meta
  learning w/ clean val." baseline when also `meta_loss_rescaling=false`); the run record then says
  `uses_clean_labels: true`.
- Ω's BN over a batch of one gives w = 0.5 instead of an error.
- Dropout masks during STORM's passes (pass 0, the extra passes, the JVP's replay of pass 0) come from
  `fast_dropout`: 15 random bits per element instead of a Bernoulli draw per element (torch's CPU
  Bernoulli sampling was the largest single overhead of a small model's step). On a CPU the bits are
  SplitMix64's, seeded by one draw from torch's generator per call, and one compiled call makes the
  leading dropout layer's masks of all G passes; on other devices torch's generator of the device.
  The rate is p rounded to a multiple of 1/32768 (0.1 -> 0.100006) with the exact matching scale;
  evaluation and the other methods use torch's dropout. Results differ from the version with torch's
  masks as two dropout seeds do.
- On a CPU the per-step host work runs as compiled loops (numba, cached on disk after a run's first
  steps compile them, about 10 s once): the features and their memory (`storm_features`), the
  dropout masks, and Ω's forward and backward in float64 (`_Omega`). Other devices run Ω as tensor
  kernels; tests/test_storm.py checks both against autograd through `Rescaler._all_heads`.
- `bn_scope=batch` (default): Ω's BatchNorm statistics are over all weighted samples of the batch (DST:
  all B·S (turn, slot) gate cells). The public DST code calls Ω once per slot, so its statistics are per
  slot: `bn_scope=group`.
- `weight_norm=class_mass` (per gate class, each class keeps its unweighted loss mass Σℓ) and `mass`
  (the same over the batch) make the rescaled loss's VALUE independent of w, so the meta loss's direct
  term (meta loss rescaling, Eq. 5) is zero up to rounding; only the second-order term trains Ω.
  `class_sum` keeps each class's SAMPLE share (M_c/M) and normalises by the class's Σw: the relative
  weights inside a class follow the meta loss and both terms are alive (tests/test_storm.py). With
  `first_order=true` a mass normalisation leaves Ω no gradient at all: rejected.
- The public DST code's per-slot mass preservation factor is not detached, so its gate loss equals Σℓ
  whatever ω is, in the lookahead and in the meta loss: its Ω gets no meta-gradient beyond rounding (a
  replica in tests/test_storm.py). We do not replicate that.
- Dropout: the features need dropout passes. In a model whose dropout is 0, STORM switches its dropout
  layers on at 0.1 (the paper's rate) and records it (hparams `dropout_enabled`); a set rate is never
  lowered. `trained_pass_dropout=false` runs the trained pass without dropout (the public
  classification code drops input features only in the extra passes).

Other behaviour:
- Models with BatchNorm: the extra passes also update running statistics, as in the public code;
  passes 1..G-1 then run one at a time so batch statistics stay per pass. The JVP's replay of pass 0
  does not update them again.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from numba import njit
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, jvp

from noisybench.config import config_files
from noisybench.errors import ConfigError
from noisybench.methods.base import Batch, LossMethod
from noisybench.methods.storm_directional import Capture, directional, supported
from noisybench.methods.storm_features import NUM_FULL, NUM_LOSS, GroupMemory, host, pass_stats
from noisybench.models import has_active_dropout, leading_dropout, split_at_dropout
from noisybench.tasks import LossTerms

FEATURES = ("full", "loss")
WEIGHT_NORMS = ("class_mass", "class_sum", "mass", "none", "weight_sum")
LOOKAHEADS = ("persistent", "fresh_adam")
BN_SCOPES = ("batch", "group")
STORM_DROPOUT = 0.1  # the paper's rate, switched on in a model whose dropout is 0 (features need dropout passes)
META_SOURCES = ("noisy_train", "clean_val")
INIT_STD = 0.02  # HF `init_weights` of the public code: Linear ~ N(0, 0.02), bias 0
BN_EPS = 1e-5  # torch BatchNorm1d default, as in the public code's Ω


def _bn(x: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
    """BatchNorm1d(affine=False) in training mode over the rows of [batch, columns]; with `group`
    ([batch] ids), the statistics are those of each sample's group (the public DST code calls Ω once
    per slot, so its batch statistics are per slot). A batch (or group) of one normalises to 0."""
    if group is None:
        if len(x) <= 1:
            return x - x  # (torch's batch_norm refuses one row; keeps the graph, gradient 0)
        return torch.nn.functional.batch_norm(x, None, None, training=True, eps=BN_EPS)  # one fused op each way
    # group sums as a matrix product with the one-hot membership (deterministic, unlike index_add_)
    onehot = torch.nn.functional.one_hot(group, int(group.max()) + 1 if len(group) else 1).to(x.dtype)  # [B, n]
    count = onehot.sum(0)[:, None]
    mean = onehot.t() @ x / count
    centred = x - onehot @ mean
    var = onehot.t() @ (centred * centred) / count
    return centred * torch.rsqrt(onehot @ var + BN_EPS)


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

    def all_heads(self, f: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
        """[B, S, F] (S independent batches of B samples) -> [B, S, heads] weights (softmax column 1,
        as in the code); BN statistics per batch and head, or per `group` ([B]) when given. Always
        float32 (or float64): autocast (bf16 runs) is off here."""
        with torch.autocast(f.device.type, enabled=False):
            return self._all_heads(f if f.dtype == self.w1.dtype else f.to(self.w1.dtype), group)

    def _all_heads(self, f: torch.Tensor, group: torch.Tensor | None) -> torch.Tensor:
        # laid out [B, (batch, head, unit)] so that each BN is ONE batch_norm over rows: the first layer
        # of every head is one matrix product, the second a product batched over heads
        B, S, F_ = f.shape
        H = self.w1.shape[0]
        x = torch.addmm(self.b1.reshape(-1), f.reshape(B * S, F_), self.w1.reshape(H * F_, F_).t())
        x = torch.relu(_bn(x.view(B, S * H * F_), group))
        z = torch.einsum("nhf,hof->nho", x.view(B * S, H, F_), self.w2) + self.b2
        z = _bn(z.reshape(B, S * H * 2), group).view(B, S, H, 2)
        return torch.sigmoid(z[..., 1] - z[..., 0])  # = softmax(z)[..., 1], the code's column 1

    def _picked(self, f: torch.Tensor, head: torch.Tensor, group: torch.Tensor | None) -> torch.Tensor:
        """[B, S, F] features and [B, S] heads -> [B, S] weights, each sample's own head's output."""
        if group is None and len(f) > 1:  # the pooled BatchNorm: Ω's forward and backward written out
            if f.device.type == "cpu" and _Omega.compiled and not torch.is_grad_enabled() and not _in_transform():
                return _Omega._forward_host(None, f, head, self.w1, self.b1, self.w2, self.b2)  # (no graph)
            if not torch.is_autocast_enabled(f.device.type):
                return _Omega.apply(f, head, self.w1, self.b1, self.w2, self.b2)
            with torch.autocast(f.device.type, enabled=False):
                return _Omega.apply(f, head, self.w1, self.b1, self.w2, self.b2)
        return self.all_heads(f, group).gather(2, head[..., None]).squeeze(2)

    def forward(self, f: torch.Tensor, head: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
        """Sample i takes the output of Ω_{head[i]}."""
        return self.many([(f, head, group)])[0]

    def many(self, batches: list[tuple]) -> list[torch.Tensor]:
        """`forward` for several (f, head, group) batches, in ONE evaluation when they have the same
        size and pooled statistics (each keeps its own BN statistics)."""
        if len({len(f) for f, _, _ in batches}) > 1 or (len(batches) > 1 and any(g is not None for _, _, g in batches)):
            return [self(f, head, g) for f, head, g in batches]
        if len(batches) == 1:  # (views, no copies)
            f, head, group = batches[0]
            return [self._picked(f[:, None], head[:, None], group)[:, 0]]
        f = torch.stack([f for f, _, _ in batches], 1)  # [B, S, F]
        head = torch.stack([h for _, h, _ in batches], 1)  # [B, S]
        return list(self._picked(f, head, batches[0][2]).unbind(1))


@njit(cache=True, nogil=True)
def _bn_stats(v, mean, rstd, eps):
    """Batch statistics of the columns of v [B, C] (training-mode BatchNorm: biased variance)."""
    B, C = v.shape
    mean[:] = 0.0
    var = np.zeros(C)
    for b in range(B):
        for c in range(C):
            mean[c] += v[b, c]
    for c in range(C):
        mean[c] /= B
    for b in range(B):
        for c in range(C):
            var[c] += (v[b, c] - mean[c]) ** 2
    for c in range(C):
        rstd[c] = 1.0 / math.sqrt(var[c] / B + eps)


@njit(cache=True, nogil=True)
def _bn_backward(dy, v, mean, rstd):
    """In place: dy [B, C] -> the gradient at the BatchNorm's input v, (dy - mean(dy) - x̂ mean(dy x̂)) rstd."""
    B, C = dy.shape
    m1, m2 = np.zeros(C), np.zeros(C)
    for b in range(B):
        for c in range(C):
            m1[c] += dy[b, c]
            m2[c] += dy[b, c] * (v[b, c] - mean[c]) * rstd[c]
    for b in range(B):
        for c in range(C):
            dy[b, c] = (dy[b, c] - m1[c] / B - (v[b, c] - mean[c]) * rstd[c] * m2[c] / B) * rstd[c]


@njit(cache=True, nogil=True)
def _omega_layers(f, w1, w2):
    """f [B, S, F] as float64 rows [B·S, F] (cast to w1's dtype first, as the module does); w1 as
    [F, (h, j)] (w1[h, j, k] at [k, (h, j)]); the second layers as one block-diagonal [(h, j), (h, o)]."""
    B, S, F = f.shape
    H = w1.shape[0]
    fc = np.empty((B * S, F))
    for b in range(B):
        for s in range(S):
            for k in range(F):
                fc[b * S + s, k] = np.float64(w1.dtype.type(f[b, s, k]))
    wt = np.empty((F, H * F))
    w2bd = np.zeros((H * F, H * 2))
    for h in range(H):
        for j in range(F):
            for k in range(F):
                wt[k, h * F + j] = w1[h, j, k]
            for o in range(2):
                w2bd[h * F + j, h * 2 + o] = w2[h, o, j]
    return fc, wt, w2bd


@njit(cache=True, nogil=True)
def _omega_forward(f, head, w1, b1, w2, b2, eps):
    """`_Omega.forward` on the host, in float64: f [B, S, F], head [B, S] -> w [B, S] (in w1's dtype) and
    what the backward needs: x, a [B, S·H·F], z [B, S·H·2], the BN statistics, w in float64 (the
    products in BLAS, as the tensor kernels)."""
    B, S, F = f.shape
    H = w1.shape[0]
    n = S * H * F
    mean1, rstd1, mean2, rstd2 = np.empty(n), np.empty(n), np.empty(S * H * 2), np.empty(S * H * 2)
    a, w, out = np.empty((B, n)), np.empty((B, S)), np.empty((B, S), w1.dtype)
    fc, wt, w2bd = _omega_layers(f, w1, w2)
    xs = fc @ wt
    x = xs.reshape(B, n)
    for r in range(B * S):
        for h in range(H):
            for j in range(F):
                xs[r, h * F + j] += b1[h, j]
    _bn_stats(x, mean1, rstd1, eps)
    for b in range(B):
        for c in range(x.shape[1]):
            a[b, c] = max((x[b, c] - mean1[c]) * rstd1[c], 0.0)
    zs = a.reshape(B * S, H * F) @ w2bd
    z = zs.reshape(B, S * H * 2)
    for r in range(B * S):
        for h in range(H):
            for o in range(2):
                zs[r, h * 2 + o] += b2[h, o]
    _bn_stats(z, mean2, rstd2, eps)
    for b in range(B):
        for s in range(S):
            c = (s * H + head[b, s]) * 2
            d = (z[b, c + 1] - mean2[c + 1]) * rstd2[c + 1] - (z[b, c] - mean2[c]) * rstd2[c]
            w[b, s] = 1.0 / (1.0 + math.exp(-d))  # softmax(z)[1]
            out[b, s] = w[b, s]
    return out, (x, mean1, rstd1, a, z, mean2, rstd2, w)


@njit(cache=True, nogil=True)
def _omega_backward(dw, f, head, w1, w2, x, mean1, rstd1, a, z, mean2, rstd2, w):
    """`_Omega.backward` on the host (float64): the ω-gradients of Σ dw·w (in the weights' dtypes)."""
    B, S, F = f.shape
    H = w2.shape[0]
    dw1, db1 = np.empty((H, F, F), w1.dtype), np.empty((H, F), w1.dtype)
    dw2, db2 = np.empty((H, 2, F), w2.dtype), np.empty((H, 2), w2.dtype)
    fc, _, w2bd = _omega_layers(f, w1, w2)
    dz = np.zeros((B, S * H * 2))
    for b in range(B):
        for s in range(S):
            c = (s * H + head[b, s]) * 2
            g = dw[b, s] * w[b, s] * (1.0 - w[b, s])  # d sigmoid; only each sample's own head receives it
            dz[b, c], dz[b, c + 1] = -g, g
    _bn_backward(dz, z, mean2, rstd2)
    dzs, as_ = dz.reshape(B * S, H * 2), a.reshape(B * S, H * F)
    g2 = as_.T @ dzs  # [(h, j), (h', o)]: the diagonal blocks h = h' are w2's gradient
    dx = (dzs @ w2bd.T).reshape(B, S * H * F)
    for b in range(B):
        for c in range(dx.shape[1]):
            if a[b, c] <= 0:  # relu's backward
                dx[b, c] = 0.0
    _bn_backward(dx, x, mean1, rstd1)
    dxs = dx.reshape(B * S, H * F)
    g1t = fc.T @ dxs  # [k, (h, j)]
    for h in range(H):
        for o in range(2):
            t = 0.0
            for r in range(B * S):
                t += dzs[r, h * 2 + o]
            db2[h, o] = t
            for j in range(F):
                dw2[h, o, j] = g2[h * F + j, h * 2 + o]
        for j in range(F):
            t = 0.0
            for r in range(B * S):
                t += dxs[r, h * F + j]
            db1[h, j] = t
            for k in range(F):
                dw1[h, j, k] = g1t[k, h * F + j]
    return dw1, db1, dw2, db2


class _Omega(torch.autograd.Function):
    """`Rescaler._all_heads` with pooled BatchNorm, then each sample's own head, as one autograd node:
    the forward and the backward written out (Ω's backward through autograd, op by op, cost more than
    three times its forward on a small batch). On a CPU both run as compiled loops in float64
    (`_omega_forward`, `_omega_backward`; one call each: Ω's ~20 small tensor operations were a large
    share of STORM's fixed cost per step); elsewhere as a few large tensor kernels. tests/test_storm.py
    checks both against autograd through `_all_heads`. The features get no gradient (they are data)."""

    compiled = True  # the host loops on a CPU (tests switch them off to check the tensor kernels there)

    @staticmethod
    def forward(ctx, f, head, w1, b1, w2, b2):
        ctx.host = None
        if f.device.type == "cpu" and _Omega.compiled and not _in_transform():
            return _Omega._forward_host(ctx, f, head, w1, b1, w2, b2)
        f = f.to(w1.dtype)  # (features in float64 from the host: Ω's dtype)
        B, S, F_ = f.shape
        H = w1.shape[0]
        x = torch.addmm(b1.reshape(-1), f.reshape(B * S, F_), w1.reshape(H * F_, F_).t()).view(B, S * H * F_)
        xn, mean1, rstd1 = torch.native_batch_norm(x, None, None, None, None, True, 0.0, BN_EPS)
        a = torch.relu(xn)  # [B, (S, H, F)]
        # the second layers of all heads as ONE product with a block-diagonal [(H, F), (H, 2)] matrix (a few
        # more multiplications by zero than a batched product, and no transposed copies either way)
        eye = torch.eye(H, dtype=w2.dtype, device=w2.device)
        w2bd = (w2.transpose(1, 2)[:, :, None, :] * eye[:, None, :, None]).reshape(H * F_, H * 2)
        z = torch.addmm(b2.reshape(-1), a.view(B * S, H * F_), w2bd).view(B, S * H * 2)
        zn, mean2, rstd2 = torch.native_batch_norm(z, None, None, None, None, True, 0.0, BN_EPS)
        zn = zn.view(B, S, H, 2)
        w_all = torch.sigmoid(zn[..., 1] - zn[..., 0])  # [B, S, H]
        w = w_all.gather(2, head[..., None]).squeeze(2)
        ctx.save_for_backward(f, head, w1, w2bd, x, mean1, rstd1, a, z, mean2, rstd2, w)
        return w

    @staticmethod
    def _forward_host(ctx, f, head, w1, b1, w2, b2):
        ours = [f.detach().contiguous().numpy(), head.detach().contiguous().numpy(),
                *(t.detach().numpy() for t in (w1, b1, w2, b2))]  # (parameters: contiguous)
        w, saved = _omega_forward(*ours, BN_EPS)
        if ctx is not None:  # (the values backward needs, Ω's weights as they are now: its optimizer updates
            # them in place later)
            ctx.host = (ours[0], ours[1], ours[2].copy(), ours[4].copy(), *saved)
        return torch.from_numpy(w)

    @staticmethod
    def backward(ctx, dw):
        if ctx.host is not None:
            grads = _omega_backward(dw.detach().contiguous().numpy(), *ctx.host)
            return (None, None, *(torch.from_numpy(g) for g in grads))
        f, head, w1, w2bd, x, mean1, rstd1, a, z, mean2, rstd2, w = ctx.saved_tensors
        B, S, F_ = f.shape
        H = w1.shape[0]
        grad = lambda dy, inp, mean, rstd: torch.ops.aten.native_batch_norm_backward(  # noqa: E731
            dy, inp, None, None, None, mean, rstd, True, BN_EPS, [True, False, False])[0]
        s = dw * w * (1 - w)  # d sigmoid; only each sample's own head receives it
        d1 = torch.zeros(B, S, H, dtype=w.dtype, device=w.device).scatter_(2, head[..., None], s[..., None])
        dzn = torch.stack([-d1, d1], dim=3).view(B, S * H * 2)
        dz = grad(dzn, z, mean2, rstd2).view(B * S, H * 2)
        a2 = a.view(B * S, H * F_)
        # the block-diagonal product's weight gradient, of which the diagonal blocks are w2's
        dw2 = (a2.t() @ dz).view(H, F_, H, 2).diagonal(dim1=0, dim2=2).permute(2, 1, 0).contiguous()  # [H, 2, F]
        db2 = dz.sum(0).view(H, 2)
        da = (dz @ w2bd.t()).view(B, S * H * F_)
        dxn = torch.ops.aten.threshold_backward(da, a, 0)  # relu's backward
        dx = grad(dxn, x, mean1, rstd1).view(B * S, H * F_)
        dw1 = (dx.t() @ f.reshape(B * S, F_)).view(H, F_, F_)
        db1 = dx.sum(0).view(H, F_)
        return None, None, dw1, db1, dw2, db2


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


def sgd_lookahead_vjp(vs: list, group: dict, has_buffer: bool) -> list:
    """`lookahead_vjp` for SGD on several tensors of one parameter group whose state has (or lacks) a
    momentum buffer alike, in foreach operations: u = -lr v, times the momentum terms' derivative."""
    us = torch._foreach_mul(vs, -group["lr"])  # d(p - lr d)/dd; = -v * lr exactly (the sign is exact)
    if group["momentum"]:
        scale = (1 - group["dampening"]) if has_buffer else 1.0  # buf = mu buf + (1-damp) d, or d
        if group["nesterov"]:  # d + mu buf
            us = torch._foreach_add(us, torch._foreach_mul(torch._foreach_mul(us, group["momentum"]), scale))
        elif scale != 1.0:
            torch._foreach_mul_(us, scale)
    return us


def lookahead_vjp(p, g: torch.Tensor, v: torch.Tensor, group: dict, state: dict, kind: str) -> torch.Tensor:
    """(∂θ*/∂g)ᵀ v for θ* = `lookahead`(p, g, ...): the derivative is elementwise, so this is
    v ⊙ ∂θ*/∂g in closed form (same numbers as autograd through `lookahead` up to rounding; for
    SGD the same products in the same order, so bit for bit). `p` only matters for Adam's coupled
    weight decay (g + wd p); decoupled decay does not involve g."""
    lr = group["lr"]
    if kind == "sgd":
        return sgd_lookahead_vjp([v], group, "momentum_buffer" in state)[0]
    beta1, beta2 = group["betas"]
    if group["weight_decay"] and not group.get("decoupled", False):
        g = g + group["weight_decay"] * p
    step = float(state["step"]) + 1 if "step" in state else 1.0
    m = (1 - beta1) * g if "exp_avg" not in state else beta1 * state["exp_avg"] + (1 - beta1) * g
    sq = (1 - beta2) * g * g if "exp_avg_sq" not in state else beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
    pos = sq > 0  # where v = 0, sqrt is taken as constant 0 (as `lookahead` does)
    root = torch.where(pos, sq, torch.ones_like(sq)).sqrt()
    c2 = math.sqrt(1 - beta2 ** step)
    denom = torch.where(pos, root, torch.zeros_like(root)) / c2 + group["eps"]
    # θ* = p - a m / denom, a = lr / (1 - β1^t): dθ*/dg = -a ((1-β1)/denom - m/denom² · ddenom/dg),
    # ddenom/dg = (1-β2) g / (root c2) where v > 0
    droot = torch.where(pos, (1 - beta2) * g / root, torch.zeros_like(root)) / c2
    a = lr / (1 - beta1 ** step)
    return -a * v * ((1 - beta1) - m * droot / denom) / denom


MASK_LEVELS = 1 << 15  # dropout keep/drop decisions from 15 random bits: p is rounded to a multiple of 1/32768
_U = np.uint64
_GOLDEN, _MIX1, _MIX2 = _U(0x9E3779B97F4A7C15), _U(0xBF58476D1CE4E5B9), _U(0x94D049BB133111EB)


@njit(cache=True, nogil=True)
def _splitmix64(seed, j):
    """The j-th output of SplitMix64 (Steele et al., 2014) started at `seed`: 64 random bits."""
    z = seed + (_U(j) + _U(1)) * _GOLDEN
    z = (z ^ (z >> _U(30))) * _MIX1
    z = (z ^ (z >> _U(27))) * _MIX2
    return z ^ (z >> _U(31))


@njit(cache=True, nogil=True)
def _random_bits(bits, seed):
    for j in range(len(bits)):
        bits[j] = _splitmix64(seed, j)


@njit(cache=True, nogil=True)
def _keep_scaled(x, r, out, drop, scale):
    for i in range(len(out)):  # (written so that the compiler vectorises it)
        out[i] = x[i] * scale if r[i] & np.uint16(MASK_LEVELS - 1) >= drop else 0


@njit(cache=True, nogil=True)
def _keep_mask(r, out, drop, scale):
    for i in range(len(out)):
        out[i] = scale if r[i] & np.uint16(MASK_LEVELS - 1) >= drop else 0


@njit(cache=True, nogil=True)
def _dropout_cpu(x, out, seed, drop, scale, masked):
    """out[r·m + i] = x[i]·scale where element r·m + i is kept, else 0, for r < len(out) / m (m = len(x));
    the first `masked` elements (whole blocks of m) get the mask itself (scale or 0) instead. Element e
    is kept when bits 16(e mod 4) .. +14 of SplitMix64 output e // 4 (little-endian 16-bit words) are
    >= `drop`: four elements per 64-bit output."""
    n, m = len(out), len(x)
    bits = np.empty((n + 3) // 4, np.uint64)
    _random_bits(bits, seed)
    r = bits.view(np.uint16)
    d = np.uint16(drop)
    for b in range(0, n, m):
        if b < masked:
            _keep_mask(r[b:b + m], out[b:b + m], d, scale)
        else:
            _keep_scaled(x, r[b:b + m], out[b:b + m], d, scale)


def _cpu_masks(x: torch.Tensor, drop: int, n: int) -> tuple:
    """What `_dropout_cpu` takes besides x: an output buffer of n elements (numpy-allocated: usable inside
    torch.func transforms too), the seed (one draw from torch's CPU generator) and the scale."""
    dtype = np.float64 if x.dtype == torch.float64 else np.float32
    seed = _U(int(torch.empty((), dtype=torch.int64).random_()))
    return np.empty(n, dtype), seed, _U(drop), _mask_scale(drop, x.dtype)


def dropout_passes(x: torch.Tensor, p: float, passes: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`fast_dropout(x, p, repeat=passes)` split into the first pass, x times its mask (with x's graph), and
    the other passes' outputs [(passes-1)·len(x), ...] (without gradients): the same masks and numbers,
    one seed and one compiled call. On a CPU, outside torch.func transforms, for float32/64 x; else None."""
    drop = round(float(p) * MASK_LEVELS)
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or not x.dim() or drop >= MASK_LEVELS
            or _in_transform()):
        return None
    m = x.numel()
    out, *args = _cpu_masks(x, drop, m * passes)
    _dropout_cpu(x.detach().contiguous().view(-1).numpy(), out, *args, m)
    out = torch.from_numpy(out)
    return x * out[:m].view(x.shape), out[m:].view(-1, *x.shape[1:])


@functools.lru_cache(maxsize=None)
def _mask_scale(drop: int, dtype: torch.dtype):
    """1/(1-p) of the rounded rate, rounded to `dtype` (as a float32 or float64 numpy scalar)."""
    value = torch.tensor(MASK_LEVELS / (MASK_LEVELS - drop), dtype=dtype).item()
    return np.float64(value) if dtype == torch.float64 else np.float32(value)


def _in_transform() -> bool:
    """Inside a torch.func transform (jvp, vmap, grad), whose tensors have no storage numpy can read."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is None or peek() is not None


def fast_dropout(x: torch.Tensor, p: float, repeat: int = 1) -> torch.Tensor:
    """Inverted dropout like F.dropout, with cheaper masks: 15 random bits per element instead of a
    Bernoulli draw. The rate is p rounded to a multiple of 1/32768 (0.1 -> 0.100006); kept values are
    scaled by the exact 1/(1-p) of that rate (in x's dtype), so expectations are unchanged. `repeat=n`
    gives `fast_dropout(x.repeat(n, 1, ...))` (the same masks and numbers) without the copy of x.

    On a CPU: one compiled pass (`_dropout_cpu`, SplitMix64 from a 63-bit seed drawn from torch's CPU
    generator; without gradients it writes the output directly, with them it writes the mask that
    autograd multiplies by). Elsewhere: torch's generator of x's device, one 31-bit integer per two
    elements. Either way the masks follow torch's default generator, so `replay_rng` replays them."""
    drop = round(float(p) * MASK_LEVELS)
    if drop >= MASK_LEVELS:
        return (x * 0.0).repeat(repeat, *([1] * (x.dim() - 1))) if repeat > 1 else x * 0.0
    n = x.numel() * repeat
    shape = (repeat * x.shape[0], *x.shape[1:]) if x.dim() else x.shape
    if x.device.type == "cpu":
        out, *args = _cpu_masks(x, drop, n)
        if x.dtype in (torch.float32, torch.float64) and x.is_contiguous() and not _in_transform() \
                and not (torch.is_grad_enabled() and x.requires_grad):
            _dropout_cpu(x.detach().view(-1).numpy(), out, *args, 0)
            return torch.from_numpy(out).view(shape)
        _dropout_cpu(out[:max(1, x.numel())], out, *args, n)  # (the mask only: x is not read)
        scaled = torch.from_numpy(out)
        scaled = scaled if scaled.dtype == x.dtype else scaled.to(x.dtype)
    else:
        bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_()  # uniform in [0, 2^31)
        # the mask as 1/(1-p) or 0 in x's dtype (a comparison written straight into a float tensor: a bool
        # mask, and x times a bool mask, are both slower)
        scaled = torch.ge(bits.view(torch.int16)[:n] & (MASK_LEVELS - 1), drop,
                          out=torch.empty(n, dtype=x.dtype, device=x.device))
        scaled = scaled.mul_(MASK_LEVELS / (MASK_LEVELS - drop))
    if repeat == 1:
        return x * scaled.view(x.shape)
    return (x * scaled.view(repeat, *x.shape)).view(shape)


@torch.no_grad()
def adam_step(optimizer: torch.optim.Adam) -> None:
    """`optimizer.step()` for Ω's fused Adam (no weight decay, amsgrad or maximize), without torch.optim's
    per-call machinery (hooks, state checks, grouping by device), which costs more than the arithmetic
    for Ω's four small tensors: the two kernels of torch's `_fused_adam` (the step count, then the fused
    update), on the optimizer's own state (so `state_dict()` and checkpoints are unchanged);
    tests/test_storm.py checks it is bit for bit `optimizer.step()` of `torch.optim.Adam(fused=True)`."""
    group = optimizer.param_groups[0]
    params = [p for p in group["params"] if p.grad is not None]
    plain = (type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1 and params
             and group.get("fused") and not torch.is_tensor(group["lr"])
             and not any(group.get(k) for k in ("weight_decay", "amsgrad", "maximize", "capturable", "differentiable",
                                                "decoupled_weight_decay")))
    states = [optimizer.state.get(p, {}) for p in params]
    if not plain or any("step" not in st or st["step"].device != p.device for p, st in zip(params, states)):
        optimizer.step()  # (the first step creates the state; a state loaded for another kernel stays as it is)
        return
    steps = [st["step"] for st in states]
    beta1, beta2 = group["betas"]
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(params, [p.grad for p in params], [st["exp_avg"] for st in states],
                       [st["exp_avg_sq"] for st in states], [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                       beta2=beta2, weight_decay=0.0, eps=group["eps"], maximize=False)


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


def _grad(loss: torch.Tensor, params: list, retain_graph: bool = False) -> list:
    """∇ loss per parameter; None for a parameter the loss does not use (as .backward() leaves it)."""
    return list(torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True))


# the group hyperparameters `lookahead` reads, per optimizer kind
HYPERPARAMETERS = {"sgd": ("lr", "weight_decay", "momentum", "dampening", "nesterov"),
                   "adam": ("lr", "weight_decay", "betas", "eps")}


class _Pending(NamedTuple):
    """What step t leaves for the meta-gradient that step t+1 completes (step t+1's batch is the meta
    batch and its parameters are θ*). Plain tensors and values -- no autograd graph, no closure, no
    reference to the model -- so a checkpoint can hold it (`get_extra_state` saves it as a dict)."""
    f: torch.Tensor  # [M, F] step t's features
    head: torch.Tensor  # [M] the Ω head of each sample
    loss: torch.Tensor  # [M] step t's sample losses (values; the `mass` factor uses them)
    share: float  # the samples' share in the row loss
    rows: int  # B, step t's batch rows
    second: dict | None  # the second-order term's inputs (see `_prepare`); None = first order
    group: torch.Tensor | None = None  # [M] each sample's group, for bn_scope=group (None: batch)


def _to(obj, device: torch.device):
    """Tensors of nested dicts/lists/tuples onto `device`; RNG states (key `rng0`) stay on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: v if k == "rng0" else _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


class STORM(LossMethod):
    def __init__(self, num_classes: int, base_loss="ce", forward_passes: int = 3,
                 class_separation: bool = True, first_order: bool = False, meta_interval: int = 1,
                 features: str = "full", meta_loss_rescaling: bool = True, meta_source: str = "noisy_train",
                 rescaler_lr: float = 1e-2, weight_norm: str = "weight_sum", lookahead: str = "persistent",
                 bn_scope: str = "batch", trained_pass_dropout: bool = True) -> None:
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
        if bn_scope not in BN_SCOPES:
            raise ConfigError(f"method.bn_scope={bn_scope!r} is unknown; use batch (Ω's BatchNorm over the whole "
                              "batch) or group (per DST slot, as the public DST code calls Ω per slot)")
        if first_order and weight_norm in ("mass", "class_mass"):
            raise ConfigError(f"method.first_order=true with method.weight_norm={weight_norm} gives Ω no gradient "
                              "(the mass-preserved meta loss does not depend on w'); set method.first_order=false "
                              "or method.weight_norm=class_sum")
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
        self.bn_scope = bn_scope
        self.trained_pass_dropout = bool(trained_pass_dropout)
        self.dropout_enabled: dict | None = None  # set when STORM switched the model's dropout on
        self.needs_clean_validation = meta_source == "clean_val"
        self.rescaler = Rescaler(NUM_FULL if features == "full" else NUM_LOSS,
                                 num_classes if class_separation else 1)
        self.memory = self.meta_memory = None
        self._meta_x = self._meta_y = None
        self._model_id = None
        self._steps = 0
        self._msize: int | None = None  # the memory window per class: the first batch's size
        self._meta_gen: torch.Generator | None = None
        self._pending: _Pending | None = None
        self._weights: torch.Tensor | None = None  # [N * groups] last weight of every training sample this epoch
        self._groups = 1
        self.directional = "layers"  # "jvp" forces forward mode for a_i (tests compare the two)

    # ---- protocol hooks ----
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.base_loss(logits, targets)

    def _task(self):
        if self.task is None:  # used outside the runner: one label per sample
            from noisybench.tasks.classification import ClassificationTask

            self.task = ClassificationTask()
        return self.task

    def on_train_start(self, x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> None:
        task = self._task()
        # private streams derived from the training seed: Ω's init and the clean_val meta-batch draws
        s_init, s_meta = np.random.SeedSequence([int(seed), 0x5709]).generate_state(2)
        self.rescaler.reset_parameters(torch.Generator().manual_seed(int(s_init)))
        self._meta_gen = torch.Generator().manual_seed(int(s_meta))
        # fused: one kernel for the update of all four of Ω's tensors (`adam_step`)
        self.meta_optimizer = torch.optim.Adam(self.rescaler.parameters(), lr=self.rescaler_lr, fused=True)
        # memories per (sample group, target class): DST keeps one per slot and gate class
        self._groups = int(task.sample_groups(y_train))
        slots = self._groups * (self.num_classes if self.class_separation else 1)
        self.memory, self.meta_memory = GroupMemory(slots), GroupMemory(slots)
        self._weights = torch.full((len(y_train) * self._groups,), float("nan"), device=y_train.device)
        self._pending = None
        self._steps = 0
        self._msize = None
        self._model_id = None  # the first step (re)reads model and optimizer
        self.base_loss.on_train_start(x_train, y_train, seed)

    def on_clean_validation(self, x_val: torch.Tensor, y_val_clean: torch.Tensor) -> None:
        if len(y_val_clean) == 0:
            raise ConfigError("method.meta_source=clean_val needs a validation split; set dataset.val_fraction > 0")
        self._meta_x, self._meta_y = x_val, y_val_clean

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if self.memory is not None:
            self.memory.clear()
            self.meta_memory.clear()
        if self._weights is not None:
            self._weights.fill_(float("nan"))
        self.base_loss.on_epoch_start(epoch, num_epochs)

    # ---- checkpoints (noisybench.methods.base): Ω and the base loss come with state_dict() ----
    def get_extra_state(self) -> dict:
        """Ω's optimizer and everything the next steps read: the step count, the memory window and
        the memories, this epoch's weights, the clean_val draws' generator and the pending meta
        update (plain tensors and values; tensors by reference, as in `state_dict()`)."""
        if self._weights is None:  # before on_train_start
            return {}
        return {"steps": self._steps, "groups": self._groups, "msize": self._msize, "weights": self._weights,
                "memory": self.memory.state_dict(), "meta_memory": self.meta_memory.state_dict(),
                "meta_optimizer": self.meta_optimizer.state_dict(), "meta_gen": self._meta_gen.get_state(),
                "pending": None if self._pending is None else self._pending._asdict()}

    def set_extra_state(self, state: dict) -> None:
        if not state:
            return
        if self._weights is None:
            raise ConfigError("STORM: call on_train_start before load_state_dict (the runner's resume order)")
        if state["weights"].shape != self._weights.shape:
            raise ConfigError(f"STORM: the saved state is for {len(state['weights'])} training samples, this run "
                              f"has {len(self._weights)}")
        self._steps, self._groups = int(state["steps"]), int(state["groups"])
        self._msize = None if state["msize"] is None else int(state["msize"])
        self._weights.copy_(state["weights"])
        self.memory.load_state_dict(state["memory"])
        self.meta_memory.load_state_dict(state["meta_memory"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self._meta_gen.set_state(state["meta_gen"].cpu())
        pending = state["pending"]
        if pending is not None:
            second = pending["second"]
            if second is not None and second["a"].get("rng0") is not None:  # torch.set_rng_state takes CPU tensors
                rng0 = tuple(None if t is None else t.cpu() for t in second["a"]["rng0"])
                second = {**second, "a": {**second["a"], "rng0": rng0}}
            pending = _Pending(**{**pending, "second": second})
        self._pending = pending
        self._model_id = None  # the next step re-reads model and optimizer and moves this state to their device

    def hparams(self) -> dict:
        return {"base_loss": self.base_name, **{f"base_loss.{k}": v for k, v in self.base_loss.hparams().items()},
                "forward_passes": self.forward_passes, "class_separation": self.class_separation,
                "first_order": self.first_order, "meta_interval": self.meta_interval,
                "features": self.features, "meta_loss_rescaling": self.meta_loss_rescaling,
                "meta_source": self.meta_source, "rescaler_lr": self.rescaler_lr,
                "weight_norm": self.weight_norm, "lookahead": self.lookahead, "bn_scope": self.bn_scope,
                "trained_pass_dropout": self.trained_pass_dropout, "dropout_enabled": self.dropout_enabled}

    def state(self) -> dict:
        return self.base_loss.state()

    def epoch_metrics(self, corrupted: torch.Tensor) -> dict:
        """Weight diagnostics against the corruption mask (never used for training)."""
        if self._weights is None:
            return {}
        w = self._weights.cpu().numpy()  # host sync, once per epoch
        bad = self._task().sample_corrupted(corrupted).reshape(-1).cpu().numpy().astype(bool)
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

    def sample_weights(self) -> torch.Tensor | None:
        return self._weights

    # ---- the step ----
    def _setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int) -> None:
        if self._model_id == (id(model), id(optimizer)):
            return
        if self._weights is None:
            raise ConfigError("STORM.on_train_start was not called before training")
        if self.forward_passes > 1 and not has_active_dropout(model):
            # a model whose dropout is off: switch its dropout layers on at the paper's rate (never
            # lower a rate that is set), and say so in the record (hparams: dropout_enabled)
            off = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0]
            if not off:
                raise ConfigError("method=storm needs dropout in the model (its features come from "
                                  f"{self.forward_passes} dropout passes) and this model has no dropout layer; "
                                  "use a model with model.dropout, or method.forward_passes=1")
            for m in off:
                m.p = STORM_DROPOUT
            self.dropout_enabled = {"p": STORM_DROPOUT, "layers": len(off)}
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
        # the part before the first active dropout layer is the same in every pass: run it once
        self._split = split_at_dropout(model) if self.forward_passes > 1 else None
        self._lead = leading_dropout(model) if self._split is not None else None
        # a plain reference, not a submodule: STORM's state_dict() must not hold (or load) the model
        object.__setattr__(self, "_model", model)
        self._dropouts = [m for m in model.modules() if type(m) is nn.Dropout]  # (not Dropout1d/2d: per channel)
        # a_i = <u, ∇ℓ_i> from the recorded layers when exact (no BatchNorm, one sample per row), else a JVP
        exact = self._groups == 1 and supported(model, [p for _, p, _ in self._params])
        self._capture = Capture(model) if exact and self.directional == "layers" else None
        # the JVP puts θ_t into every (module, attribute) slot holding a trained parameter, each slot once:
        # a parameter shared by two modules is replaced in both, a module reached by two paths (DSTConv's
        # token embedding, reused by its value head) once -- functional_call's tie_weights would swap
        # it twice and restore the stand-in, leaving the model without its parameter
        trained = {id(p): n for n, p, _ in self._params}
        slots: dict = {}
        for mn, m in model.named_modules(remove_duplicate=False):
            for pn, p in m._parameters.items():
                if p is not None and id(p) in trained:
                    slots.setdefault((id(m), pn), (f"{mn}.{pn}" if mn else pn, trained[id(p)]))
        self._jvp_slots = list(slots.values())
        # running statistics of normalisation layers: the JVP's replay of pass 0 leaves them alone
        self._norm_buffers = {n for mn, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                              for n, _ in m.named_buffers(prefix=mn, recurse=False)}
        if self._msize is None:  # kept by a resumed run (whose first batch may be an epoch's short last one)
            self._msize = int(batch_size)  # the code's msize = B: the window per class
        self._model_id = (id(model), id(optimizer))
        # a loaded state (a checkpoint may come back on the CPU) onto the model's device; the pending
        # update is kept: new model and optimizer objects are how a run resumes
        device = self._params[0][1].device if self._params else self._weights.device
        if self._pending is not None:
            self._pending = _Pending(*_to(tuple(self._pending), device))
            second = self._pending.second
            if second is not None and len(second["g"]) != len(self._params):
                raise ConfigError(f"STORM: the pending meta update has {len(second['g'])} parameters, the model "
                                  f"{len(self._params)}; resume with the model the state was saved with")

    @contextlib.contextmanager
    def _fast_masks(self):
        """The model's nn.Dropout layers draw `fast_dropout` masks during STORM's passes (the runner's
        evaluation and other methods keep torch's dropout)."""
        layers = [m for m in self._dropouts if m.training and m.p > 0]
        for m in layers:
            m.forward = functools.partial(fast_dropout, p=m.p)
        try:
            yield
        finally:
            for m in layers:
                del m.forward

    @contextlib.contextmanager
    def _trained_pass(self):
        """Pass 0 as configured: with the model's dropout (default), or without it
        (trained_pass_dropout=false: the public classification code drops features only in the extra passes)."""
        if self.trained_pass_dropout:
            with self._fast_masks():
                yield
            return
        layers = [m for m in self._model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
        for m in layers:
            m.train(False)
        try:
            yield
        finally:
            for m in layers:
                m.train(True)

    def _run(self, x: torch.Tensor):
        """Pass 0 (with the graph): the model's outputs, the input of the repeated part and, when the
        extra passes start with the same dropout layer as pass 0, their inputs after that layer
        (`dropout_passes`: all passes' masks of that layer in one call), else None."""
        with self._trained_pass():
            if self._split is None:
                return self._model(x), x, None
            trunk, head = self._split
            h = trunk(x)
            if self._lead is not None and self._lead[0].training and self.trained_pass_dropout and self._batched:
                both = dropout_passes(h, self._lead[0].p, self.forward_passes)
                if both is not None:
                    return self._lead[1](both[0]), h, both[1]
            return head(h), h, None

    def _extra_terms(self, h: torch.Tensor, y: torch.Tensor, dropped: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """[G-1, M] losses and [G-1, M, K] logits of the extra dropout passes, without gradients (`dropped`:
        their inputs after the leading dropout layer, from `_run`)."""
        n, task = self.forward_passes - 1, self._task()
        fn = self._model if self._split is None else self._split[1]
        h = h.detach()
        with torch.no_grad(), self._fast_masks():
            if self._batched:  # one call on the batch repeated n times: the same distribution of masks
                rep = lambda t: t.repeat(n, *([1] * (t.dim() - 1)))  # noqa: E731
                if dropped is not None:
                    t = task.loss_terms(self.base_loss, self._lead[1](dropped), rep(y))
                elif self._lead is not None and self._lead[0].training:  # it starts with a dropout layer: no copy of h
                    drop, rest = self._lead
                    t = task.loss_terms(self.base_loss, rest(fast_dropout(h, drop.p, repeat=n)), rep(y))
                else:
                    t = task.loss_terms(self.base_loss, fn(rep(h)), rep(y))
                return t.loss.view(n, -1), t.logits.view(n, -1, t.logits.shape[-1])
            ts = [task.loss_terms(self.base_loss, fn(h), y) for _ in range(n)]
            return torch.stack([t.loss for t in ts]), torch.stack([t.logits for t in ts])

    def _bn_group(self, terms: LossTerms) -> torch.Tensor | None:
        """The group whose statistics Ω's BatchNorm uses for each sample (bn_scope=group), or None."""
        return terms.group if self.bn_scope == "group" and self._groups > 1 else None

    def _keys(self, terms: LossTerms) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory slot, Ω head) of every sample: memories per (group, class), Ω per class."""
        cls = terms.target if self.class_separation else torch.zeros_like(terms.target)
        if self._groups == 1:  # (every sample in group 0)
            return cls, cls
        width = self.num_classes if self.class_separation else 1
        return terms.group * width + cls, cls

    def _features(self, terms: LossTerms, h: torch.Tensor, y: torch.Tensor, memory: GroupMemory,
                  slot: torch.Tensor, dropped: torch.Tensor | None = None) -> torch.Tensor:
        """[M, F] features of the samples of `terms` (pass 0) and their memory `slot`s (`dropped`: see `_run`)."""
        with torch.no_grad():
            first = (terms.loss.detach()[None], terms.logits.detach()[None])
            more = self._extra_terms(h, y, dropped) if self.forward_passes > 1 else ()
            # the features on the host (storm_features). On a CPU the tensors are read in place (numpy views);
            # on a GPU one copy of the passes' losses and logits and one of the targets and memory slots (a
            # sync, where Ω must wait anyway)
            if terms.loss.device.type == "cpu":
                target, slot = host(terms.target, np.int64), host(slot, np.int64)
                stats = pass_stats(*first, target, *more)
            else:
                logits, losses = torch.cat([first[1], *more[1:]]), torch.cat([first[0], *more[:1]])
                passes = host(torch.cat([logits.float(), losses.float()[..., None]], dim=2))
                target, slot = host(torch.stack([terms.target, slot]), np.int64)
                stats = pass_stats(passes[..., -1], passes[..., :-1], target)
            if self.features == "full":
                memory.update(stats, slot, self._msize)
                f = memory.features(stats, slot)
            else:
                f = np.stack([host(first[0][0]), stats[:, 4]], axis=1)
            if terms.loss.device.type == "cpu":  # (float64: Ω rounds them to its dtype as it reads them)
                return torch.from_numpy(f)
            return torch.from_numpy(f).to(terms.loss.device, self.rescaler.w1.dtype)

    def _scale(self, w: torch.Tensor, loss: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """s(w) with the rescaled sample loss s(w) Σ_m w_m ℓ_m; `loss` holds detached values.

        none: 1/M (the paper's Σ w ℓ, as a mean); weight_sum: 1/Σw (MW-Net's PGC script);
        mass: Σℓ / (Σ wℓ M), the public DST code's mass preservation (the loss value stays the
        unweighted mean; only the RELATIVE weights matter). The factor is differentiable in w (the
        meta-gradient includes its derivative) and constant in θ, else L would not depend on w.
        """
        if self.weight_norm == "none":
            return torch.ones((), dtype=w.dtype, device=w.device) / len(w)
        if self.weight_norm == "weight_sum":
            return 1.0 / w.sum().clamp(min=1e-12)
        K = self.rescaler.w1.shape[0]
        if self.weight_norm == "class_sum":  # per sample: (M_c / M) / Σ_{j in c} w_j for its Ω head c
            mass = w.new_zeros(K).index_add(0, head, w).clamp(min=1e-12)
            share = torch.bincount(head, minlength=K).to(w.dtype) / len(w)
            return (share / mass)[head]
        if self.weight_norm == "class_mass":  # per sample: Σ_c ℓ / (Σ_c wℓ M) over its Ω head c
            num = loss.new_zeros(K).index_add(0, head, loss)
            den = w.new_zeros(K).index_add(0, head, w * loss).clamp(min=1e-12)
            return (num / den)[head] / len(w)
        return loss.sum() / ((w * loss).sum().clamp(min=1e-12) * len(w))

    def _rescaled(self, share: float, values: torch.Tensor, w: torch.Tensor, rows: int, ell: torch.Tensor,
                  head: torch.Tensor):
        """The reweighted part of the batch loss, share (M/B) s(w) Σ_m w_m ℓ_m, where the batch loss is
        L(w) = mean_r rest_r + this: with w = 1 it is the unweighted mean row loss (classification:
        s(w) Σ w ℓ). `values` = the sample losses' values (for `mass`); `ell` = the sample losses, or
        their directional derivatives."""
        return share * (len(w) / rows) * (self._scale(w, values, head) * w * ell).sum()

    def _rescaled_grad(self, share: float, values: torch.Tensor, w: torch.Tensor, rows: int, ell: torch.Tensor,
                       head: torch.Tensor) -> torch.Tensor:
        """d`_rescaled`/dw at w (all arguments values), in closed form: the few vector operations of the
        meta-gradient's objective cost more through autograd than Ω's own backward. With c = share M/B
        and E = Σ w ℓ (over the batch, or over the sample's Ω head class k for the class norms):
          none: c ℓ_j / M;  weight_sum: c (ℓ_j − E/W) / W, W = Σw;
          mass: c (Σv/M) (ℓ_j − E v_j/D) / D, D = Σ w v;  class_sum: c (M_k/M) (ℓ_j − E_k/W_k) / W_k;
          class_mass: c (V_k/M) (ℓ_j − E_k v_j/D_k) / D_k
        (v = the losses' values). A clamped sum (< 1e-12) is a constant, as for autograd through the
        clamp. tests/test_storm.py checks every norm against autograd through `_rescaled`."""
        c = share * (len(w) / rows)
        M = len(w)
        if self.weight_norm == "none":
            return ell * (c / M)
        if self.weight_norm == "weight_sum":  # (the default: its few operations)
            total = w.sum()
            den = total.clamp(min=1e-12)
            mean = torch.where(total >= 1e-12, torch.dot(w, ell) / den, 0.0)
            return (ell - mean) * (c / den)
        if self.weight_norm == "mass":
            mass = w * values  # D = Σ w v
            total = mass.sum()
            den = total.clamp(min=1e-12)
            alive = (total >= 1e-12).to(w.dtype)
            return (c * values.sum() / M) * (ell - alive * values * ((w * ell).sum() / den)) / den
        K = self.rescaler.w1.shape[0]
        mass = w if self.weight_norm == "class_sum" else w * values
        total = w.new_zeros(K).index_add(0, head, mass)
        den = total.clamp(min=1e-12)
        alive = (total >= 1e-12).to(w.dtype)
        E = w.new_zeros(K).index_add(0, head, w * ell)
        if self.weight_norm == "class_sum":
            scale = c * torch.bincount(head, minlength=K).to(w.dtype) / M
            dmass = torch.ones_like(w)
        else:
            scale = c * values.new_zeros(K).index_add(0, head, values) / M
            dmass = values
        return (scale / den)[head] * (ell - (alive * E / den)[head] * dmass)

    def _coef(self, terms: LossTerms, w: torch.Tensor, rows: int, head: torch.Tensor) -> torch.Tensor:
        """c_m = dL/dℓ_m = share (M/B) s(w) w_m for weights held constant: L(w) = mean_r rest_r + Σ_m c_m ℓ_m."""
        c = terms.share * (len(w) / rows)
        if w.device.type == "cpu" and self.weight_norm in ("none", "weight_sum"):  # s(w) a number: on a CPU, read
            # it (no device to wait for) and scale once
            s = 1.0 / len(w) if self.weight_norm == "none" else 1.0 / max(float(w.sum()), 1e-12)
            return (w * (c * s)).to(terms.loss.dtype)
        return (c * (self._scale(w, terms.loss.detach(), head) * w)).to(terms.loss.dtype)

    def _batch_loss(self, terms: LossTerms, w: torch.Tensor, rows: int, head: torch.Tensor,
                    coef: torch.Tensor | None = None) -> torch.Tensor:
        """L(w) for weights w held constant (the model's loss at this step; `coef` = `_coef` if known)."""
        coef = self._coef(terms, w, rows, head) if coef is None else coef
        weighted = torch.dot(coef, terms.loss)
        return weighted if terms.plain else terms.rest.sum() / rows + weighted

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
        self._setup(model, optimizer, len(batch.y))
        task = self._task()
        x, y, B = batch.x, batch.y, len(batch.y)
        pending, self._pending = self._pending, None
        meta = self._steps % self.meta_interval == 0
        self._steps += 1
        second = meta and not self.first_order
        rng0 = rng_state(x.device) if second else None  # pass 0's dropout masks, replayed by the JVP
        rec = self._capture.record() if second and self._capture is not None else None
        try:
            out, h, dropped = self._run(x)  # pass 0: the graph that trains
        finally:
            if rec is not None:
                self._capture.stop()
        terms = task.loss_terms(self.base_loss, out, y)
        slot, head = self._keys(terms)
        f = self._features(terms, h, y, self.memory, slot, dropped)
        # this step's batch is the previous meta step's meta batch: its weights need Ω's graph then
        reuse = pending is not None and self.meta_source == "noisy_train"
        w_prev = None  # Ω on the pending step's features, for its second-order term
        if reuse and self.meta_loss_rescaling and pending.second is not None:
            w, w_prev = self.rescaler.many([(f, head, self._bn_group(terms)), (pending.f, pending.head, pending.group)])
        else:
            with torch.set_grad_enabled(reuse and self.meta_loss_rescaling):
                w = self.rescaler(f, head, self._bn_group(terms))
        wd = w.detach()
        params = [p for _, p, _ in self._params]
        coef = self._coef(terms, wd, B, head)
        loss = self._batch_loss(terms, wd, B, head, coef)
        grad = _grad if rec is None else rec.grad  # (rec.grad also keeps each recorded layer's output gradient)
        if pending is not None:
            if reuse and self.meta_loss_rescaling:  # ∇θ* L_meta IS this step's gradient
                g = v = grad(loss, params)
                meta_terms, w_m, rows_m, head_m = terms, w, B, head
            elif reuse:  # unweighted meta loss on this batch
                ones = torch.ones_like(wd)
                v = _grad(self._batch_loss(terms, ones, B, head), params, retain_graph=True)
                g = grad(loss, params)
                meta_terms, w_m, rows_m, head_m = terms, ones, B, head
            else:  # clean_val: a validation batch at the current parameters (= θ*)
                g = grad(loss, params)
                v, meta_terms, w_m, rows_m, head_m = self._validation_meta(params, B)
            self._omega_step(pending, v, meta_terms, w_m, rows_m, head_m, w_prev)
        else:
            g = grad(loss, params)
        if meta:
            self._pending = self._prepare(optimizer, x, y, g, f, head, terms, coef, B, rng0, rec)
        self._update_model(optimizer, params, g)  # step 7
        idx = batch.index if terms.plain else batch.index[terms.row]
        self._weights[idx if self._groups == 1 else idx * self._groups + terms.group] = wd.to(self._weights.dtype)
        if terms.plain:
            return terms.loss.detach().mean()  # unweighted mean row loss
        return ((terms.rest.sum() + terms.share * terms.loss.sum()) / B).detach()

    def _prepare(self, optimizer, x, y, g, f, head, terms: LossTerms, coef, B: int, rng0, rec) -> _Pending:
        """Before the model update: what the next step needs to finish this step's meta-gradient.

        The second-order term needs u = (∂θ*/∂g)ᵀ v with v known only at step t+1, and a_i = <u, ∇ℓ_i>
        at this step. Instead of θ*(g)'s autograd graph this keeps the inputs of `lookahead`, from
        which `_lookahead_vjp` rebuilds θ*(g) with the same ops on the same values (same numbers):
        g; every group's hyperparameters (an LR scheduler may change lr before step t+1); per
        parameter the optimizer state the derivative reads, as values (optimizer.step() updates it in
        place): Adam's moments and step count, for SGD only whether a momentum buffer exists (its
        value does not enter ∂θ*/∂g: a 0.0 stands in); the parameter itself only where its value
        enters ∂θ*/∂g (Adam's coupled weight decay), else None. For a_i: the recorded layers'
        tensors (by layer position), or the JVP's inputs (θ_t by name, the batch, pass 0's RNG state).
        """
        if self.first_order:
            return _Pending(f, head, terms.loss.detach(), terms.share, B, None, self._bn_group(terms))
        if rec is not None:  # from this step's recorded layers: c_i = dL/dℓ_i of the backward above
            primals = None
            a = {"inputs": rec.inputs, "grads": rec.grads, "coef": coef}
        else:  # forward mode at this step's parameters, replaying pass 0's dropout masks
            primals = {n: p.detach().clone() for n, p, _ in self._params}
            a = {"primals": primals, "x": x, "y": y, "rng0": rng0}
        value = lambda v: v.clone() if torch.is_tensor(v) else v  # noqa: E731  (a tensor lr may change in place)
        groups = [{**{k: value(group[k]) for k in HYPERPARAMETERS[self._kind]}, "decoupled": self._decoupled[gi]}
                  for gi, group in enumerate(optimizer.param_groups)]
        state, param = [], []
        for (n, p, k), gi in zip(self._params, g):
            st = self._opt_state(optimizer, p) if gi is not None else {}
            if self._kind == "sgd":
                state.append({"momentum_buffer": 0.0} if st.get("momentum_buffer") is not None else {})
            else:
                snap = {m: st[m].clone() for m in ("exp_avg", "exp_avg_sq") if m in st}
                state.append({**snap, "step": float(st["step"])} if "step" in st else snap)
            coupled = gi is not None and self._kind == "adam" and groups[k]["weight_decay"] and not self._decoupled[k]
            param.append((p.detach().clone() if primals is None else primals[n]) if coupled else None)
        second = {"kind": self._kind, "g": list(g), "param": param, "state": state, "groups": groups, "a": a}
        return _Pending(f, head, terms.loss.detach(), terms.share, B, second, self._bn_group(terms))

    def _lookahead_vjp(self, second: dict, v: list) -> list:
        """u = (∂θ*/∂g)ᵀ v for step t's lookahead θ*(g), from what `_prepare` kept; a parameter that had
        no gradient at step t (it did not move) or has none now gets u = 0. ∂θ*/∂g is diagonal for
        SGD and Adam, so u is closed form (`lookahead_vjp`), no autograd graph."""
        u: list = [None] * len(self._params)
        batches: dict = {}  # SGD: the parameters of a group with the same momentum state, in one foreach op
        for i, ((_, p, k), gi, vi, st, pi) in enumerate(zip(self._params, second["g"], v, second["state"],
                                                             second["param"])):
            if gi is None or vi is None:
                u[i] = torch.zeros_like(p)
            elif second["kind"] == "sgd":
                batches.setdefault((k, "momentum_buffer" in st), []).append(i)
            else:
                u[i] = lookahead_vjp(0.0 if pi is None else pi, gi, vi, second["groups"][k], st, second["kind"])
        for (k, has_buffer), idx in batches.items():
            for i, ui in zip(idx, sgd_lookahead_vjp([v[i] for i in idx], second["groups"][k], has_buffer)):
                u[i] = ui
        return u

    def _directional(self, a: dict, u: list) -> torch.Tensor:
        """a_i = <u, ∇ℓ_i> at step t's parameters and dropout masks, from what `_prepare` kept."""
        if "coef" in a:
            layers = (self._capture if self._capture is not None else Capture(self._model)).layers
            return directional(layers, a["inputs"], a["grads"],
                               {id(p): ui for (_, p, _), ui in zip(self._params, u)}, a["coef"])
        return self._jvp_fn(a["primals"], a["x"], a["y"], a["rng0"])(u)

    def _validation_meta(self, params, size: int):
        """meta_source=clean_val: v = ∇θ L_meta on a batch of the validation split with CLEAN labels."""
        idx = torch.randint(len(self._meta_y), (size,), generator=self._meta_gen).to(self._meta_y.device)
        xm, ym = self._meta_x[idx], self._meta_y[idx]
        out, hm, dropped = self._run(xm)
        terms = self._task().loss_terms(self.base_loss, out, ym)
        slot, head = self._keys(terms)
        if self.meta_loss_rescaling:
            fm = self._features(terms, hm, ym, self.meta_memory, slot, dropped)
            w_m = self.rescaler(fm, head, self._bn_group(terms))
        else:
            w_m = torch.ones_like(terms.loss)
        v = _grad(self._batch_loss(terms, w_m.detach(), size, head), params)
        return v, terms, w_m, size, head

    def _omega_step(self, pending: _Pending, v, meta_terms: LossTerms, w_m: torch.Tensor, rows_m: int,
                    head_m: torch.Tensor, w_prev: torch.Tensor | None = None) -> None:
        """dL_meta/dω = outer term (through w′) + second-order term (through θ*), then one Adam step."""
        omega = list(self.rescaler.parameters())
        # dL_meta/dω = Σ over Ω's evaluations of (dL_meta/dw)ᵀ dw/dω: each objective's w-gradient in closed
        # form (`_rescaled_grad`), then one backward through Ω
        weights, grads = [], []
        if w_m.requires_grad:  # outer: L_meta's dependence on w′, the losses at θ* held at their values
            values = meta_terms.loss.detach()
            weights.append(w_m)
            grads.append(self._rescaled_grad(meta_terms.share, values, w_m.detach(), rows_m, values, head_m))
        if pending.second is not None:
            u = self._lookahead_vjp(pending.second, v)  # u = (∂θ*/∂g)ᵀ ∇θ* L_meta
            a = self._directional(pending.second["a"], u)  # a_i = <u, ∇ℓ_i> at step t's parameters and masks
            # g(w) = ∇θ L(w) and <u, g(w)> = share (M/B) s(w) Σ_m w_m a_m: its ω-gradient is the term
            if w_prev is None:  # (else evaluated together with this step's weights)
                w_prev = self.rescaler(pending.f, pending.head, pending.group)
            weights.append(w_prev)
            grads.append(self._rescaled_grad(pending.share, pending.loss, w_prev.detach(), pending.rows, a.detach(),
                                             pending.head))
        if not weights:
            return
        for p, gr in zip(omega, torch.autograd.grad(weights, omega, grads)):
            p.grad = gr
        adam_step(self.meta_optimizer)

    def _jvp_fn(self, primals: dict, x, y, rng0):
        task, names = self._task(), list(primals)

        def sample_losses(ps):
            # BatchNorm normalises with the batch's statistics as in pass 0; its running statistics,
            # which pass 0 already updated (and which torch.func may not mutate), go to copies
            stats = {n: b.clone() for n, b in self._model.named_buffers() if n in self._norm_buffers}
            tensors = {slot: ps[name] for slot, name in self._jvp_slots}
            out = functional_call(self._model, {**tensors, **stats}, (x,), tie_weights=False)
            return task.loss_terms(self.base_loss, out, y).loss

        def a_fn(u):
            with replay_rng(x.device, rng0), self._trained_pass():  # the same dropout masks as that step's pass 0
                return jvp(sample_losses, (primals,), (dict(zip(names, u)),))[1]
        return a_fn

    def _update_model(self, optimizer, params, g) -> None:
        if self.lookahead == "persistent":  # the lookahead's update, with the optimizer's own state
            for p, gi in zip(params, g):
                p.grad = gi
            optimizer.step()
            return
        with torch.no_grad():  # fresh_adam: model <- θ*, as the public storm.py copies fθ back
            for (_, p, k), gi in zip(self._params, g):
                if gi is not None:
                    p.copy_(lookahead(p, gi, optimizer.param_groups[k], {}, "adam", self._decoupled[k]))
                p.grad = None
        optimizer.step()  # every grad is None: no update; only marks the step for LR schedulers

    def _opt_state(self, optimizer, p) -> dict:
        # fresh_adam: the public code's `higher` lookahead starts every step from an EMPTY Adam state
        return optimizer.state.get(p, {}) if self.lookahead == "persistent" else {}
