"""Shared fixtures: compose the REAL config tree and shrink it for fast CPU tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose

from noisybench.config import CONFIG_NAME, hydra_context, register_resolvers

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list[str]:
    """Every choice of a config group: the config folder is the registry."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="session", autouse=True)
def offline():
    """Tests never touch the network: dataset configs read NOISYBENCH_DOWNLOAD."""
    old = os.environ.get("NOISYBENCH_DOWNLOAD")
    os.environ["NOISYBENCH_DOWNLOAD"] = "false"
    yield
    if old is None:
        os.environ.pop("NOISYBENCH_DOWNLOAD", None)
    else:
        os.environ["NOISYBENCH_DOWNLOAD"] = old


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One cache dir per test session (mnist1d is generated into it once, offline)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_cfg(data_dir):
    """make_cfg(*overrides, tiny=True) -> composed DictConfig, shrunk unless tiny=False."""

    def _make(*overrides: str, tiny: bool = True):
        register_resolvers()
        shrink = [f"data_dir={data_dir}", "trainer.device=cpu", "trainer.progress=false"]
        if tiny:
            shrink += ["dataset.subset=128", "trainer.epochs=2", "trainer.batch_size=64"]
        with hydra_context():
            return compose(CONFIG_NAME, overrides=[*shrink, *overrides])

    return _make


@pytest.fixture
def cli_env(data_dir, tmp_path) -> dict:
    """Environment for CLI subprocess tests: cached data, outputs under tmp_path."""
    env = dict(os.environ)
    env.update(NOISYBENCH_DATA_DIR=str(data_dir), NOISYBENCH_OUTPUT_DIR=str(tmp_path / "outputs"),
               NOISYBENCH_MULTIRUN_DIR=str(tmp_path / "multirun"))
    return env
