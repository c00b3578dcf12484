"""STORM: Self-Taught On-the-fly Meta loss Rescaling (Heck et al., AAAI 2025, arXiv 2412.12955): the
training step that composes the parts of this package. The method, its equations mapped to the code
and every deliberate departure from the paper: docs/methods/storm.md."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from noisybench.errors import ConfigError
from noisybench.methods.base import Batch, LossMethod
from noisybench.methods.storm import weighting
from noisybench.methods.storm.base_loss import build_base_loss
from noisybench.methods.storm.directional import supported
from noisybench.methods.storm.dropout import Passes, enable_dropout, rng_state
from noisybench.methods.storm.features import NUM_FULL, NUM_LOSS, GroupMemory, pass_stats
from noisybench.methods.storm.host import host
from noisybench.methods.storm.lookahead import LOOKAHEADS, InnerStep
from noisybench.methods.storm.meta import Pending, SecondOrder, pending_from_state, to_device
from noisybench.methods.storm.meta import grad as _grad
from noisybench.methods.storm.rescaler import Rescaler, adam_step
from noisybench.methods.storm.weighting import WEIGHT_NORMS
from noisybench.tasks import LossTerms
from noisybench.tasks.classification import ClassificationTask

FEATURES = ("full", "loss")
BN_SCOPES = ("batch", "class", "group")
META_SOURCES = ("noisy_train", "clean_val")


def _check(forward_passes, meta_interval, features, meta_source, rescaler_lr, weight_norm,
           lookahead, first_order, meta_loss_rescaling, bn_scope) -> None:
    """STORM's arguments, with the error a config of them gets."""
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
                          "batch), class (over the rows of each Ω head's class) or group (per DST slot, as "
                          "the public DST code calls Ω per slot)")
    if first_order and weight_norm in ("mass", "class_mass"):
        raise ConfigError(f"method.first_order=true with method.weight_norm={weight_norm} gives Ω no gradient "
                          "(the mass-preserved meta loss does not depend on w'); set method.first_order=false "
                          "or method.weight_norm=class_sum")


AUTO_WARMUP = 0.1  # sharpness=auto: τ = 1 for this share of the epochs (at least the first)


def _sharpness(value) -> float | str:
    """method.sharpness: a number in [1, 100] or auto."""
    if value == "auto":
        return "auto"
    try:
        tau = float(value)
    except (TypeError, ValueError):
        tau = math.nan
    if not 1.0 <= tau <= 100.0:
        raise ConfigError(f"method.sharpness={value} must be auto or a number in [1, 100] (1 = the paper's weights; "
                          "2 = twice the spread of Ω's logits)")
    return tau


class STORM(LossMethod):
    """The STORM step method (docs/methods/storm.md): per batch, the dropout passes (`Passes`), the
    features (`features`), the weights from Ω (`Rescaler`), the lookahead (`InnerStep`) and Ω's
    meta-gradient, whose second-order term step t+1 completes (`Pending`, `SecondOrder`)."""

    def __init__(self, num_classes: int, base_loss="ce", forward_passes: int = 3,
                 class_separation: bool = True, first_order: bool = False, meta_interval: int = 1,
                 features: str = "full", meta_loss_rescaling: bool = True, meta_source: str = "noisy_train",
                 rescaler_lr: float = 1e-2, weight_norm: str = "weight_sum", lookahead: str = "persistent",
                 bn_scope: str = "batch", trained_pass_dropout: bool = True, apply_weights: bool = True,
                 class_floor: float = 0.0, sharpness: float | str = 1.0) -> None:
        super().__init__(num_classes)
        _check(forward_passes, meta_interval, features, meta_source, rescaler_lr, weight_norm,
               lookahead, first_order, meta_loss_rescaling, bn_scope)
        self.base_name, self.base_loss, self.base_hparams = build_base_loss(base_loss, num_classes)
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
        # false: the control baseline (the paper's "no rescaling", the public code's --simulate_only): Ω
        # and its weights as usual, the model's update on the unweighted mean loss (`train_step`)
        self.apply_weights = bool(apply_weights)
        if not 0.0 <= float(class_floor) <= 1.0:
            raise ConfigError(f"method.class_floor={class_floor} must be in [0, 1] (0 = off; 0.5 = no class's mean "
                              "weight in a batch below half the batch's mean weight)")
        self.class_floor = float(class_floor)  # lift a starving class's weights (`weighting.class_boost`)
        self.sharpness = _sharpness(sharpness)  # w' = σ(τ logit w) (`weighting.sharpen`); "auto": `on_validation`
        self.needs_validation_scores = self.sharpness == "auto"
        self._tau = 1.0 if self.sharpness == "auto" else self.sharpness  # τ of the coming steps
        self._val_best: float | None = None  # sharpness=auto: the best noisy-validation accuracy so far
        self._tau_from = 1  # sharpness=auto: the first epoch (0-based) whose τ may differ from 1
        # sharpness=auto: where τ comes from (hparams); the runner passes no score from CLEAN validation labels
        self._auto_note = "off: no score on noisy validation labels (noise.apply_to_val=false, or none yet), so tau = 1"
        if bn_scope == "class" and not class_separation:
            raise ConfigError("method.bn_scope=class needs one Ω head per class (method.class_separation=true); "
                              "with a shared head set method.bn_scope=batch")
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
        self._pending: Pending | None = None
        self._weights: torch.Tensor | None = None  # [N * groups] last weight of every training sample this epoch
        self._groups = 1
        self.directional = "layers"  # "jvp" forces forward mode for a_i (tests compare the two)

    # ---- protocol hooks ----
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.base_loss(logits, targets)

    def _task(self):
        if self.task is None:  # used outside the runner: one label per sample
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
        self._tau_from = max(1, math.ceil(AUTO_WARMUP * num_epochs))
        if self.memory is not None:
            self.memory.clear()
            self.meta_memory.clear()
        if self._weights is not None:
            self._weights.fill_(float("nan"))
        self.base_loss.on_epoch_start(epoch, num_epochs)

    def on_validation(self, epoch: int, score: float, metric: str) -> None:
        """sharpness=auto: τ for the next epochs from the best accuracy on the noisy validation split so far
        (`weighting.auto_sharpness` of η = 1 − that accuracy, an upper bound of the share of corrupted
        labels); 1 during the first AUTO_WARMUP of the epochs, and 1 for a metric that is not an accuracy."""
        if metric != "acc":
            self._auto_note = f"off: the validation metric {metric} is not an accuracy, so tau = 1"
            return
        if math.isfinite(score):
            self._val_best = score if self._val_best is None else max(self._val_best, score)
        if self._val_best is not None and epoch + 1 >= self._tau_from:
            self._tau = weighting.auto_sharpness(1.0 - self._val_best)
            self._auto_note = "noisy validation accuracy"

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
                "pending": None if self._pending is None else self._pending._asdict(),
                "tau": self._tau, "val_best": self._val_best, "auto_note": self._auto_note, "tau_from": self._tau_from}

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
        self._pending = pending_from_state(state["pending"])
        if "tau" in state:  # (a checkpoint from before sharpness existed: τ = 1, as it trained)
            self._tau, self._val_best, self._auto_note = float(state["tau"]), state["val_best"], state["auto_note"]
            self._tau_from = int(state["tau_from"])
        self._model_id = None  # the next step re-reads model and optimizer and moves this state to their device

    def hparams(self) -> dict:
        # beyond the config's keys: the base loss's (also when named by its registry entry) and the
        # dropout STORM switched on
        return {"base_loss": self.base_name, **{f"base_loss.{k}": v for k, v in self.base_hparams.items()},
                "dropout_enabled": self.dropout_enabled}

    def result_extras(self, noise_report: dict) -> dict:
        """sharpness=auto: the last τ, where it came from, and the best noisy-validation accuracy it used."""
        if self.sharpness != "auto":
            return {}
        return {"sharpness": self._tau, "sharpness_source": self._auto_note, "sharpness_val_best": self._val_best}

    def state(self) -> dict:
        # sharpness=auto: the τ this epoch trained with (metrics.csv, the diagnostics figure)
        return {**self.base_loss.state(), **({"sharpness": self._tau} if self.sharpness == "auto" else {})}

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
        enabled = enable_dropout(model, self.forward_passes)
        if enabled is not None:
            self.dropout_enabled = enabled
        names = {id(p): n for n, p in model.named_parameters()}
        params = [(names[id(p)], p, gi) for gi, g in enumerate(optimizer.param_groups)
                  for p in g["params"] if p.requires_grad]
        self._inner = InnerStep(optimizer, params, self.lookahead)
        self._params = params
        loss_terms = lambda out, y: self._task().loss_terms(self.base_loss, out, y)  # noqa: E731  (a closure handed to Passes)
        self._passes = Passes(model, self.forward_passes, self.trained_pass_dropout, loss_terms)
        # a_i = <u, ∇ℓ_i> from the recorded layers when exact (no BatchNorm, one sample per row), else a JVP
        exact = self._groups == 1 and supported(model, [p for _, p, _ in params])
        self._second = SecondOrder(self._passes, params, exact and self.directional == "layers")
        if self._msize is None:  # kept by a resumed run (whose first batch may be an epoch's short last one)
            self._msize = int(batch_size)  # the code's msize = B: the window per class
        self._model_id = (id(model), id(optimizer))
        # a loaded state (a checkpoint may come back on the CPU) onto the model's device; the pending
        # update is kept: new model and optimizer objects are how a run resumes
        device = params[0][1].device if params else self._weights.device
        if self._pending is not None:
            self._pending = Pending(*to_device(tuple(self._pending), device))
            second = self._pending.second
            if second is not None and len(second["g"]) != len(params):
                raise ConfigError(f"STORM: the pending meta update has {len(second['g'])} parameters, the model "
                                  f"{len(params)}; resume with the model the state was saved with")

    @property
    def _kind(self) -> str:
        return self._inner.kind

    @property
    def _capture(self):
        return self._second.capture

    def _run(self, x: torch.Tensor):
        return self._passes.run(x)

    def _jvp_fn(self, primals: dict, x, y, rng0):
        return self._second.jvp_fn(primals, x, y, rng0)

    def _bn_group(self, terms: LossTerms) -> torch.Tensor | None:
        """The group whose statistics Ω's BatchNorm uses for each sample, or None (the whole batch):
        bn_scope=group: the sample's DST slot; bn_scope=class: its Ω head (its target class), so that
        each head normalises over the rows it serves and cannot park a class's weights at 0 (issue of
        whole starved classes, docs/methods/storm.md)."""
        if self.bn_scope == "class" and self.class_separation:
            return terms.target
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
            more = self._passes.extra(h, y, dropped) if self.forward_passes > 1 else ()
            # the features on the host (storm/features.py). On a CPU the tensors are read in place
            # (numpy views); on a GPU one copy of the passes' losses and logits and one of the
            # targets and memory slots (a sync, where Ω must wait anyway)
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

    # the weight normalisation (storm/weighting.py), with this run's norm and number of Ω heads
    def _norm(self) -> tuple[str, int]:
        return self.weight_norm, self.rescaler.w1.shape[0]

    def _scale(self, w: torch.Tensor, loss: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        return weighting.scale(*self._norm(), w, loss, head)

    def _sharp(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """sharpness τ != 1: Ω's weight w -> σ(τ logit w) (values) and its derivative (None at τ = 1)."""
        if self._tau == 1.0:
            return w, None
        return weighting.sharpen(w, self._tau)  # (differentiable: `_rescaled` is checked by autograd)

    def _boost(self, w: torch.Tensor, head: torch.Tensor) -> torch.Tensor | None:
        """class_floor > 0: the constant factor φ that lifts a starving class's weights (`weighting.class_boost`)."""
        if self.class_floor <= 0:
            return None
        return weighting.class_boost(w.detach(), head, self.rescaler.w1.shape[0], self.class_floor)

    def _effective(self, w: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """The weights the losses get: φ ⊙ w' (w' = w sharpened; φ = 1 without a class floor)."""
        w = self._sharp(w)[0]
        phi = self._boost(w, head)
        return w if phi is None else w * phi

    def _rescaled(self, share: float, values: torch.Tensor, w: torch.Tensor, rows: int,
                  ell: torch.Tensor, head: torch.Tensor):
        return weighting.rescaled(*self._norm(), share, values, self._effective(w, head), rows, ell, head)

    def _rescaled_grad(self, share: float, values: torch.Tensor, w: torch.Tensor, rows: int,
                       ell: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        w, dw = self._sharp(w)
        phi = self._boost(w, head)
        if phi is None:
            grad = weighting.rescaled_grad(*self._norm(), share, values, w, rows, ell, head)
        else:
            grad = phi * weighting.rescaled_grad(*self._norm(), share, values, w * phi, rows, ell, head)
        return grad if dw is None else grad * dw

    def _coef(self, terms: LossTerms, w: torch.Tensor, rows: int, head: torch.Tensor) -> torch.Tensor:
        return weighting.coefficients(*self._norm(), terms, self._effective(w, head), rows, head)

    def _batch_loss(self, terms: LossTerms, w: torch.Tensor, rows: int, head: torch.Tensor,
                    coef: torch.Tensor | None = None) -> torch.Tensor:
        return weighting.batch_loss(*self._norm(), terms, self._effective(w, head), rows, head, coef)

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
        # apply_weights=false: the model steps on the unweighted loss; everything Ω needs is as usual
        g_model = None if self.apply_weights else _grad(self._batch_loss(terms, torch.ones_like(wd), B, head),
                                                          params, retain_graph=True)
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
        self._inner.update(optimizer, g if g_model is None else g_model)  # step 7
        idx = batch.index if terms.plain else batch.index[terms.row]
        self._weights[idx if self._groups == 1 else idx * self._groups + terms.group] = (
            self._effective(wd, head).to(self._weights.dtype))
        if terms.plain:
            return terms.loss.detach().mean()  # unweighted mean row loss
        return ((terms.rest.sum() + terms.share * terms.loss.sum()) / B).detach()

    def _prepare(self, optimizer, x, y, g, f, head, terms: LossTerms, coef, B: int, rng0,
                 rec) -> Pending:
        """Before the model update: what the next step needs to finish this step's meta-gradient.

        The second-order term needs u = (∂θ*/∂g)ᵀ v with v known only at step t+1, and a_i = <u, ∇ℓ_i>
        at this step. Instead of θ*(g)'s autograd graph this keeps the inputs of `lookahead`
        (`InnerStep.snapshot`: g, the group hyperparameters, the optimizer state as values), from
        which `InnerStep.vjp` rebuilds θ*(g) with the same ops on the same values (same numbers),
        and what a_i needs (`SecondOrder.inputs`).
        """
        second = None
        if not self.first_order:
            a, primals = self._second.inputs(rec, coef, x, y, rng0)
            second = {**self._inner.snapshot(optimizer, g, primals), "a": a}
        return Pending(f, head, terms.loss.detach(), terms.share, B, second, self._bn_group(terms))

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

    def _omega_step(self, pending: Pending, v, meta_terms: LossTerms, w_m: torch.Tensor,
                    rows_m: int, head_m: torch.Tensor, w_prev: torch.Tensor | None = None) -> None:
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
            u = self._inner.vjp(pending.second, v)  # u = (∂θ*/∂g)ᵀ ∇θ* L_meta
            # a_i = <u, ∇ℓ_i> at step t's parameters and masks
            a = self._second.directional(pending.second["a"], u)
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
