"""The worked example of docs/development.md: a method in the user's own module and config
folder (examples/user_method/), trained in a small sweep over one of its hyperparameters and
reported, as a user runs it (a subprocess with PYTHONPATH and --config-dir)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "user_method"
CONF = EXAMPLE / "conf"
SWEEP = ["experiment=smoke", "method=sce", "method.beta=0.5,1.0"]


@pytest.fixture
def mymethods(monkeypatch):
    """The user's module importable, as PYTHONPATH=examples/user_method makes it."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import mymethods

    return mymethods


def test_sce_is_alpha_ce_plus_beta_rce(mymethods):
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    p_y = torch.softmax(logits, 1)[torch.arange(2), y]
    expected = 0.1 * -p_y.log() + 1.0 * -math.log(1e-4) * (1 - p_y)
    loss = mymethods.SymmetricCrossEntropy(3)(logits, y)
    assert torch.allclose(loss, expected)
    sce = mymethods.SymmetricCrossEntropy(3, alpha=0.2, beta=0.5)
    assert sce.hparams() == {"alpha": 0.2, "beta": 0.5}


def check_report(out: str) -> None:
    # one row per value of the swept hyperparameter: it is recorded through hparams()
    assert "| sce (beta=0.5) |" in out and "| sce (beta=1.0) |" in out, out


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
