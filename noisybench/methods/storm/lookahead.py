"""The lookahead θ* (step 4 of docs/methods/storm.md): one step of the runner's optimizer as a
function of the gradient (`lookahead`), its closed-form derivative (`lookahead_vjp`,
`sgd_lookahead_vjp`), and `InnerStep`, the runner's optimizer as STORM reads and steps it."""
from __future__ import annotations

import math

import torch

from noisybench.errors import ConfigError

# the group hyperparameters `lookahead` reads, per optimizer kind
HYPERPARAMETERS = {"sgd": ("lr", "weight_decay", "momentum", "dampening", "nesterov"),
                   "adam": ("lr", "weight_decay", "betas", "eps")}
LOOKAHEADS = ("persistent", "fresh_adam")


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
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


def _adam_moments(g: torch.Tensor, group: dict, state: dict) -> tuple:
    """Adam's step count and moments m, v after one more step with gradient g (state constant),
    where v > 0, and sqrt(v) there (1 elsewhere: sqrt'(0) = inf would turn the zero gradients of
    unused units into NaN; callers take the root as the constant 0 where v = 0)."""
    beta1, beta2 = group["betas"]
    step = float(state["step"]) + 1 if "step" in state else 1.0
    m = (1 - beta1) * g if "exp_avg" not in state else beta1 * state["exp_avg"] + (1 - beta1) * g
    v = (1 - beta2) * g * g if "exp_avg_sq" not in state else beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g
    pos = v > 0
    return step, m, v, pos, torch.where(pos, v, torch.ones_like(v)).sqrt()


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
    step, m, v, pos, root = _adam_moments(g, group, state)
    root = torch.where(pos, root, torch.zeros_like(v))
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
    step, m, _, pos, root = _adam_moments(g, group, state)
    c2 = math.sqrt(1 - beta2 ** step)
    denom = torch.where(pos, root, torch.zeros_like(root)) / c2 + group["eps"]
    # θ* = p - a m / denom, a = lr / (1 - β1^t): dθ*/dg = -a ((1-β1)/denom - m/denom² · ddenom/dg),
    # ddenom/dg = (1-β2) g / (root c2) where v > 0
    droot = torch.where(pos, (1 - beta2) * g / root, torch.zeros_like(root)) / c2
    a = lr / (1 - beta1 ** step)
    return -a * v * ((1 - beta1) - m * droot / denom) / denom


class InnerStep:
    """The runner's optimizer as STORM's lookahead (step 4) and the model's update (step 7), for the
    trained parameters `params` ([(name, parameter, group index)]). `mode`: persistent (the
    optimizer's own state) or fresh_adam (the public code's empty Adam state every step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list, mode: str) -> None:
        self.kind = optimizer_kind(optimizer)
        if mode == "fresh_adam" and self.kind != "adam":
            raise ConfigError("method.lookahead=fresh_adam replays the public code's Adam lookahead and needs "
                              "optim=adam; or use method.lookahead=persistent")
        self.mode = mode
        adamw = isinstance(optimizer, torch.optim.AdamW)
        self.decoupled = [bool(g.get("decoupled_weight_decay", adamw))
                          for g in optimizer.param_groups]
        self.params = params

    def opt_state(self, optimizer, p) -> dict:
        # fresh_adam: the public code's `higher` lookahead starts every step from an EMPTY Adam state
        return optimizer.state.get(p, {}) if self.mode == "persistent" else {}

    def snapshot(self, optimizer, g: list, primals: dict | None) -> dict:
        """The lookahead's inputs besides g, as values (an LR scheduler and optimizer.step() change
        them before the next step): every group's hyperparameters; per parameter the optimizer state
        the derivative reads (Adam's moments and step count; for SGD only whether a momentum buffer
        exists, its value does not enter ∂θ*/∂g: a 0.0 stands in); the parameter itself only where
        its value enters ∂θ*/∂g (Adam's coupled weight decay; from `primals` when kept), else
        None."""
        value = lambda v: v.clone() if torch.is_tensor(v) else v  # noqa: E731  (a tensor lr may change in place)
        groups = [{**{k: value(group[k]) for k in HYPERPARAMETERS[self.kind]},
                   "decoupled": self.decoupled[gi]}
                  for gi, group in enumerate(optimizer.param_groups)]
        state, param = [], []
        for (n, p, k), gi in zip(self.params, g):
            st = self.opt_state(optimizer, p) if gi is not None else {}
            if self.kind == "sgd":
                state.append({"momentum_buffer": 0.0} if st.get("momentum_buffer") is not None else {})
            else:
                snap = {m: st[m].clone() for m in ("exp_avg", "exp_avg_sq") if m in st}
                state.append({**snap, "step": float(st["step"])} if "step" in st else snap)
            coupled = (gi is not None and self.kind == "adam" and groups[k]["weight_decay"]
                       and not self.decoupled[k])
            param.append((p.detach().clone() if primals is None else primals[n]) if coupled else None)
        return {"kind": self.kind, "g": list(g), "param": param, "state": state, "groups": groups}

    def vjp(self, second: dict, v: list) -> list:
        """u = (∂θ*/∂g)ᵀ v for step t's lookahead θ*(g), from what `snapshot` kept; a parameter that
        had no gradient at step t (it did not move) or has none now gets u = 0. ∂θ*/∂g is diagonal
        for SGD and Adam, so u is closed form (`lookahead_vjp`), no autograd graph."""
        u: list = [None] * len(self.params)
        batches: dict = {}  # SGD: the parameters of a group with the same momentum state, in one foreach op
        for i, ((_, p, k), gi, vi, st, pi) in enumerate(zip(self.params, second["g"], v,
                                                             second["state"], second["param"])):
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

    def update(self, optimizer, g: list) -> None:
        """Step 7: the model takes the lookahead's step."""
        if self.mode == "persistent":  # the lookahead's update, with the optimizer's own state
            for (_, p, _), gi in zip(self.params, g):
                p.grad = gi
            optimizer.step()
            return
        with torch.no_grad():  # fresh_adam: model <- θ*, as the public storm.py copies fθ back
            for (_, p, k), gi in zip(self.params, g):
                if gi is not None:
                    group = optimizer.param_groups[k]
                    p.copy_(lookahead(p, gi, group, {}, "adam", self.decoupled[k]))
                p.grad = None
        optimizer.step()  # every grad is None: no update; only marks the step for LR schedulers
