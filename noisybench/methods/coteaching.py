"""Co-teaching (Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy
Labels", NeurIPS 2018), as the authors' public code computes it (bhanML/Co-teaching, `loss.py`
`loss_coteaching` and `main.py`'s `rate_schedule` and training loop):

- two networks: net 1 is the run's model, net 2 a second model of the same architecture with its own
  initialisation (seeded from the run's seed, a stream of its own) and its own optimizer, the run's
  `optim.optimizer` (same class and hyperparameters);
- each step, both compute the per-sample cross entropy of the batch; each keeps its
  `num_remember = int((1 - forget_rate) * batch size)` smallest-loss samples (argsort of the loss);
  net 1 is updated on the samples net 2 kept and net 2 on those net 1 kept (the exchange), each with
  the mean cross entropy over them;
- the forget rate follows `rate_schedule = ones(n_epoch) * τ; rate_schedule[:num_gradual] =
  linspace(0, τ**exponent, num_gradual)` (num_gradual = T_k = 10, exponent = c = 1), where τ is the
  noise rate: `forget_rate: null` (default) takes the config's nominal `noise.rate`, which is side
  information (result.json says `uses_noise_rate: true`); a number gives τ; `estimate` estimates it
  from the noisy data (below).

The run's model (net 1, the code's `model1`) is the one evaluated, selected and checkpointed as the
model; the code evaluates and prints both networks (test_acc1, test_acc2), the paper gives one number
per method; net 2 is not evaluated here. metrics.csv logs the epoch's `forget_rate` and each net's
label precision (the share of clean labels among the samples it kept: the code's "pure ratio",
evaluation only); `train_loss` is net 1's updating loss (its mean CE over the samples net 2 kept).

`forget_rate: estimate`: τ̂ = 1 - mean(diag T̂), the noise rate a transition matrix implies for
balanced classes, with T̂ forward correction's anchor-point estimate (noisybench.methods.forward,
Patrini et al., CVPR 2017) from net 1's softmax over the training split (eval mode), taken at the start
of epoch `estimate_epoch` (0-based; default 1, after one epoch); before it the forget rate is 0 (both
nets learn from every sample, as the code's schedule nearly does at first), from it on the schedule
with τ̂ (clipped to [0, 0.99]); on MNIST-1D it overestimates the noise (docs/methods/coteaching.md).
result.json's `method_result` holds τ (and τ̂ with the epoch it was taken at).

Departures, each deliberate:
1. The epochs. The code's epoch 0 only evaluates the untrained nets; its training epochs 1..n_epoch-1
   use rate_schedule[epoch]. Here the runner's (0-based) epoch e is the code's training epoch e + 1,
   so its forget rate is rate_schedule[e + 1] (τ/(T_k - 1) in the first epoch, τ**c from epoch
   T_k - 2, τ from epoch T_k - 1), for any number of epochs (the code's array needs n_epoch >= T_k).
   The paper's Algorithm 1 (R(T) = 1 - min(T τ / T_k, τ), updated after epoch T) starts one step
   lower; the code is followed.
2. The loss scale. The code returns `F.cross_entropy(..)` (already the mean over the kept samples)
   divided by num_remember again; here the mean (the paper's L over the kept set). With the code's
   optimizer (Adam) a constant factor changes almost nothing; with SGD it would scale the learning rate.
3. At least one sample is kept (num_remember >= 1; the code's int() gives 0 for a small last batch
   with a high forget rate, and a mean over nothing).
4. The learning-rate schedule is the run's (`optim.*`), not the code's Adam plan (lr and β1 decayed
   from epoch 80). The runner's scheduler steps the run's optimizer only; before each step of net 2,
   its optimizer takes the hyperparameters the scheduler set in the run's (`lr`, and `momentum` /
   `betas` for schedules that change them), param group by param group, so both follow one schedule.
5. τ from `noise.rate`: the nominal rate. For symmetric noise with `include_true_class: true` the
   expected share of wrong labels is rate * (K - 1) / K (docs/datasets-and-noise.md): τ then forgets
   slightly more than the noise (the code's noise excludes the true class, where the two agree).
   Give `method.forget_rate=NUMBER` to choose τ yourself.
6. Argsort is stable (ties keep batch order; the code's np.argsort quicksort leaves them unspecified).

One label per sample only: a dialogue-state-tracking dataset (several labels per turn) is refused.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from noisybench.errors import ConfigError
from noisybench.methods.base import Batch, Builders, LossMethod, at_least_float32
from noisybench.methods.forward import anchor_point_estimate
from noisybench.schema import NonNegativeInt, PositiveFloat, PositiveInt, Probability

NET2_STREAM = 2  # net 2's initialisation seed: SeedSequence((run seed, NET2_STREAM)), a stream of its own


def rate_schedule(tau: float, num_gradual: int, exponent: float, n_epoch: int) -> np.ndarray:
    """The code's `rate_schedule` (main.py) over its epochs 0..n_epoch-1, for any n_epoch (the code's
    two lines need n_epoch >= num_gradual; this is their prefix otherwise)."""
    ramp = np.linspace(0, tau ** exponent, num_gradual)
    return np.array([ramp[t] if t < num_gradual else tau for t in range(n_epoch)], dtype=np.float64)


def forget_rate_at(epoch: int, tau: float, num_gradual: int, exponent: float) -> float:
    """The forget rate of the runner's 0-based `epoch`: the code's rate_schedule[epoch + 1] (departure 1)."""
    return float(rate_schedule(tau, num_gradual, exponent, epoch + 2)[epoch + 1])


def small_loss_exchange(loss_1: torch.Tensor, loss_2: torch.Tensor,
                        forget_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the samples net 1 keeps, the samples net 2 keeps): each net's int((1 - forget_rate) * n)
    smallest losses (at least one). Net 1 is updated on net 2's, net 2 on net 1's."""
    num_remember = max(1, int((1 - forget_rate) * len(loss_1)))
    keep_1 = torch.argsort(loss_1.detach(), stable=True)[:num_remember]
    keep_2 = torch.argsort(loss_2.detach(), stable=True)[:num_remember]
    return keep_1, keep_2


def implied_noise_rate(transition: np.ndarray) -> float:
    """1 - mean(diag T): the share of wrong labels T implies for balanced classes."""
    return float(1.0 - np.mean(np.diag(transition)))


class CoTeaching(LossMethod):
    def __init__(self, num_classes: int, forget_rate: Union[Literal["estimate"], Probability, None] = None,
                 num_gradual: NonNegativeInt = 10, exponent: PositiveFloat = 1.0,
                 estimate_epoch: PositiveInt = 1, estimate_batch_size: PositiveInt = 1024) -> None:
        super().__init__(num_classes)
        self.forget_rate = forget_rate if forget_rate in (None, "estimate") else float(forget_rate)
        self.num_gradual, self.exponent = int(num_gradual), float(exponent)
        self.estimate_epoch, self.estimate_batch_size = int(estimate_epoch), int(estimate_batch_size)
        self.needs_noise_rate = forget_rate is None
        self.tau: Optional[float] = None if forget_rate in (None, "estimate") else float(forget_rate)
        self.net2: Optional[nn.Module] = None  # built in on_model (a submodule: in state_dict)
        self.optimizer2: Optional[torch.optim.Optimizer] = None
        self.register_buffer("kept", torch.zeros(2, 0, dtype=torch.long))  # [2, N]: times kept this epoch
        self._x: Optional[torch.Tensor] = None
        self._seed = 0
        self._epoch = 0
        self._estimated_at: Optional[int] = None

    # ---- set-up (the runner's hooks, in its order) ----

    def on_train_start(self, x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> None:
        if y_train.dim() != 1:
            raise ConfigError("method=coteaching needs one label per sample (a classification dataset); "
                              f"this {getattr(self.task, 'kind', 'dataset')} dataset has structured labels")
        self._x, self._seed = x_train, int(seed)
        self.kept = torch.zeros(2, len(y_train), dtype=torch.long, device=y_train.device)

    def on_noise_rate(self, rate: float | None) -> None:
        if rate is None:
            raise ConfigError("method.forget_rate=null takes noise.rate, which this noise does not have; give "
                              "method.forget_rate=NUMBER (e.g. method.forget_rate=0.2) or method.forget_rate=estimate")
        if not 0.0 <= float(rate) < 1.0:
            raise ConfigError(f"method.forget_rate=null takes noise.rate={rate}, outside [0, 1); "
                              "give method.forget_rate=NUMBER in [0, 1)")
        self.tau = float(rate)

    def on_model(self, model: nn.Module, optimizer: torch.optim.Optimizer, builders: Builders) -> None:
        seed = int(np.random.SeedSequence((self._seed, NET2_STREAM)).generate_state(1)[0])
        self.net2 = builders.model(seed)
        self.optimizer2 = builders.optimizer(self.net2.parameters())
        if len(self.optimizer2.param_groups) != len(optimizer.param_groups):
            raise ConfigError("method=coteaching: optim.optimizer gives the second network "
                              f"{len(self.optimizer2.param_groups)} parameter groups, the first "
                              f"{len(optimizer.param_groups)}; use an optimizer that groups parameters by architecture")

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if self.forget_rate == "estimate" and self.estimate_epoch >= num_epochs:
            raise ConfigError(f"method.estimate_epoch={self.estimate_epoch} leaves no epoch after the estimate "
                              f"(trainer.epochs={num_epochs}); give trainer.epochs={self.estimate_epoch + 1} or more, "
                              "or method.forget_rate=NUMBER")
        self._epoch = epoch
        self.kept.zero_()

    # ---- the step ----

    def current_forget_rate(self) -> float:
        if self.tau is None:  # forget_rate=estimate, before the estimate
            return 0.0
        return forget_rate_at(self._epoch, self.tau, self.num_gradual, self.exponent)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(at_least_float32(logits), targets, reduction="none")

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
        if self.net2 is None:
            raise RuntimeError("Co-teaching's second network is built in on_model: call it before training")
        if self.forget_rate == "estimate" and self.tau is None and self._epoch >= self.estimate_epoch:
            self._estimate(model)
        self.net2.train()
        loss_1 = self.batch_losses(model(batch.x), batch.y)
        loss_2 = self.batch_losses(self.net2(batch.x), batch.y)
        keep_1, keep_2 = small_loss_exchange(loss_1, loss_2, self.current_forget_rate())
        update_1, update_2 = loss_1[keep_2].mean(), loss_2[keep_1].mean()
        optimizer.zero_grad(set_to_none=True)
        update_1.backward()
        optimizer.step()
        self._follow_schedule(optimizer)
        self.optimizer2.zero_grad(set_to_none=True)
        update_2.backward()
        self.optimizer2.step()
        for k, keep in enumerate((keep_1, keep_2)):  # for the label precision (evaluation only)
            rows = batch.index.to(self.kept.device)[keep.to(self.kept.device)]
            self.kept[k].index_add_(0, rows, torch.ones_like(rows))
        return update_1.detach()

    def _follow_schedule(self, optimizer: torch.optim.Optimizer) -> None:
        """Net 2's optimizer takes the hyperparameters the run's scheduler set in the run's (departure 4)."""
        for mine, theirs in zip(self.optimizer2.param_groups, optimizer.param_groups):
            for key, value in theirs.items():
                if key != "params":
                    mine[key] = value

    def _estimate(self, model: nn.Module) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            bs = self.estimate_batch_size
            probs = torch.cat([torch.softmax(at_least_float32(model(self._x[i:i + bs])), 1)
                               for i in range(0, len(self._x), bs)])
        model.train(was_training)
        tau = implied_noise_rate(anchor_point_estimate(probs.double().cpu().numpy()))
        self.tau, self._estimated_at = min(max(tau, 0.0), 0.99), self._epoch

    # ---- state, diagnostics, record ----

    def get_extra_state(self) -> dict:
        return {"optimizer2": None if self.optimizer2 is None else self.optimizer2.state_dict(),
                "epoch": self._epoch, "tau": self.tau, "estimated_at": self._estimated_at}

    def set_extra_state(self, state: dict) -> None:
        if state["optimizer2"] is not None:
            if self.optimizer2 is None:
                raise RuntimeError("Co-teaching's state loads after on_model (the second network and its optimizer)")
            self.optimizer2.load_state_dict(state["optimizer2"])
        self._epoch, self._estimated_at = int(state["epoch"]), state["estimated_at"]
        self.tau = None if state["tau"] is None else float(state["tau"])

    def state(self) -> dict:
        return {"forget_rate": self.current_forget_rate()}

    def epoch_metrics(self, corrupted: torch.Tensor) -> dict:
        """Label precision of each net's kept samples this epoch (evaluation only)."""
        out = {}
        clean = ~corrupted.to(self.kept.device)
        for k, name in enumerate(("label_precision_1", "label_precision_2")):
            total = int(self.kept[k].sum())
            out[name] = float(self.kept[k][clean].sum()) / total if total else None
        return out

    def result_extras(self, noise_report: dict) -> dict:
        source = {None: "noise.rate (the config's nominal noise rate: side information)",
                  "estimate": "estimated: 1 - mean diag of the anchor-point T of net 1"}
        out = {"tau": self.tau, "tau_from": source.get(self.forget_rate, "method.forget_rate"),
               "evaluated": "net 1 (the run's model)"}
        if self.forget_rate == "estimate":
            out["tau_estimated_at_epoch"] = self._estimated_at
        return out
