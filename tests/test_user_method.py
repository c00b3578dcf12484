"""The worked example of docs/development.md: a method in the user's own module and config
folder (examples/user_method/), trained in a small sweep over one of its hyperparameters and
reported, as a user runs it (a subprocess with PYTHONPATH and --config-dir). The method has no
`hparams()`: its hyperparameters are recorded from its config."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from noisybench.methods.base import LossMethod

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "user_method"
CONF = EXAMPLE / "conf"
SWEEP = ["experiment=smoke", "method=bootstrap", "method.beta=0.8,0.95"]


@pytest.fixture
def mymethods(monkeypatch):
    """The user's module importable, as PYTHONPATH=examples/user_method makes it."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import mymethods

    return mymethods


def test_soft_bootstrapping_mixes_label_and_prediction(mymethods):
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)
    t = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    expected = -((0.8 * t + 0.2 * p) * p.log()).sum(1)
    loss = mymethods.SoftBootstrapping(3, beta=0.8)(logits, y)
    assert torch.allclose(loss, expected)
    g, = torch.autograd.grad(loss.sum(), logits)
    g_ref, = torch.autograd.grad(expected.sum(), logits)
    assert torch.allclose(g, g_ref)
    assert mymethods.SoftBootstrapping.hparams is LossMethod.hparams  # no override needed


def test_user_method_is_found_by_searchpath_too(cli_env, monkeypatch):
    """`hydra.searchpath=[file://DIR]` selects the user's method as `--config-dir DIR` does."""
    from noisybench.preflight import preflight

    monkeypatch.syspath_prepend(str(EXAMPLE))
    sp = f"hydra.searchpath=[file://{CONF}]"
    assert preflight([sp, "experiment=smoke", "method=bootstrap", "method.beta=0.8"]) == (None, None)
    err, _ = preflight([sp, "experiment=smoke", "method=bootstrap", "method.beta=1.5"])
    assert "method.beta=1.5" in err


def check_report(out: str) -> None:
    # one row per value of the swept hyperparameter: recorded from the method's config
    assert "| bootstrap (beta=0.8) |" in out and "| bootstrap (beta=0.95) |" in out, out


def test_user_method_as_a_user_runs_it(cli_env, tmp_path):
    path = [str(EXAMPLE), *filter(None, [cli_env.get("PYTHONPATH")])]
    env = dict(cli_env, PYTHONPATH=os.pathsep.join(path))
    sweep = tmp_path / "sweep"

    def nb(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "noisybench", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, check=False)

    p = nb("train", "-m", f"--config-dir={CONF}", *SWEEP, f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr
    assert "2 ran to the end" in p.stderr
    p = nb("report", str(sweep))
    assert p.returncode == 0, p.stderr
    check_report(p.stdout)
