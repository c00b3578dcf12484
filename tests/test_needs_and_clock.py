"""Small things a user hits: a missing module (numba for STORM), numba failing to compile and a missing
Hydra launcher plugin end in one line with the pip command; `train_time_s` counts training only (not a
tracking server's time-outs, not numba's first compiles); MLflow and W&B give up on a server in seconds;
a resume under another torch thread count says its numbers may differ in the last digits."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time

import pytest
from cli_helpers import nb

from noisybench import loggers
from noisybench.needs import MissingDependency, explain, missing_plugin, pip_line
from noisybench.rundir import Interrupted
from noisybench.train import run

TINY = ("trainer.threads=1", "trainer.epochs=2", "dataset.subset=128", "trainer.batch_size=64")


def _shadowing(tmp_path, package: str, init: str) -> str:
    """A directory that, first on PYTHONPATH, replaces `package` by one whose __init__ is `init`."""
    root = tmp_path / f"shadow_{package}"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(init)
    return str(root)


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and err[0].startswith("noisybench: error:"), p.stderr[-2000:]
    assert "Traceback" not in p.stderr + p.stdout and "HYDRA_FULL_ERROR" not in p.stderr
    return err[0]


# ---- the pip command ------------------------------------------------------------------------------
def test_the_pip_command_comes_from_noisybenchs_extras():
    assert pip_line("hydra-joblib-launcher") == "pip install 'noisybench[cluster]'"
    assert pip_line("wandb") == "pip install 'noisybench[wandb]'"  # the smallest extra that has it (not trackers)
    assert pip_line("numba").startswith("pip install 'numba")  # a dependency of its own: its requirement


def test_without_numba_storm_is_one_line_with_the_pip_command(cli_env, tmp_path):
    shadow = _shadowing(tmp_path, "numba", "raise ModuleNotFoundError(\"No module named 'numba'\", name='numba')\n")
    env = {**cli_env, "PYTHONPATH": os.pathsep.join([shadow, cli_env.get("PYTHONPATH", "")])}
    line = _one_error_line(nb("train", "experiment=smoke", "method=storm", f"hydra.run.dir={tmp_path / 'r'}",
                              env=env))
    assert "method=storm needs the numba package" in line and "No module named 'numba'" in line
    assert line.endswith(pip_line("numba"))
    assert not (tmp_path / "r" / "result.json").exists()


def test_without_the_launcher_plugin_hydra_launcher_local_is_one_line(cli_env, tmp_path):
    shadow = _shadowing(tmp_path, "hydra_plugins", "")  # a plain package: hides every installed plugin
    env = {**cli_env, "PYTHONPATH": os.pathsep.join([shadow, cli_env.get("PYTHONPATH", "")])}
    line = _one_error_line(nb("train", "-m", "hydra/launcher=local", "experiment=smoke", "seed=0,1",
                              f"hydra.sweep.dir={tmp_path / 's'}", env=env))
    assert ("hydra/launcher=local needs Hydra's joblib launcher plugin (hydra-joblib-launcher), which is not "
            "installed (or does not import): pip install 'noisybench[cluster]'") in line
    assert not (tmp_path / "s").exists()


def test_a_plugin_that_is_installed_keeps_hydras_message(monkeypatch):
    import importlib

    msg = "In 'hydra/launcher/local': Could not load 'hydra/launcher/noisybench_joblib'"
    real = importlib.import_module

    def without_joblib(name, *args):
        if name.startswith("hydra_plugins.hydra_joblib_launcher"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_joblib)
    assert missing_plugin(msg).startswith("hydra/launcher=local needs Hydra's joblib launcher plugin")
    monkeypatch.setattr(importlib, "import_module", lambda name, *args: object())
    assert missing_plugin(msg) is None  # the plugin is there: the problem is another, Hydra's words stay
    assert missing_plugin("Could not load 'hydra/launcher/nosuch'") is None


def test_explain_finds_the_innermost_missing_module():
    try:
        try:
            raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
        except ImportError as inner:
            raise ImportError("Error loading 'x.Y': ...") from inner
    except ImportError as e:
        got = explain(e, "dataset=tsv")
        kept = e
    assert isinstance(got, MissingDependency) and "dataset=tsv needs the scikit-learn package" in str(got)
    assert explain(ValueError("no"), "x") is None
    assert explain(kept, "x", only="numba") is None  # the runner converts numba's failures only


def test_numba_failing_to_compile_during_training_is_one_line(make_cfg, tmp_path, monkeypatch):
    from numba.core.errors import TypingError

    import noisybench.train as train

    def failing(*args, **kwargs):
        raise TypingError("No implementation of function Function(<built-in function getitem>) found\nmore")

    monkeypatch.setattr(train, "run_epoch", failing)
    with pytest.raises(MissingDependency) as e:
        run(make_cfg(*TINY), tmp_path / "r", progress=False)
    assert "\n" not in str(e.value) and "numba could not compile the kernels of method=ce (TypingError: No " \
                                       "implementation" in str(e.value) and "pip install" in str(e.value)
    failed = json.loads((tmp_path / "r" / "failed.json").read_text())
    assert failed["error"] == str(e.value) and failed["type"] == "MissingDependency"


# ---- the clock of train_time_s ------------------------------------------------------------------------
class Clock:
    """time.perf_counter, plus seconds the test says have passed."""

    def __init__(self) -> None:
        self.real, self.offset = time.perf_counter, 0.0

    def __call__(self) -> float:
        return self.real() + self.offset


class SlowTracker(loggers.Tracker):
    """A tracker whose server takes 1000 s to answer at the start and 100 s per epoch."""

    choice = "slow"

    def __init__(self, clock: Clock, stop_at: int | None = None) -> None:
        self.clock, self.stop_at = clock, stop_at

    def start(self, info) -> dict:
        self.clock.offset += 1000.0
        return {}

    def log_epoch(self, row: dict) -> None:
        self.clock.offset += 100.0
        if row["epoch"] == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the runner checkpoints at the end of this epoch

    def finish(self, record: dict) -> None:
        self.clock.offset += 100.0

    def close(self, status) -> None:
        pass


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "perf_counter", c)
    return c


def test_tracker_time_and_numba_compiles_are_not_training_time(make_cfg, tmp_path, monkeypatch, clock):
    from numba.core import event

    from noisybench.methods.ce import CrossEntropy

    original = CrossEntropy.epoch_metrics

    def compiling(self, corrupted):  # a kernel compiled at its first call inside the epoch: 500 s
        with event.trigger_event("numba:compile", data={"dispatcher": None, "args": ()}):
            clock.offset += 500.0
        return original(self, corrupted)

    monkeypatch.setattr(CrossEntropy, "epoch_metrics", compiling)
    monkeypatch.setattr(loggers, "build_all", lambda cfg: [SlowTracker(clock)])
    record = run(make_cfg(*TINY), tmp_path / "r", progress=False)
    assert 0 < record["train_time_s"] < 100  # 2 x 500 s of compiling, 1200 s of tracker calls: none of it


def test_a_resume_keeps_the_clock_off_the_tracker_too(make_cfg, tmp_path, monkeypatch, clock):
    monkeypatch.setattr(loggers, "build_all", lambda cfg: [SlowTracker(clock, stop_at=0)])
    with pytest.raises(Interrupted):
        run(make_cfg(*TINY), tmp_path / "r", progress=False)
    monkeypatch.setattr(loggers, "build_all", lambda cfg: [SlowTracker(clock)])
    record = run(make_cfg(*TINY), tmp_path / "r", progress=False)
    assert record["resumed_from"] and 0 < record["train_time_s"] < 100


# ---- tracking servers that do not answer ----------------------------------------------------------
def _info(tmp_path) -> loggers.RunInfo:
    return loggers.RunInfo(run_dir=tmp_path, name="r", group=None, sweep_dir=None, identity="0" * 16, hparams={})


class Stop(Exception):
    pass


def test_mlflow_gives_up_on_a_server_in_seconds_unless_the_user_says_otherwise(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow.tracking

    seen = {}

    def client(tracking_uri):
        seen.update({k: os.environ.get(k) for k in loggers.MLFLOW_HTTP_LIMITS})
        raise Stop

    for key in loggers.MLFLOW_HTTP_LIMITS:  # absent now, and again after the test
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "55")  # the user's own choice
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", client)
    with pytest.raises(Stop):
        loggers.MLflow(tracking_uri="http://127.0.0.1:9").start(_info(tmp_path))
    assert seen == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "55"}  # MLflow's own: 7 retries, factor 2, 120 s


def test_wandb_online_waits_seconds_for_its_server(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    seen = {}

    def init(**kwargs):
        seen["timeout"] = kwargs["settings"].init_timeout
        raise Stop

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    with pytest.raises(Stop):
        loggers.WandB(mode="online").start(_info(tmp_path))
    assert seen["timeout"] == loggers.WANDB_INIT_TIMEOUT <= 30  # W&B's own: 90 s


# ---- resume under another thread count ----------------------------------------------------------------
def test_a_resume_under_another_thread_count_warns_once(make_cfg, tmp_path, monkeypatch, caplog):
    import torch

    monkeypatch.setattr(loggers, "build_all", lambda cfg: [SlowTracker(Clock(), stop_at=0)])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(Interrupted):
            run(make_cfg(*TINY), tmp_path / "r", progress=False)
        monkeypatch.setattr(loggers, "build_all", lambda cfg: [])
        with caplog.at_level(logging.WARNING):
            record = run(make_cfg(*TINY, "trainer.threads=2"), tmp_path / "r", progress=False)
    finally:
        torch.set_num_threads(threads)
    lines = [r.getMessage() for r in caplog.records if "torch thread" in r.getMessage()]
    assert lines == ["noisybench: warning: resuming with 2 torch thread(s), the checkpoint was computed with 1: "
                     "results may differ from an uninterrupted run in the last digits (trainer.threads=1 resumes "
                     "as it ran)"]
    assert record["torch_threads_by_attempt"] == [1, 2]


def test_a_resume_under_the_same_thread_count_says_nothing(make_cfg, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(loggers, "build_all", lambda cfg: [SlowTracker(Clock(), stop_at=0)])
    with pytest.raises(Interrupted):
        run(make_cfg(*TINY), tmp_path / "r", progress=False)
    monkeypatch.setattr(loggers, "build_all", lambda cfg: [])
    with caplog.at_level(logging.WARNING):
        record = run(make_cfg(*TINY), tmp_path / "r", progress=False)
    assert not [r for r in caplog.records if "torch thread" in r.getMessage()]
    assert "torch_threads_by_attempt" not in record and record["resumed_from"]



def test_a_real_numba_compile_is_measured_once_and_a_compiled_call_not_at_all():
    from numba import njit

    from noisybench.stopwatch import numba_compiles

    @njit(cache=False)
    def inner(x):
        return x + 1

    @njit(cache=False)
    def outer(x):
        return inner(x) * 2  # compiling outer compiles inner inside it: one span, not two

    spans: list[float] = []
    with numba_compiles(spans.append):
        assert outer(1) == 4
        assert outer(2) == 6  # compiled already: no span
    assert len(spans) == 1 and spans[0] > 0
