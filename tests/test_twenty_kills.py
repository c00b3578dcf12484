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
    startup, epoch = max(0.5, time.monotonic() - t0 - train), train / 40
    rng = random.Random(25)
    run_dir = tmp_path / "run"
    killed = {"start-up": 0, "training": 0, "checkpoint": 0}
    for _ in range(3 * KILLS):  # until twenty kills landed (a command may end before its moment comes)
        if sum(killed.values()) == KILLS or (run_dir / "result.json").exists():
            break
        mode = rng.choice(list(killed))
        attempts, stamp = _attempts(run_dir), _stamp(run_dir / "checkpoint.pt.sha256")
        proc = start("train", *ARGS, f"hydra.run.dir={run_dir}", env=cli_env)
        if mode == "start-up":  # imports, the lock, the config, the data, set-up: before training begins
            _wait(lambda n=attempts: _attempts(run_dir) > n, proc, timeout=rng.uniform(0, startup))
        elif mode == "training":  # a moment inside this attempt's first three epochs
            _wait(lambda n=attempts: _attempts(run_dir) > n, proc)
            time.sleep(rng.uniform(0, 3 * epoch))
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
    assert not list(run_dir.glob(".*.tmp"))  # nor half-written copies of a checkpoint


def test_two_kills_between_checksum_and_checkpoint_leave_a_checkpoint_that_matches(make_cfg, tmp_path, monkeypatch):
    """What the twenty kills found: an attempt killed after writing the checksum of its next checkpoint
    but before the checkpoint itself, resumed and killed there again, left a checksum file that listed
    neither the checkpoint in place nor anything else on disk: the next attempt set a good checkpoint
    aside and started over. The checksum file must always list the checkpoint in place."""
    import noisybench.rundir as rundir
    from noisybench.rundir import RunDir

    cfg = make_cfg("trainer.epochs=5")
    state = lambda epoch, attempt: {"epoch": epoch, "batch": 0, "rows": [{}] * epoch, "perm": None,  # noqa: E731
                                    "attempt": attempt}  # each attempt's bytes differ (its clock, its history)
    RunDir(tmp_path, cfg).save_checkpoint(state(1, "a"))
    write = rundir.atomic_write_bytes

    def killed_before_the_checkpoint(path, data):
        if path.name == "checkpoint.pt":
            raise KeyboardInterrupt("killed")  # the checksum is written; the checkpoint never arrives
        write(path, data)

    for attempt in ("b", "c"):  # each resumes from the epoch-1 checkpoint and is killed saving epoch 2
        rd = RunDir(tmp_path, cfg)
        assert rd.load_checkpoint("cpu")["epoch"] == 1
        monkeypatch.setattr(rundir, "atomic_write_bytes", killed_before_the_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            rd.save_checkpoint(state(2, attempt))
        monkeypatch.setattr(rundir, "atomic_write_bytes", write)
    assert RunDir(tmp_path, cfg).load_checkpoint("cpu")["epoch"] == 1
    assert not list(tmp_path.glob("*.bad-*"))


def test_half_written_files_of_a_killed_attempt_are_removed_by_the_next(make_cfg, tmp_path):
    from noisybench.train import run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    leftovers = [run_dir / ".checkpoint.pt.k3x9a_qz.tmp", run_dir / ".metrics.csv.0a1b2c3d.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a checkpoint")
    (run_dir / "notes.tmp").write_text("the user's")
    run(make_cfg("trainer.threads=1"), run_dir, progress=False)
    assert not any(p.exists() for p in leftovers) and (run_dir / "notes.tmp").read_text() == "the user's"
