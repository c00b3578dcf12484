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

ARGS = ["experiment=smoke", "method=dal", "trainer.epochs=12", "trainer.batch_size=16", "trainer.threads=1"]
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


@pytest.mark.slow  # 21 processes that each import torch: minutes on a loaded machine
def test_twenty_sigkills_then_the_same_command_equal_the_uninterrupted_run(cli_env, tmp_path):
    t0 = time.monotonic()
    ref = nb("train", *ARGS, f"hydra.run.dir={tmp_path / 'ref'}", env=cli_env)
    assert ref.returncode == 0, ref.stderr
    wall, train = time.monotonic() - t0, result(tmp_path / "ref")["train_time_s"]
    rng = random.Random(25)
    run_dir = tmp_path / "run"
    killed = {"anywhere": 0, "training": 0, "checkpoint": 0}
    for _ in range(KILLS):
        mode = rng.choice(list(killed))
        attempts, ckpt = _attempts(run_dir), _stamp(run_dir / "checkpoint.pt")
        proc = start("train", *ARGS, f"hydra.run.dir={run_dir}", env=cli_env)
        if mode == "anywhere":  # start-up, data, set-up, training or the end: wherever the clock says
            _wait(lambda: False, proc, timeout=rng.uniform(0, wall))  # the delay, or the process's end
            reached = True
        elif mode == "training":  # a moment inside this attempt's epochs
            reached = _wait(lambda n=attempts: _attempts(run_dir) > n, proc)
            time.sleep(rng.uniform(0, train / 2))
        else:  # just after a checkpoint began to be written: the rename, the checksum, the next epoch
            reached = _wait(lambda t=ckpt: _stamp(run_dir / "checkpoint.pt") != t, proc)
            time.sleep(rng.uniform(0, 0.01))
        if reached and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed[mode] += 1
        proc.communicate(timeout=120)
    assert sum(killed.values()) >= KILLS // 2, killed  # most commands were killed before they ended
    again = nb("train", *ARGS, f"hydra.run.dir={run_dir}", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert_same_run(tmp_path / "ref", run_dir)
    assert not (run_dir / "failed.json").exists() and not (run_dir / "checkpoint.pt").exists()
