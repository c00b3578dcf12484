"""One process per run directory and per sweep directory (noisybench.locks, docs/runs.md)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import nb, start

from noisybench import locks

HOLD = ("import sys, time; from noisybench import locks; locks.acquire(sys.argv[1]); print('held', flush=True); "
        "time.sleep(60)")


def _holder(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _listing(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(d.rglob("*"))}


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_never_blocks(tmp_path):
    d = tmp_path / "run"
    proc = _holder(d)
    try:
        with pytest.raises(locks.DirBusy) as e:
            locks.acquire(d)
        msg = str(e.value)
        assert f"pid {proc.pid} on {socket.gethostname()} since " in msg and str(d) in msg
    finally:
        proc.kill()
        proc.wait()
    assert (d / locks.LOCK).is_file()  # the killed holder's lock file stays ...
    with locks.locked(d):  # ... and does not block: the kernel released its flock
        info = json.loads((d / locks.LOCK).read_text())
        assert info["pid"] == os.getpid()
        with locks.locked(d):  # re-entrant within a process
            pass
    assert not locks._HELD


def test_a_stale_lock_file_never_blocks(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / locks.LOCK).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": "2020-01-01"}))
    assert locks.acquire(d)
    locks.release(d)


def test_a_symlinked_lock_file_is_not_followed(tmp_path):
    d, target = tmp_path / "run", tmp_path / "victim.txt"
    d.mkdir()
    target.write_text("precious\n")
    (d / locks.LOCK).symlink_to(target)
    with pytest.raises(locks.DirBusy, match="symlink"):
        locks.acquire(d)
    assert target.read_text() == "precious\n"


ARGS = ["dataset.subset=600", "trainer.epochs=200", "trainer.batch_size=8", "trainer.device=cpu",
        "trainer.progress=false", "trainer.threads=1"]


def _wait(pred, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_two_trains_on_one_run_dir_the_second_is_refused_and_writes_nothing(cli_env, tmp_path):
    run_dir = tmp_path / "run"
    first = start("train", *ARGS, f"hydra.run.dir={run_dir}", env=cli_env)
    try:
        _wait(lambda: (run_dir / "metrics.csv").is_file(), first)
        before = _listing(run_dir)
        second = nb("train", *ARGS, f"hydra.run.dir={run_dir}", env=cli_env)
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(f"noisybench: error: {run_dir} is in use by pid {first.pid} on ")
        assert "Traceback" not in second.stdout + second.stderr
        after = _listing(run_dir)
        # nothing of the second process: the first one's epochs go on (metrics.csv, train.log, checkpoint)
        assert set(after) - set(before) <= {"checkpoint.pt", "checkpoint.pt.sha256"}
        for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "identity.json", "attempt.json"):
            assert after[name] == before[name], name
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # the killed process's lock file is there; it does not block (the rerun would resume: tests/test_resume.py)
    assert (run_dir / locks.LOCK).is_file()
    with locks.locked(run_dir):
        pass


@pytest.mark.slow  # the same lock, taken by the sweep's callback: a second real sweep takes seconds
def test_two_sweeps_into_one_sweep_dir_the_second_is_refused(cli_env, tmp_path):
    sweep = tmp_path / "sweep"
    first = start("train", "-m", *ARGS, "seed=0,1", f"hydra.sweep.dir={sweep}", env=cli_env)
    try:
        _wait(lambda: any(sweep.glob("*/metrics.csv")), first)
        before = (sweep / "multirun.yaml").stat().st_mtime_ns
        second = nb("train", "-m", *ARGS, "seed=0,1", f"hydra.sweep.dir={sweep}", env=cli_env)
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"noisybench: error: {sweep} is in use by pid {first.pid}"), \
            second.stderr
        assert "another noisybench sweep" in lines[0]
        assert (sweep / "multirun.yaml").stat().st_mtime_ns == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
