"""Dropout during STORM's passes (step 1 of docs/methods/storm.md): `fast_dropout` and
`dropout_passes` (masks from 15 random bits, on a CPU SplitMix64 bits made by one compiled call),
the RNG helpers the JVP's replay of pass 0 uses (`rng_state`, `replay_rng`), and `Passes`, the
model's G forward passes."""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from numba import njit
from torch import nn

from noisybench.errors import ConfigError
from noisybench.methods.storm.host import in_transform
from noisybench.models import has_active_dropout, leading_dropout, split_at_dropout

STORM_DROPOUT = 0.1  # the paper's rate, switched on in a model whose dropout is 0 (features need dropout passes)
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
            or in_transform()):
        return None
    m = x.numel()
    out, *args = _cpu_masks(x, drop, m * passes)
    _dropout_cpu(x.detach().contiguous().view(-1).numpy(), out, *args, m)
    out = torch.from_numpy(out)
    return x * out[:m].view(x.shape), out[m:].view(-1, *x.shape[1:])


@functools.cache
def _mask_scale(drop: int, dtype: torch.dtype):
    """1/(1-p) of the rounded rate, rounded to `dtype` (as a float32 or float64 numpy scalar)."""
    value = torch.tensor(MASK_LEVELS / (MASK_LEVELS - drop), dtype=dtype).item()
    return np.float64(value) if dtype == torch.float64 else np.float32(value)


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
        if x.dtype in (torch.float32, torch.float64) and x.is_contiguous() and not in_transform() \
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



def enable_dropout(model: nn.Module, passes: int) -> dict | None:
    """A model whose dropout is off: switch its dropout layers on at the paper's rate (never lower a
    rate that is set); returns what was switched on, for the record (hparams: dropout_enabled)."""
    if passes <= 1 or has_active_dropout(model):
        return None
    off = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0]
    if not off:
        raise ConfigError("method=storm needs dropout in the model (its features come from "
                          f"{passes} dropout passes) and this model has no dropout layer; "
                          "use a model with model.dropout, or method.forward_passes=1")
    for m in off:
        m.p = STORM_DROPOUT
    return {"p": STORM_DROPOUT, "layers": len(off)}


class Passes:
    """The G forward passes of a model with dropout (step 1): pass 0 with the graph, the extra
    passes without. `loss_terms(outputs, y)` is the task's `LossTerms` of the base loss."""

    def __init__(self, model: nn.Module, passes: int, trained_pass_dropout: bool,
                 loss_terms) -> None:
        self.model, self.passes, self.loss_terms = model, passes, loss_terms
        self.trained_pass_dropout = trained_pass_dropout
        self.batched = not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                               for m in model.modules())
        # the part before the first active dropout layer is the same in every pass: run it once
        self.split = split_at_dropout(model) if passes > 1 else None
        self.lead = leading_dropout(model) if self.split is not None else None
        # (not Dropout1d/2d: per channel)
        self.dropouts = [m for m in model.modules() if type(m) is nn.Dropout]

    @contextlib.contextmanager
    def fast_masks(self):
        """The model's nn.Dropout layers draw `fast_dropout` masks during STORM's passes (the runner's
        evaluation and other methods keep torch's dropout)."""
        layers = [m for m in self.dropouts if m.training and m.p > 0]
        for m in layers:
            m.forward = functools.partial(fast_dropout, p=m.p)
        try:
            yield
        finally:
            for m in layers:
                del m.forward

    @contextlib.contextmanager
    def trained_pass(self):
        """Pass 0 as configured: with the model's dropout (default), or without it
        (trained_pass_dropout=false: the public classification code drops features only in the extra passes)."""
        if self.trained_pass_dropout:
            with self.fast_masks():
                yield
            return
        layers = [m for m in self.model.modules()
                  if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
        for m in layers:
            m.train(False)
        try:
            yield
        finally:
            for m in layers:
                m.train(True)

    def run(self, x: torch.Tensor):
        """Pass 0 (with the graph): the model's outputs, the input of the repeated part and, when the
        extra passes start with the same dropout layer as pass 0, their inputs after that layer
        (`dropout_passes`: all passes' masks of that layer in one call), else None."""
        with self.trained_pass():
            if self.split is None:
                return self.model(x), x, None
            trunk, head = self.split
            h = trunk(x)
            lead = self.lead
            if lead is not None and lead[0].training and self.trained_pass_dropout and self.batched:
                both = dropout_passes(h, lead[0].p, self.passes)
                if both is not None:
                    return lead[1](both[0]), h, both[1]
            return head(h), h, None

    def extra(self, h: torch.Tensor, y: torch.Tensor, dropped: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """[G-1, M] losses and [G-1, M, K] logits of the extra dropout passes, without gradients (`dropped`:
        their inputs after the leading dropout layer, from `run`)."""
        n, loss_terms = self.passes - 1, self.loss_terms
        fn = self.model if self.split is None else self.split[1]
        h = h.detach()
        with torch.no_grad(), self.fast_masks():
            # batched: one call on the batch repeated n times (the same distribution of masks)
            if self.batched:
                rep = lambda t: t.repeat(n, *([1] * (t.dim() - 1)))  # noqa: E731  (a local helper)
                if dropped is not None:
                    t = loss_terms(self.lead[1](dropped), rep(y))
                elif self.lead is not None and self.lead[0].training:
                    # it starts with a dropout layer: no copy of h
                    drop, rest = self.lead
                    t = loss_terms(rest(fast_dropout(h, drop.p, repeat=n)), rep(y))
                else:
                    t = loss_terms(fn(rep(h)), rep(y))
                return t.loss.view(n, -1), t.logits.view(n, -1, t.logits.shape[-1])
            ts = [loss_terms(fn(h), y) for _ in range(n)]
            return torch.stack([t.loss for t in ts]), torch.stack([t.logits for t in ts])
