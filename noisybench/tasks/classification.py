"""One label per sample (every image and text dataset): the runner's original behaviour."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from noisybench.errors import ConfigError
from noisybench.metrics import METRICS, detection, memorization
from noisybench.pipeline import build_data
from noisybench.tasks.base import LossTerms, Task


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    if len(x) == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    return torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict_with_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels, per-sample cross-entropy against `y`) in one pass: the predictions of
    `predict`, and plain CE of the same logits (float32, whatever the method's loss) for the
    detection score (noisybench.metrics.detection)."""
    model.eval()
    if len(x) == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device), torch.empty(0, device=x.device)
    preds, losses = [], []
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        preds.append(logits.argmax(dim=1))
        losses.append(F.cross_entropy(logits.float(), y[i:i + batch_size], reduction="none"))
    return torch.cat(preds), torch.cat(losses)


def _num(t: torch.Tensor) -> float | None:
    v = float(t)
    return None if math.isnan(v) else v


class ClassificationTask(Task):
    kind = "classification"
    model_hint = "a classification model, e.g. model=mlp"

    def __init__(self, metric: str = "acc", extra_metrics: list[str] | None = None) -> None:
        super().__init__(metric, extra_metrics)
        self._constant: dict = {}  # loss_terms' index tensors per batch size (STORM calls it every step)
        if self.metric not in METRICS:
            raise ConfigError(f"dataset.metric={self.metric!r} is unknown; use one of {', '.join(METRICS)}")
        unknown = [m for m in self.extra_metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"dataset.extra_metrics has unknown {unknown}; use any of {', '.join(METRICS)}")

    def build_data(self, cfg):
        return build_data(cfg)

    def model_kwargs(self, ds):
        return {"input_shape": ds.input_shape, "num_classes": ds.num_classes}

    def probe_batch(self, ds):
        # uint8 images reach the model as floats (the dataset's transform normalises them in front of it)
        return ds.x_train[:2].cpu().float()

    def suggest_models(self, input_shape, failed):
        """Models by the rank of a sample's shape; mlp and linear flatten any input."""
        rank = len(input_shape)
        what, models = ({1: ("feature vectors", ["linear", "mlp"]),
                         2: ("(C, L) sequences or (H, W) images", ["mlp", "linear"]),
                         3: ("(C, H, W) images", ["cnn28", "resnet18", "mlp"])}
                        .get(rank, ("these inputs", ["mlp", "linear"])))
        names = [m for m in models if m != failed] or ["mlp"]
        return (f"a model that takes inputs of shape {tuple(input_shape)}, e.g. "
                f"{' or '.join(f'model={m}' for m in names)} for {what}")

    def loss_terms(self, method, outputs, targets) -> LossTerms:
        loss = method(outputs, targets)  # float32 under autocast (methods.base.at_least_float32)
        key = (len(targets), targets.device, loss.dtype)
        if key not in self._constant:  # rows, groups and the (zero) rest of a batch size: built once, read only
            if len(self._constant) >= 8:  # (batch sizes of a run: a few)
                self._constant.clear()
            n = len(targets)
            rows = torch.arange(n, device=targets.device)
            self._constant[key] = (rows, torch.zeros_like(rows), torch.zeros(n, device=loss.device, dtype=loss.dtype))
        rows, group, rest = self._constant[key]
        return LossTerms(loss, outputs, targets, group, rows, 1.0, rest, plain=True)

    def losses(self, method, outputs, targets):
        return method(outputs, targets)  # = combine(loss_terms(...)), without the bookkeeping

    def evaluate(self, model, ds, batch_size):
        metric = METRICS[self.metric]
        pred_train, loss_train = predict_with_loss(model, ds.x_train, ds.y_train, batch_size)
        mem_noisy, mem_clean = memorization(pred_train, ds.y_train, ds.y_train_clean)
        detect_auc, noisy_in_lowk = detection(loss_train, ds.y_train != ds.y_train_clean)
        pred_test = predict(model, ds.x_test, batch_size)
        return {  # host syncs, once per evaluated epoch
            "val": _num(metric(predict(model, ds.x_val, batch_size), ds.y_val)),
            "test": _num(metric(pred_test, ds.y_test)),
            **{f"test_{m}": _num(METRICS[m](pred_test, ds.y_test)) for m in self.extra_metrics},
            "train_noisy": _num(metric(pred_train, ds.y_train)),
            "memorized_noisy_frac": _num(mem_noisy),
            "memorized_clean_frac": _num(mem_clean),
            # per-sample CE against the noisy labels, scored with the clean ones (evaluation only)
            "detect_auc": _num(detect_auc),
            "detect_noisy_in_lowk": _num(noisy_in_lowk),
        }
