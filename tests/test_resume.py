"""Interruption and failure: exact resume after SIGKILL / SIGINT / SIGTERM, sweeps that skip what is
done, one outcome per run directory, failures the parent process sees under every launcher."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import nb, start
from omegaconf import OmegaConf

from noisybench.report.records import load_runs

# numbers that legitimately differ between an interrupted and an uninterrupted run
VOLATILE = {"train_time_s", "resumed_from", "checkpoint", "git_revision", "git_revisions", "torch_threads"}
STOP_SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143)}


def wait_for(pred, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before it could be interrupted: "
                                 f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.01)


def epochs_done(run_dir: Path) -> int:
    p = run_dir / "metrics.csv"
    return max(0, len(p.read_text().splitlines()) - 1) if p.is_file() else 0


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def assert_same_run(a: Path, b: Path) -> None:
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    ra, rb = result(a), result(b)
    assert {k: v for k, v in ra.items() if k not in VOLATILE} == {k: v for k, v in rb.items() if k not in VOLATILE}


METHOD_ARGS = {
    "ce": ["method=ce"],
    "dal": ["method=dal"],
    "storm": ["method=storm", "method.forward_passes=2"],
    "elr": ["method=elr"],  # per-sample targets in the checkpoint
    "forward": ["method=forward", "method.warmup_epochs=2.5"],  # T estimated after the kill
    # net 2, its optimizer and the kept counts in the checkpoint; the forget rate still ramping at the kill
    "coteaching": ["method=coteaching", "method.num_gradual=6"],
}


# dal, storm, elr, forward, coteaching and SIGTERM take the same code paths as ce and SIGINT (their states are
# checked bit for bit in-process by tests/test_method_state.py): `slow` keeps the default suite short
SLOW_METHODS = ("dal", "storm", "elr", "forward", "coteaching")


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_METHODS else m
                                    for m in sorted(METHOD_ARGS)])
def test_sigkill_then_same_command_equals_uninterrupted_run(method, cli_env, tmp_path):
    args = [*METHOD_ARGS[method], "dataset.subset=1200", "trainer.epochs=8", "trainer.batch_size=32",
            "trainer.device=cpu", "trainer.progress=false", "trainer.threads=1"]
    ref = nb("train", *args, f"hydra.run.dir={tmp_path / 'ref'}", env=cli_env)
    assert ref.returncode == 0, ref.stderr
    run_dir = tmp_path / "run"
    proc = start("train", *args, f"hydra.run.dir={run_dir}", env=cli_env)
    wait_for(lambda: epochs_done(run_dir) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "result.json").exists(), "the run finished before it was killed: make it longer"
    assert (run_dir / "checkpoint.pt").is_file()
    again = nb("train", *args, f"hydra.run.dir={run_dir}", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert_same_run(tmp_path / "ref", run_dir)
    if method == "storm":  # the default sharpness=auto moved τ off 1 (its state is in the checkpoint too)
        header, *rows = (run_dir / "metrics.csv").read_text().splitlines()
        tau = [float(r.split(",")[header.split(",").index("sharpness")]) for r in rows]
        assert tau[0] == 1.0 and max(tau) > 1.0, tau
    rec = result(run_dir)
    assert rec["resumed_from"] and rec["resumed_from"][0]["epochs_done"] >= 1  # killed after epoch 2 had begun
    assert not (run_dir / "checkpoint.pt").exists()  # removed once result.json is written
    assert sorted(p.name for p in run_dir.glob("*.json")) == ["attempt.json", "identity.json", "noise.json",
                                                               "result.json"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "SIGTERM" else n
                                  for n in sorted(STOP_SIGNALS)])
def test_signal_stops_at_a_safe_point_with_one_line_and_resumes_exactly(name, cli_env, tmp_path):
    signum, code = STOP_SIGNALS[name]
    # small batches: an epoch has 150 steps, so the signal lands inside one (resume mid-epoch)
    args = ["method=dal", "dataset.subset=1200", "trainer.epochs=4", "trainer.batch_size=8", "trainer.device=cpu",
            "trainer.progress=false", "trainer.threads=1"]
    ref = nb("train", *args, f"hydra.run.dir={tmp_path / 'ref'}", env=cli_env)
    assert ref.returncode == 0, ref.stderr
    run_dir = tmp_path / "run"
    proc = start("train", *args, f"hydra.run.dir={run_dir}", env=cli_env)
    wait_for(lambda: epochs_done(run_dir) >= 1, proc)
    time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("noisybench: interrupted at ") and "run the same command to resume" in err
    assert "Traceback" not in out + err
    assert not (run_dir / "result.json").exists() and (run_dir / "checkpoint.pt").is_file()
    again = nb("train", "--resume", str(run_dir), env=cli_env)
    assert again.returncode == 0, again.stderr
    assert_same_run(tmp_path / "ref", run_dir)


def test_rerun_of_a_finished_run_is_skipped(cli_env, tmp_path):
    args = ["experiment=smoke", f"hydra.run.dir={tmp_path / 'r'}"]
    assert nb("train", *args, env=cli_env).returncode == 0
    before = (tmp_path / "r" / "result.json").read_bytes()
    p = nb("train", *args, env=cli_env)
    assert p.returncode == 0 and "already finished, skipped" in p.stdout
    assert (tmp_path / "r" / "result.json").read_bytes() == before


def test_a_directory_of_another_config_is_refused_and_keeps_its_result(cli_env, tmp_path):
    run_dir = tmp_path / "r"
    assert nb("train", "experiment=smoke", f"hydra.run.dir={run_dir}", env=cli_env).returncode == 0
    before = (run_dir / "result.json").read_bytes()
    p = nb("train", "experiment=smoke", "optim.optimizer.lr=1e6", "method=gce", f"hydra.run.dir={run_dir}",
           env=cli_env)
    assert p.returncode != 0
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("noisybench: error:")
    assert "optim.optimizer.lr=1000000.0 (it has 0.05)" in err and "method=gce (it has ce)" in err
    assert (run_dir / "result.json").read_bytes() == before and not (run_dir / "failed.json").exists()


def test_failure_leaves_only_failed_json_and_a_retry_clears_it(cli_env, tmp_path):
    run_dir = tmp_path / "r"
    # a config error only the data can reveal (the subset is larger than the training split)
    bad = nb("train", "experiment=smoke", "dataset.subset=100000", f"hydra.run.dir={run_dir}", env=cli_env)
    assert bad.returncode == 2 and "dataset.subset=100000 is more than" in bad.stderr
    assert (run_dir / "failed.json").is_file()
    assert not (run_dir / "result.json").exists() and not (run_dir / "checkpoint.pt").exists()
    df, left_out = load_runs([run_dir])
    assert df.empty and left_out["failed"] == [str(run_dir)]
    # the same failing config again: retried (and fails again), still exactly one outcome
    assert nb("train", "experiment=smoke", "dataset.subset=100000", f"hydra.run.dir={run_dir}",
              env=cli_env).returncode == 2
    assert json.loads((run_dir / "attempt.json").read_text())["action"] == "retried"


@pytest.mark.slow  # a real subprocess sweep or signal: moved out of the default suite (time)
def test_keep_checkpoint_and_checkpoint_every(cli_env, tmp_path):
    args = ["experiment=smoke", "trainer.epochs=3"]
    assert nb("train", *args, "trainer.keep_checkpoint=true", f"hydra.run.dir={tmp_path / 'k'}",
              env=cli_env).returncode == 0
    assert (tmp_path / "k" / "checkpoint.pt").is_file()
    import torch

    final = torch.load(tmp_path / "k" / "checkpoint.pt", weights_only=True)
    assert final["epoch"] == 3 and "model" in final
    assert nb("train", *args, "trainer.checkpoint_every=0", f"hydra.run.dir={tmp_path / 'off'}",
              env=cli_env).returncode == 0
    assert result(tmp_path / "off")["checkpoint"]["writes"] == 0
    assert result(tmp_path / "k")["checkpoint"]["writes"] == 3  # after epochs 1, 2 and the final one
    mode = (tmp_path / "k" / "result.json").stat().st_mode
    umask = os.umask(0)
    os.umask(umask)
    if not umask & 0o040:
        assert mode & stat.S_IRGRP, "records must be readable by the user's group"


def _sweep_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir())


def test_sweep_killed_after_some_jobs_reruns_only_the_missing_ones(cli_env, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "method=ce,gce", "seed=0,1,2", "dataset.subset=600", "trainer.epochs=3", "trainer.device=cpu",
            "trainer.threads=1", f"hydra.sweep.dir={sweep}"]
    proc = start("train", *args, env=cli_env)
    wait_for(lambda: len(list(sweep.glob("*/result.json"))) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.read_bytes() for p in sweep.glob("*/result.json")}
    assert 2 <= len(done) < 6
    p = nb("train", *args, env=cli_env)
    assert p.returncode == 0, p.stderr
    assert f"{len(done)} skipped (already finished)" in p.stderr
    assert f"{6 - len(done)} ran to the end" in p.stderr
    assert len(_sweep_dirs(sweep)) == 6
    for d in _sweep_dirs(sweep):
        attempt = json.loads((d / "attempt.json").read_text())
        assert (attempt["action"] == "skipped") == (d.name in done)
        if d.name in done:
            assert (d / "result.json").read_bytes() == done[d.name]
    df, left_out = load_runs([sweep])
    assert len(df) == 6 and not any(left_out.values())


def test_another_grid_in_the_same_sweep_dir_never_overwrites_or_double_counts(cli_env, tmp_path):
    sweep = tmp_path / "sweep"
    first = nb("train", "-m", "experiment=smoke", "method=ce,gce", "seed=0,1,2", f"hydra.sweep.dir={sweep}",
               env=cli_env)
    assert first.returncode == 0, first.stderr
    results = {p: p.read_bytes() for p in sweep.glob("*/result.json")}
    second = nb("train", "-m", "experiment=smoke", "method=gce", "seed=0,1", f"hydra.sweep.dir={sweep}",
                env=cli_env)
    assert second.returncode == 0 and "2 skipped" in second.stderr
    assert {p: p.read_bytes() for p in sweep.glob("*/result.json")} == results
    table = (sweep / "table.md").read_text()
    assert "| ce | " in table and "(3) |" in table and "(5)" not in table and "(6)" not in table
    # a copied run directory is the same run: counted once, and said so
    src = next(d for d in _sweep_dirs(sweep) if "method=ce" in d.name)
    shutil.copytree(src, tmp_path / "copy")
    df, left_out = load_runs([sweep, tmp_path / "copy"])
    assert len(df) == 6 and len(left_out["duplicate"]) == 1


def test_sweep_resume_by_directory(cli_env, tmp_path):
    sweep = tmp_path / "sweep"
    assert nb("train", "-m", "experiment=smoke", "seed=0,1", f"hydra.sweep.dir={sweep}", env=cli_env).returncode == 0
    victim = _sweep_dirs(sweep)[0]
    (victim / "result.json").unlink()  # as if it had been interrupted before it finished
    p = nb("train", "--resume", str(sweep), env=cli_env)
    assert p.returncode == 0, p.stderr
    assert "1 ran to the end" in p.stderr and "1 skipped" in p.stderr
    assert (victim / "result.json").is_file()


@pytest.mark.parametrize("launcher", ["basic", pytest.param("joblib", marks=pytest.mark.slow)])
def test_sweep_with_failing_jobs_exits_nonzero_and_lists_them(launcher, cli_env, tmp_path):
    sweep = tmp_path / "sweep"
    p = nb("train", "-m", f"hydra/launcher={launcher}", "experiment=smoke", "dataset.subset=100000,256",
           f"hydra.sweep.dir={sweep}", env=cli_env)
    assert p.returncode == 1, p.stderr
    assert "1 ran to the end" in p.stderr and "1 failed" in p.stderr
    assert "dataset.subset=100000 is more than" in p.stderr and "Traceback" not in p.stderr
    table = (sweep / "table.md").read_text()
    assert "Not in the tables: 1 failed" in table
    assert len(list(sweep.glob("*/result.json"))) == 1 and len(list(sweep.glob("*/failed.json"))) == 1


@pytest.mark.slow  # a real subprocess sweep or signal: moved out of the default suite (time)
def test_a_sweep_with_a_diverging_job_counts_it_marked_and_exits_nonzero(cli_env, tmp_path):
    """Divergence is a result (a rerun skips it), marked in the table and the sweep line; exit 1."""
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=smoke", "optim=adam", "optim.optimizer.lr=1e6,0.001", f"hydra.sweep.dir={sweep}"]
    p = nb("train", *args, env=cli_env)
    assert p.returncode == 1, p.stderr
    assert "2 ran to the end" in p.stderr and "1 of the finished runs diverged" in p.stderr
    assert "the run diverged" in p.stderr and "Traceback" not in p.stderr
    assert len(list(sweep.glob("*/result.json"))) == 2
    assert ", 1 diverged)" in (sweep / "table.md").read_text()
    again = nb("train", *args, env=cli_env)
    assert again.returncode == 1 and "2 skipped" in again.stderr


FAKE_SUBMITIT = '''
"""A stand-in for submitit in the job process: its USR2 handler requeues and exits."""
import os, signal, sys, threading, time
from pathlib import Path
run_dir = Path(sys.argv[1])
def requeue(signum, frame):
    print(f"requeue: checkpoint={(run_dir / 'checkpoint.pt').is_file()}", flush=True)
    sys.exit(3)
signal.signal(signal.SIGUSR2, requeue)
def later():
    while not (run_dir / "metrics.csv").is_file() or len((run_dir / "metrics.csv").read_text().splitlines()) < 2:
        time.sleep(0.01)
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGUSR2)
threading.Thread(target=later, daemon=True).start()
from noisybench.cli import main
sys.exit(main(["train", *sys.argv[2:], f"hydra.run.dir={run_dir}"]))
'''


@pytest.mark.slow  # a real subprocess sweep or signal: moved out of the default suite (time)
@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_usr2_with_a_requeue_handler_checkpoints_first_then_hands_it_on(cli_env, tmp_path):
    args = ["method=dal", "dataset.subset=1200", "trainer.epochs=4", "trainer.batch_size=8", "trainer.device=cpu",
            "trainer.progress=false", "trainer.threads=1"]
    script = tmp_path / "fake_submitit.py"
    script.write_text(FAKE_SUBMITIT)
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, str(script), str(run_dir), *args], env=cli_env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 3 and "requeue: checkpoint=True" in p.stdout, p.stdout + p.stderr
    assert not (run_dir / "result.json").exists()
    assert nb("train", *args, f"hydra.run.dir={run_dir}", env=cli_env).returncode == 0  # the requeued job
    assert nb("train", *args, f"hydra.run.dir={tmp_path / 'ref'}", env=cli_env).returncode == 0
    assert_same_run(tmp_path / "ref", run_dir)
    assert result(run_dir)["resumed_from"]


def test_keys_added_later_leave_the_identity_at_their_old_behaviour(make_cfg):
    """A run made before `method.apply_weights` / `dataset.subset_at_most` existed is the same run as
    one at their defaults (its directory is skipped or resumed, not refused); other values differ."""
    from noisybench.rundir import identity_config, identity_hash

    cfg = OmegaConf.to_container(make_cfg("method=storm"), resolve=True)
    assert cfg["method"]["apply_weights"] is True and cfg["dataset"]["subset_at_most"] is None
    old = json.loads(json.dumps(cfg))
    del old["method"]["apply_weights"], old["dataset"]["subset_at_most"]
    assert identity_hash(identity_config(cfg)) == identity_hash(identity_config(old))
    cfg["method"]["apply_weights"] = False
    assert identity_hash(identity_config(cfg)) != identity_hash(identity_config(old))
