"""The fast path (noisybench.fastpath) on the CPU: bf16 autocast really runs (the model's layers output
bfloat16 in training steps and evaluation) while every loss and STORM's Ω stay float32; bf16 runs learn
as well as float32 runs; the keys are recorded, validated, and a bf16 run resumes bit for bit."""
from __future__ import annotations

import json
import signal

import pytest
import torch
from conftest import group_options
from omegaconf import OmegaConf

from noisybench.errors import ConfigError
from noisybench.fastpath import resolve
from noisybench.methods.base import LossMethod
from noisybench.rundir import Interrupted
from noisybench.tasks.classification import ClassificationTask
from noisybench.train import run

# mnist1d, 1000 training samples, 8 epochs of Adam at lr 1e-2, 20 % noise: about 0.3-0.5 test accuracy
# (chance 0.1), 2000 test samples. Measured |bf16 - fp32| test accuracy: 0.003-0.028 over ce/dal/storm and
# seeds 0/1; seed 0 vs seed 1 in float32: 0.04-0.09. A bf16 run is a differently rounded trajectory, so
# the tolerance is that of another seed, 0.06; a broken cast (losses in bf16 saturating, no learning)
# lands at chance, >= 0.17 away.
LEARN = ["dataset.subset=1000", "trainer.epochs=8", "trainer.batch_size=128", "optim=adam",
         "optim.optimizer.lr=1e-2", "noise.rate=0.2", "trainer.threads=1"]
TOLERANCE = 0.06


class Dtypes:
    """Every module call's output dtype, by (module class, training mode) -- a global forward hook."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, bool, torch.dtype, torch.dtype | None]] = set()

    def __enter__(self):
        def hook(module, args, output):
            if torch.is_tensor(output):
                first = args[0].dtype if args and torch.is_tensor(args[0]) else None
                kind = "loss" if isinstance(module, LossMethod) else type(module).__name__
                self.seen.add((kind, module.training, output.dtype, first))

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def outputs(self, kind: str | None = None, training: bool | None = None) -> set[torch.dtype]:
        return {o for k, t, o, _ in self.seen if (kind is None or k == kind) and (training is None or t == training)}


def check_autocast(d: Dtypes, storm: bool) -> None:
    layers = {o for k, t, o, _ in d.seen if k in ("Linear", "Conv1d")}
    assert torch.bfloat16 in layers
    # training steps AND evaluation ran under autocast
    assert {torch.bfloat16} <= {o for k, t, o, _ in d.seen if k == "Linear" and t}
    assert {torch.bfloat16} <= {o for k, t, o, _ in d.seen if k == "Linear" and not t}
    # the losses: bf16 logits in, float32 losses out
    assert d.outputs("loss") == {torch.float32}
    assert torch.bfloat16 in {i for k, _, _, i in d.seen if k == "loss"}
    if storm:
        assert d.outputs("Rescaler") == {torch.float32}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m == "storm" else m
                                    for m in group_options("method")])
def test_bf16_autocast_on_cpu_learns_like_float32(make_cfg, tmp_path, method):
    fp32 = run(make_cfg(f"method={method}", "trainer.precision=fp32", *LEARN, tiny=False), tmp_path / "a",
               progress=False)
    with Dtypes() as d:
        bf16 = run(make_cfg(f"method={method}", "trainer.precision=bf16", *LEARN, tiny=False), tmp_path / "b",
                   progress=False)
    check_autocast(d, method == "storm")
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert bf16["test_last"] > 0.2, bf16["test_last"]  # it learnt (chance is 0.1)
    assert abs(bf16["test_last"] - fp32["test_last"]) <= TOLERANCE, (fp32["test_last"], bf16["test_last"])


def test_storm_under_bf16_keeps_features_and_omega_in_float32(make_cfg, tmp_path):
    """The default suite's STORM check (its accuracy comparison is slow): one tiny epoch."""
    with Dtypes() as d:
        r = run(make_cfg("method=storm", "trainer.precision=bf16", "trainer.epochs=1"), tmp_path, progress=False)
    check_autocast(d, storm=True)
    assert r["precision"] == "bf16" and r["method_metrics"]["mean_weight"] is not None


def test_fp32_is_the_cpu_default_and_uses_no_bf16(make_cfg, tmp_path):
    with Dtypes() as d:
        r = run(make_cfg("trainer.epochs=1"), tmp_path, progress=False)
    assert torch.bfloat16 not in d.outputs()
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert (r["precision"], r["channels_last"], r["compile"]) == ("fp32", False, False)
    assert on_disk["precision"] == "fp32" and on_disk["config"]["trainer"]["precision"] == "auto"


def test_auto_and_channels_last_resolution():
    def t(**kw):
        return OmegaConf.create({"precision": "auto", "channels_last": "auto", **kw})

    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    images, sequences = torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 40)
    cpu = torch.device("cpu")
    assert resolve(t(), cpu, images, conv).record() == {"precision": "fp32", "channels_last": False, "compile": False}
    fast = resolve(t(precision="bf16"), cpu, images, conv)
    assert fast.precision == "bf16" and fast.channels_last  # auto: on with bf16 for a Conv2d model on images
    assert not resolve(t(precision="bf16"), cpu, sequences, conv).channels_last
    assert not resolve(t(precision="bf16", channels_last=False), cpu, images, conv).channels_last
    assert resolve(t(channels_last=True), cpu, images, conv).channels_last
    model = resolve(t(channels_last=True), cpu, images, conv).prepare(conv)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="trainer.precision=fp16"):
        resolve(t(precision="fp16"), cpu)


def test_bf16_run_resumes_bit_for_bit(make_cfg, tmp_path, monkeypatch):
    """A bf16 run stopped by Ctrl-C after epoch 1 resumes from its checkpoint to the same numbers as an
    uninterrupted bf16 run (autocast adds no state: no GradScaler)."""
    args = ("method=dal", "trainer.precision=bf16", "trainer.epochs=3")
    whole = run(make_cfg(*args), tmp_path / "whole", progress=False)
    evaluate = ClassificationTask.evaluate

    def interrupt_once(self, *a, **kw):
        monkeypatch.setattr(ClassificationTask, "evaluate", evaluate)
        signal.raise_signal(signal.SIGINT)  # the runner checkpoints at the end of this epoch and stops
        return evaluate(self, *a, **kw)

    monkeypatch.setattr(ClassificationTask, "evaluate", interrupt_once)
    with pytest.raises(Interrupted):
        run(make_cfg(*args), tmp_path / "cut", progress=False)
    resumed = run(make_cfg(*args), tmp_path / "cut", progress=False)
    assert [r["epochs_done"] for r in resumed["resumed_from"]] == [1]
    assert (tmp_path / "whole" / "metrics.csv").read_bytes() == (tmp_path / "cut" / "metrics.csv").read_bytes()
    assert resumed["test_last"] == whole["test_last"] and resumed["precision"] == "bf16"
