"""The rescaler Ω (paper Eq. 6) and its optimizer step: `Rescaler` (the module), `_Omega` (its
forward and backward written out as one autograd node; on a CPU the compiled float64 loops
`_omega_forward` / `_omega_backward`) and `adam_step` (Ω's fused Adam). See
docs/methods/storm.md."""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import nn

from noisybench.methods.storm.host import in_transform

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
    count = onehot.sum(0)[:, None].clamp(min=1)  # (a group with no row here: 0, not 0/0)
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
            if (f.device.type == "cpu" and _Omega.compiled and not torch.is_grad_enabled()
                    and not in_transform()):
                return _Omega._forward_host(None, f, head, self.w1, self.b1, self.w2, self.b2)  # (no graph)
            if not torch.is_autocast_enabled(f.device.type):
                return _Omega.apply(f, head, self.w1, self.b1, self.w2, self.b2)
            with torch.autocast(f.device.type, enabled=False):
                return _Omega.apply(f, head, self.w1, self.b1, self.w2, self.b2)
        if group is not None and f.shape[1] == 1 and torch.equal(group, head[:, 0]):  # bn_scope=class
            if f.device.type == "cpu" and _Omega.compiled and not in_transform():
                return _OwnHead.apply(f[:, 0], group, self.w1, self.b1, self.w2, self.b2)[:, None]
            with torch.autocast(f.device.type, enabled=False):
                x = f[:, 0] if f.dtype == self.w1.dtype else f[:, 0].to(self.w1.dtype)
                return self._own_head(x, group)[:, None]
        return self.all_heads(f, group).gather(2, head[..., None]).squeeze(2)

    def _own_head(self, f: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [B]: each sample through its own head only, with the BatchNorm statistics of the
        rows of that head (= `all_heads(f, head)` at each sample's head, without the other heads' work)."""
        x = torch.baddbmm(self.b1[head][:, :, None], self.w1[head], f[:, :, None]).squeeze(2)
        x = torch.relu(_bn(x, head))
        z = _bn(torch.baddbmm(self.b2[head][:, :, None], self.w2[head], x[:, :, None]).squeeze(2), head)
        return torch.sigmoid(z[:, 1] - z[:, 0])

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
        if f.device.type == "cpu" and _Omega.compiled and not in_transform():
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
        grad = lambda dy, inp, mean, rstd: torch.ops.aten.native_batch_norm_backward(  # noqa: E731  (a local helper)
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



@njit(cache=True, nogil=True)
def _group_bn(v, head, H, eps):
    """In place: the columns of v [B, C] normalised with the statistics of the rows of each head;
    returns (mean, rstd, count) per [head, column] (a head without rows: count 0)."""
    B, C = v.shape
    mean, var, count = np.zeros((H, C)), np.zeros((H, C)), np.zeros(H)
    for b in range(B):
        count[head[b]] += 1.0
        for c in range(C):
            mean[head[b], c] += v[b, c]
    for h in range(H):
        for c in range(C):
            mean[h, c] /= max(count[h], 1.0)
    for b in range(B):
        for c in range(C):
            var[head[b], c] += (v[b, c] - mean[head[b], c]) ** 2
    rstd = np.empty((H, C))
    for h in range(H):
        for c in range(C):
            rstd[h, c] = 1.0 / math.sqrt(var[h, c] / max(count[h], 1.0) + eps)
    for b in range(B):
        for c in range(C):
            v[b, c] = (v[b, c] - mean[head[b], c]) * rstd[head[b], c]
    return mean, rstd, count


@njit(cache=True, nogil=True)
def _group_bn_backward(dy, xhat, head, rstd, count):
    """In place: dy [B, C] -> the gradient at the input of `_group_bn` (xhat: its output)."""
    B, C = dy.shape
    H = rstd.shape[0]
    m1, m2 = np.zeros((H, C)), np.zeros((H, C))
    for b in range(B):
        for c in range(C):
            m1[head[b], c] += dy[b, c]
            m2[head[b], c] += dy[b, c] * xhat[b, c]
    for b in range(B):
        h = head[b]
        for c in range(C):
            dy[b, c] = (dy[b, c] - (m1[h, c] + xhat[b, c] * m2[h, c]) / count[h]) * rstd[h, c]


@njit(cache=True, nogil=True)
def _own_forward(f, head, w1, b1, w2, b2, eps):
    """`Rescaler._own_head` on the host, in float64: f [B, F], head [B] -> w [B] (in w1's dtype) and
    what the backward needs."""
    B, F = f.shape
    H = w1.shape[0]
    fc = np.empty((B, F))
    for b in range(B):
        for k in range(F):
            fc[b, k] = np.float64(w1.dtype.type(f[b, k]))
    xhat = np.empty((B, F))
    for b in range(B):
        h = head[b]
        for j in range(F):
            t = np.float64(b1[h, j])
            for k in range(F):
                t += np.float64(w1[h, j, k]) * fc[b, k]
            xhat[b, j] = t
    _, rstd1, count = _group_bn(xhat, head, H, eps)
    a = np.maximum(xhat, 0.0)
    zhat = np.empty((B, 2))
    for b in range(B):
        h = head[b]
        for o in range(2):
            t = np.float64(b2[h, o])
            for j in range(F):
                t += np.float64(w2[h, o, j]) * a[b, j]
            zhat[b, o] = t
    _, rstd2, _ = _group_bn(zhat, head, H, eps)
    w, out = np.empty(B), np.empty(B, w1.dtype)
    for b in range(B):
        w[b] = 1.0 / (1.0 + math.exp(-(zhat[b, 1] - zhat[b, 0])))
        out[b] = w[b]
    return out, (fc, xhat, rstd1, count, a, zhat, rstd2, w)


@njit(cache=True, nogil=True)
def _own_backward(dw, head, w2, fc, xhat, rstd1, count, a, zhat, rstd2, w, dt1, dt2):
    """`_OwnHead.backward` on the host (float64): the ω-gradients of Σ dw·w (in the weights' dtypes)."""
    B, F = fc.shape
    H = w2.shape[0]
    dz = np.empty((B, 2))
    for b in range(B):
        g = dw[b] * w[b] * (1.0 - w[b])
        dz[b, 0], dz[b, 1] = -g, g
    _group_bn_backward(dz, zhat, head, rstd2, count)
    gw1, gb1, gw2, gb2 = np.zeros((H, F, F)), np.zeros((H, F)), np.zeros((H, 2, F)), np.zeros((H, 2))
    dx = np.empty((B, F))
    for b in range(B):
        h = head[b]
        for o in range(2):
            gb2[h, o] += dz[b, o]
            for j in range(F):
                gw2[h, o, j] += dz[b, o] * a[b, j]
        for j in range(F):
            dx[b, j] = (dz[b, 0] * w2[h, 0, j] + dz[b, 1] * w2[h, 1, j]) if a[b, j] > 0 else 0.0
    _group_bn_backward(dx, xhat, head, rstd1, count)
    for b in range(B):
        h = head[b]
        for j in range(F):
            gb1[h, j] += dx[b, j]
            for k in range(F):
                gw1[h, j, k] += dx[b, j] * fc[b, k]
    return gw1.astype(dt1), gb1.astype(dt1), gw2.astype(dt2), gb2.astype(dt2)


class _OwnHead(torch.autograd.Function):
    """`Rescaler._own_head` (bn_scope=class: each sample through its own head, BatchNorm statistics per
    head) as one autograd node of compiled host loops, as `_Omega` for the pooled statistics;
    tests/test_storm.py checks it against autograd through `_own_head`."""

    @staticmethod
    def forward(ctx, f, head, w1, b1, w2, b2):
        ours = [f.detach().contiguous().numpy(), head.detach().contiguous().numpy(),
                *(t.detach().numpy() for t in (w1, b1, w2, b2))]
        w, saved = _own_forward(*ours, BN_EPS)
        ctx.host = (ours[1], ours[4].copy(), *saved)  # (Ω's weights as they are now: updated in place later)
        ctx.dtypes = (w1.dtype, w2.dtype)
        return torch.from_numpy(w)

    @staticmethod
    def backward(ctx, dw):
        dt = [np.dtype(str(d).replace("torch.", "")) for d in ctx.dtypes]
        grads = _own_backward(dw.detach().to(torch.float64).contiguous().numpy(), *ctx.host, dt[0], dt[1])
        return (None, None, *(torch.from_numpy(np.ascontiguousarray(g)) for g in grads))


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
