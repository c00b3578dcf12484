"""The meta-gradient's second-order term (steps 4-6 of docs/methods/storm.md): what step t leaves
for step t+1 (`Pending`, a plain record a checkpoint can hold) and a_m = <u, ∇θ ℓ_m(θ_t)>
(`SecondOrder`: from the recorded layers, or a forward-mode JVP replaying pass 0's dropout
masks)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, jvp

from noisybench.methods.storm.directional import Capture, directional
from noisybench.methods.storm.dropout import Passes, replay_rng


def grad(loss: torch.Tensor, params: list, retain_graph: bool = False) -> list:
    """∇ loss per parameter; None for a parameter the loss does not use (as .backward() leaves it)."""
    return list(torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True))


class Pending(NamedTuple):
    """What step t leaves for the meta-gradient that step t+1 completes (step t+1's batch is the meta
    batch and its parameters are θ*). Plain tensors and values -- no autograd graph, no closure, no
    reference to the model -- so a checkpoint can hold it (`get_extra_state` saves it as a dict)."""
    f: torch.Tensor  # [M, F] step t's features
    head: torch.Tensor  # [M] the Ω head of each sample
    loss: torch.Tensor  # [M] step t's sample losses (values; the `mass` factor uses them)
    share: float  # the samples' share in the row loss
    rows: int  # B, step t's batch rows
    second: dict | None  # the second-order term's inputs (see `STORM._prepare`); None = first order
    group: torch.Tensor | None = None  # [M] each sample's group, for bn_scope=group (None: batch)


def to_device(obj, device: torch.device):
    """Tensors of nested dicts/lists/tuples onto `device`; RNG states (key `rng0`) stay on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: v if k == "rng0" else to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def pending_from_state(pending: dict | None) -> Pending | None:
    """`Pending` from its checkpoint dict; the RNG state goes to the CPU (torch.set_rng_state takes
    CPU tensors)."""
    if pending is None:
        return None
    second = pending["second"]
    if second is not None and second["a"].get("rng0") is not None:
        rng0 = tuple(None if t is None else t.cpu() for t in second["a"]["rng0"])
        second = {**second, "a": {**second["a"], "rng0": rng0}}
    return Pending(**{**pending, "second": second})


def jvp_slots(model: nn.Module, params: list) -> list:
    """(attribute path, parameter name) of every (module, attribute) slot holding a trained
    parameter, each slot once: the JVP puts θ_t there. A parameter shared by two modules is replaced
    in both, a module reached by two paths (DSTConv's token embedding, reused by its value head)
    once -- functional_call's tie_weights would swap it twice and restore the stand-in, leaving the
    model without its parameter."""
    trained = {id(p): n for n, p, _ in params}
    slots: dict = {}
    for mn, m in model.named_modules(remove_duplicate=False):
        for pn, p in m._parameters.items():
            if p is not None and id(p) in trained:
                slots.setdefault((id(m), pn), (f"{mn}.{pn}" if mn else pn, trained[id(p)]))
    return list(slots.values())


class SecondOrder:
    """a_m = <u, ∇θ ℓ_m> at step t's parameters and dropout masks, for the trained `params`
    ([(name, parameter, group index)]). With `exact`, from the layers `capture` records during
    pass 0 (docs/methods/storm.md: no BatchNorm, one sample per row); else a JVP through `passes`'
    model."""

    def __init__(self, passes: Passes, params: list, exact: bool) -> None:
        model = passes.model
        self.passes, self.params = passes, params
        self.capture = Capture(model) if exact else None
        self.slots = jvp_slots(model, params)
        # running statistics of normalisation layers: the JVP's replay of pass 0 leaves them alone
        self.norm_buffers = {n for mn, m in model.named_modules()
                             if isinstance(m, nn.modules.batchnorm._NormBase)
                             for n, _ in m.named_buffers(prefix=mn, recurse=False)}

    def inputs(self, rec, coef, x, y, rng0) -> tuple[dict, dict | None]:
        """What a_m needs, kept at step t: the recorded layers' tensors (by layer position) and
        c_m = dL/dℓ_m of the backward, or the JVP's inputs (θ_t by name, the batch, pass 0's RNG
        state); and θ_t by name when kept (else None)."""
        if rec is not None:  # from this step's recorded layers: c_i = dL/dℓ_i of the backward above
            return {"inputs": rec.inputs, "grads": rec.grads, "coef": coef}, None
        # forward mode at this step's parameters, replaying pass 0's dropout masks
        primals = {n: p.detach().clone() for n, p, _ in self.params}
        return {"primals": primals, "x": x, "y": y, "rng0": rng0}, primals

    def directional(self, a: dict, u: list) -> torch.Tensor:
        """a_i = <u, ∇ℓ_i> at step t's parameters and dropout masks, from what `inputs` kept."""
        if "coef" in a:
            capture = self.capture if self.capture is not None else Capture(self.passes.model)
            layers = capture.layers
            return directional(layers, a["inputs"], a["grads"],
                               {id(p): ui for (_, p, _), ui in zip(self.params, u)}, a["coef"])
        return self.jvp_fn(a["primals"], a["x"], a["y"], a["rng0"])(u)

    def jvp_fn(self, primals: dict, x, y, rng0):
        model, names, loss_terms = self.passes.model, list(primals), self.passes.loss_terms

        def sample_losses(ps):
            # BatchNorm normalises with the batch's statistics as in pass 0; its running statistics,
            # which pass 0 already updated (and which torch.func may not mutate), go to copies
            stats = {n: b.clone() for n, b in model.named_buffers() if n in self.norm_buffers}
            tensors = {slot: ps[name] for slot, name in self.slots}
            out = functional_call(model, {**tensors, **stats}, (x,), tie_weights=False)
            return loss_terms(out, y).loss

        def a_fn(u):
            # the same dropout masks as that step's pass 0
            with replay_rng(x.device, rng0), self.passes.trained_pass():
                return jvp(sample_losses, (primals,), (dict(zip(names, u)),))[1]
        return a_fn
