"""Small things users hit (issue: run directories under attack): git_revision is noisybench's own or
absent, the Ctrl-C line names the command that continues, the smoke preset fits any dataset."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import noisybench
from noisybench.cli import _interrupted_line
from noisybench.data import take_subset
from noisybench.rundir import Interrupted

SRC = Path(noisybench.__file__).resolve().parent.parent
PRINT_REVISION = "from noisybench.utils import git_revision; print(git_revision())"


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _user_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    _git("init", "-q", cwd=path)
    (path / "pyproject.toml").write_text('[project]\nname = "userproject"\n')
    _git("add", ".", cwd=path)
    _git("-c", "user.name=u", "-c", "user.email=u@example.org", "commit", "-qm", "user's own", cwd=path)
    return path


def _revision(cwd: Path, pythonpath: Path) -> str:
    return subprocess.run([sys.executable, "-c", PRINT_REVISION], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath)}, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None or not (SRC / ".git").exists(), reason="needs git and a checkout")
def test_git_revision_is_noisybenchs_own_even_from_inside_another_repository(tmp_path):
    user = _user_repo(tmp_path / "user")
    rev = _revision(user, SRC)
    assert rev.split("-")[0] == _git("rev-parse", "HEAD", cwd=SRC)
    assert rev.split("-")[0] != _git("rev-parse", "HEAD", cwd=user)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_an_install_inside_a_users_repository_reports_no_revision(tmp_path):
    user = _user_repo(tmp_path / "user")
    for site in (user, user / ".venv" / "lib" / "python3" / "site-packages"):  # beside their pyproject, or deeper
        (site / "noisybench").mkdir(parents=True, exist_ok=True)
        for name in ("__init__.py", "utils.py"):
            shutil.copy(SRC / "noisybench" / name, site / "noisybench" / name)
        assert _revision(user, site) == "None"


def test_the_interrupted_line_names_the_command_that_continues():
    d = Path("outputs/2026-01-01/12-00-00-abcdef")
    e = Interrupted(2, "epoch 2 of 5, batch 3 of 9", d)
    default = _interrupted_line(e, ["method=gce"])  # a default directory: the same command starts a new run
    assert default.endswith(f"continue with: noisybench train --resume {d}") and "same command" not in default
    named = _interrupted_line(e, ["method=gce", f"hydra.run.dir={d}"])
    assert "run the same command to resume (or noisybench train --resume" in named


def test_take_subset_at_most_takes_what_there_is():
    idx = np.arange(100)
    assert len(take_subset(idx, None, 0, at_most=256)) == 100
    assert np.array_equal(take_subset(idx, None, 0, at_most=40), take_subset(idx, 40, 0))  # same samples as subset
    with pytest.raises(Exception, match="dataset.subset=300 is more than the 100"):
        take_subset(idx, 300, 0, at_most=256)  # an explicit subset is still checked


def test_the_smoke_preset_runs_on_a_dataset_smaller_than_256(make_cfg):
    from noisybench.pipeline import build_data

    small = make_cfg("experiment=smoke", "dataset.loader.num_samples=200", tiny=False)
    ds, _ = build_data(small)
    assert len(ds.y_train) == 144  # 160 in the training pool, 16 held out for validation: all of them
    ds, _ = build_data(make_cfg("experiment=smoke", tiny=False))
    assert len(ds.y_train) == 256
