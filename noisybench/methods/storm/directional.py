"""Per-sample directional derivatives a_i = <u, ∇θ ℓ_i(θ)> from one ordinary backward pass.

STORM's second-order meta-gradient needs a_i for every sample of a training batch, in a direction u
known only later. For a layer y = W ⋆ h + b (Linear, Conv1d/2d, zero padding), sample i's gradient
is built from its own input h_i and output gradient δ_i = ∂ℓ_i/∂y_i, and

    <u_W, ∇_W ℓ_i> + <u_b, ∇_b ℓ_i> = Σ (u_W ⋆ h_i + u_b) · δ_i,

one extra layer evaluation with the weights replaced by u (about one forward pass in all). The
backward pass of the batch loss L = Σ_i c_i ℓ_i gives c_i δ_i (the samples do not interact when the
model has no BatchNorm and each batch row is one sample), so a_i = Σ_layers (...) / c_i. This is
exact, not an approximation; `Capture.supported` says when it applies, otherwise STORM uses
`torch.func.jvp` (forward mode through the whole model, about 2-3 forward passes).

Where c_i = 0 exactly, a_i is 0 (never a division by zero): with weight_norm=class_mass (mass) c_i is
0 when every loss of sample i's class (of the batch) is 0, so s(w) = 0, and the meta-gradient
multiplies a_i by that same zero factor (`weighting.rescaled_grad`): the term is skipped, which is
its exact value (the ∇ℓ_i of a CE loss of exactly 0 is 0 too).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def supported(model: nn.Module, params: list[nn.Parameter]) -> bool:
    """True when every trained parameter is the weight or bias of a Linear / zero-padded Conv1d/2d and
    nothing couples the samples of a batch (BatchNorm)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    owned = set()
    for m in model.modules():
        direct = list(m.parameters(recurse=False))
        if not direct:
            continue
        if not isinstance(m, LAYERS) or getattr(m, "padding_mode", "zeros") != "zeros" or \
                isinstance(getattr(m, "padding", 0), str):
            return False
        owned.update(id(p) for p in direct)
    return all(id(p) in owned for p in params)


def directional(layers: list[nn.Module], inputs: dict[int, torch.Tensor], grads: dict[int, torch.Tensor],
                u: dict[int, torch.Tensor], coef: torch.Tensor) -> torch.Tensor:
    """a_i given the recorded inputs and output gradients of `layers` (keyed by position in `layers`),
    u (id(parameter) -> direction) and the per-sample loss coefficients c_i of the recorded backward
    pass (whose loss was Σ_i c_i ℓ_i). `layers` may belong to another instance of the same
    architecture than the recording (a resumed run): only their weights' ids and shapes are read."""
    with torch.autocast(coef.device.type, enabled=False):  # float32, also in bf16-autocast runs
        return _directional(layers, inputs, grads, u, coef)


def _directional(layers, inputs, grads, u, coef) -> torch.Tensor:
    parts = []
    for k, m in enumerate(layers):
        h, d = inputs.get(k), grads.get(k)
        if h is None or d is None:
            continue
        if h.dtype != coef.dtype or d.dtype != coef.dtype:  # recorded in bf16 under autocast
            h, d = h.to(coef.dtype), d.to(coef.dtype)
        uw = u.get(id(m.weight))
        uw = torch.zeros_like(m.weight) if uw is None else uw
        ub = u.get(id(m.bias)) if m.bias is not None else None
        if isinstance(m, nn.Linear):
            y = F.linear(h, uw, ub)
        else:
            conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
            y = conv(h, uw, ub, m.stride, m.padding, m.dilation, m.groups)
        parts.append(torch.linalg.vecdot(y.reshape(len(d), -1), d.reshape(len(d), -1)))  # Σ over the sample's cells
    if not parts:
        return torch.zeros_like(coef)
    total = torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
    # c_i = 0 (every loss of the sample's class is 0 under weight_norm=class_mass, or of the batch under
    # mass, so s(w) = 0): the backward carried nothing of sample i and a_i is set to 0 instead of 0/0.
    # Exact for the meta-gradient: `weighting.rescaled_grad` multiplies a_i by that same zero factor
    # (s's numerator, the class's loss mass), so the term is skipped, as the limit ℓ -> 0 gives it.
    # (c_i = 0 because w_i underflowed to 0 would need Ω's output below ~1e-38: BN bounds its logits.)
    zero = coef == 0
    return torch.where(zero, torch.zeros_like(total), total / torch.where(zero, torch.ones_like(coef), coef))


class Recording:
    """One batch's layer inputs and output gradients, keyed by the layer's position in `layers`
    (plain tensors: a checkpoint can hold them)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        self.inputs: dict[int, torch.Tensor] = {}
        self.grads: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # the recorded layers' outputs (with their graph), until `grad`

    def grad(self, loss: torch.Tensor, params: list, retain_graph: bool = False) -> list:
        """∇ loss per parameter (None for one the loss does not use) from one backward pass that also
        gives each recorded layer's output gradient (into `grads`): the output gradients are asked of
        autograd with the parameters' (cheaper than hooks on the outputs)."""
        keys = list(self.outputs)
        got = torch.autograd.grad(loss, [*params, *(self.outputs[k] for k in keys)], retain_graph=retain_graph,
                                  allow_unused=True)
        self.grads.update({k: d for k, d in zip(keys, got[len(params):]) if d is not None})
        self.outputs = {}
        return list(got[:len(params)])

    def directional(self, u: dict[int, torch.Tensor], coef: torch.Tensor) -> torch.Tensor:
        """a_i given u (id(parameter) -> direction) and the coefficients c_i (see `directional`)."""
        return directional(self.layers, self.inputs, self.grads, u, coef)


def _recorded(rec: Recording, k: int, forward, x: torch.Tensor, *args, **kwargs):
    out = forward(x, *args, **kwargs)
    rec.inputs[k] = x.detach()
    if out.requires_grad:
        rec.outputs[k] = out
    return out


class Capture:
    """`record()` ... `stop()` around a forward pass: each supported layer's input goes into the returned
    `Recording`, and its output gradient too when the backward runs through `Recording.grad`. The layers'
    `forward` is wrapped for the pass (measured cheaper than module and tensor hooks: README, STORM's
    speed)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, LAYERS) and any(
            p.requires_grad for p in m.parameters(recurse=False))]
        self._saved: list = []

    def record(self) -> Recording:
        rec = Recording(self.layers)
        self._saved = [m.__dict__.get("forward") for m in self.layers]
        for k, m in enumerate(self.layers):
            m.forward = functools.partial(_recorded, rec, k, m.forward)
        return rec

    def stop(self) -> None:
        for m, before in zip(self.layers, self._saved):
            if before is None:
                del m.forward
            else:
                m.forward = before
        self._saved = []
