"""Twenty SIGKILLs at random moments of one short run (during start-up, inside an epoch, while a
checkpoint is written), each followed by the same command: the run ends with the numbers of an
uninterrupted run (metrics.csv byte for byte, result.json's numbers equal)."""
from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from cli_helpers import nb, start
from test_resume import assert_same_run, result

# 40 short epochs: each kill costs the run at most the epoch it was in, so twenty of them never finish it
ARGS = ["experiment=smoke", "method=dal", "trainer.epochs=40", "trainer.batch_size=16", "trainer.threads=1"]
KILLS = 20


def _attempts(run_dir: Path) -> int:
    """How many attempts have begun training (their `started` / `resumed` line in train.log)."""
    log = run_dir / "train.log"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return sum(" started " in f" {ln} " or " resumed " in f" {ln} " for ln in lines)


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _wait(pred, proc, timeout: float = 120) -> bool:
    """Until `pred()` (True) or the process ended (False)."""
    end = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None or time.monotonic() > end:
            return False
        time.sleep(0.002)
    return True


@pytest.mark.slow  # about 22 processes that each import torch: a minute, several on a loaded machine
def test_twenty_sigkills_then_the_same_command_equal_the_uninterrupted_run(cli_env, tmp_path):
    t0 = time.monotonic()
    ref = nb("train", *ARGS, f"hydra.run.dir={tmp_path / 'ref'}", env=cli_env)
    assert ref.returncode == 0, ref.stderr
    train = result(tmp_path / "ref")["train_time_s"]
    startup = max(0.5, time.monotonic() - t0 - train)
    rng = random.Random(25)
    run_dir = tmp_path / "run"
    killed = {"start-up": 0, "training": 0, "checkpoint": 0}
    for _ in range(3 * KILLS):  # until twenty kills landed (a command may end before its moment comes)
        if sum(killed.values()) == KILLS or (run_dir / "result.json").exists():
            break
        mode = rng.choice(list(killed))
        attempts, stamp = _attempts(run_dir), _stamp(run_dir / "checkpoint.pt.sha256")
        proc = start("train", *ARGS, f"hydra.run.dir={run_dir}", env=cli_env)
        if mode == "start-up":  # imports, the lock, the config, the data, set-up: wherever the clock says
            _wait(lambda: False, proc, timeout=rng.uniform(0, startup))
        elif mode == "training":  # a moment inside this attempt's epochs
            _wait(lambda n=attempts: _attempts(run_dir) > n, proc)
            time.sleep(rng.uniform(0, 0.5))
        else:  # just after a checksum was written: between it and its checkpoint, or in the next epoch
            _wait(lambda t=stamp: _stamp(run_dir / "checkpoint.pt.sha256") != t, proc)
            time.sleep(rng.uniform(0, 0.005))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed[mode] += 1
        proc.communicate(timeout=120)
    assert sum(killed.values()) == KILLS and not (run_dir / "result.json").exists(), killed
    assert killed["training"] and killed["checkpoint"], killed
    again = nb("train", *ARGS, f"hydra.run.dir={run_dir}", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert_same_run(tmp_path / "ref", run_dir)
    assert result(run_dir)["resumed_from"]  # it did continue from checkpoints, not only start over
    assert not (run_dir / "failed.json").exists() and not (run_dir / "checkpoint.pt").exists()
    assert not list(run_dir.glob("*.bad-*"))  # no kill left a file the runner had to set aside
