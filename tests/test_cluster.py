"""Cluster sweeps (docs/cluster.md): K runs per SLURM array task, submit and leave, requeue of a chunk,
local sweeps spread over GPUs (the bad values of these options are in tests/test_bad_input.py).

SLURM is played by stand-ins: `sbatch` keeps the script and answers with a job id, `scontrol` records
the requeue; the test then runs each array task's job process as SLURM would (its SLURM_* variables and
submitit's own job entry point), so the pickled chunks, submitit's USR2 handler and the runner's
checkpoint are the real ones."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import nb

from noisybench import cluster, gpus

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
pytest.importorskip("hydra_plugins.hydra_joblib_launcher")

JOB_ID = "4242"
GRID = ["experiment=smoke", "trainer.epochs=3", "trainer.eval_every=3", "seed=0,1,2,3,4,5,6,7,8,9"]
FAKE_SBATCH = '''#!{python}
import shutil, sys
shutil.copy(sys.argv[-1], {script!r})
print("Submitted batch job {job}")
'''
FAKE_SCONTROL = '''#!{python}
import sys
if sys.argv[1:3] == ["show", "config"]:
    print("MaxArraySize            = {max_array}")
else:
    open({log!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
'''
# An array task's job process that sends itself USR2 (SLURM's warning before the time limit) once the
# run `target` of its chunk has finished its first epoch: mid-run, a few epochs before its end.
USR2_TASK = '''
import os, signal, sys, threading, time
from pathlib import Path
sweep, target = Path(sys.argv[1]), sys.argv[2]
def later():
    while True:
        found = [p for p in sweep.glob(target + "/metrics.csv") if len(p.read_text().splitlines()) >= 2]
        if found:
            os.kill(os.getpid(), signal.SIGUSR2)
            return
        time.sleep(0.01)
threading.Thread(target=later, daemon=True).start()
sys.argv = ["submitit", str(sweep / ".submitit" / "%j")]
from submitit.core.submission import submitit_main
submitit_main()
'''


def run(seed: str) -> str:
    """The glob of a run directory of GRID (its name: the job's overrides, sorted, and a hash)."""
    return f"*,seed={seed},*@*"


def fake_slurm(tmp_path: Path, env: dict, max_array: int = 1001) -> tuple[dict, Path, Path]:
    bin_dir, script, log = tmp_path / "bin", tmp_path / "submitted.sh", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable, script=str(script), job=JOB_ID))
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL.format(python=sys.executable, log=str(log), max_array=max_array))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only looks for it
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}, script, log


def task_env(env: dict, task: int) -> dict:
    """What SLURM sets for array task `task` of job JOB_ID."""
    return {**env, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": str(int(JOB_ID) + 1 + task),
            "SLURM_ARRAY_JOB_ID": JOB_ID, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_NTASKS": "1",
            "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
            "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "localhost"}


def run_task(sweep: Path, env: dict, task: int, script: Path | None = None,
             target: str = "") -> subprocess.CompletedProcess:
    cmd = ([sys.executable, str(script), str(sweep), target] if script else
           [sys.executable, "-u", "-m", "submitit.core._submit", str(sweep / ".submitit" / "%j")])
    return subprocess.run(cmd, env=task_env(env, task), capture_output=True, text=True, timeout=600)


def submit(sweep: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return nb("train", "-m", "hydra/launcher=slurm", "hydra.launcher.runs_per_task=4", "hydra.launcher.wait=false",
              *GRID, f"hydra.sweep.dir={sweep}", *extra, env=env)


@pytest.mark.skipif(sys.platform == "win32", reason="stand-in sbatch/scontrol are executable scripts")
def test_ten_runs_at_four_per_task_are_three_array_tasks_and_the_command_leaves(cli_env, tmp_path):
    env, script, _ = fake_slurm(tmp_path, cli_env)
    sweep = tmp_path / "sweep"
    p = submit(sweep, env)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = script.read_text().splitlines()
    assert "#SBATCH --array=0-2%3" in lines  # 3 tasks (submitit caps array_parallelism=64 at 3), "\n".join(lines)
    assert f"submitted 10 runs as 3 array task(s) (SLURM job {JOB_ID})" in p.stderr
    assert f"noisybench status {sweep}" in p.stderr and f"noisybench report {sweep}" in p.stderr
    assert f"noisybench train --resume {sweep}" in p.stderr
    assert "unfinished" not in p.stderr and "error" not in p.stderr  # no sweep outcome: nothing ran here
    assert sorted(x.name for x in (sweep / ".submitit").glob(f"*/{JOB_ID}_*_submitted.pkl")) == [
        f"{JOB_ID}_{t}_submitted.pkl" for t in range(3)]
    assert not list(sweep.glob("*/result.json")) and not (sweep / "summary.csv").exists()
    again = nb("train", "--resume", str(sweep), env=env)  # the command it printed: the same array again
    assert again.returncode == 0 and "submitted 10 runs as 3 array task(s)" in again.stderr, again.stderr[-2000:]


@pytest.mark.slow  # four job processes that train (about a minute on 2 cores)
@pytest.mark.skipif(not hasattr(signal, "SIGUSR2") or sys.platform == "win32", reason="needs SIGUSR2 and scripts")
def test_array_tasks_run_their_chunks_and_a_requeued_task_resumes_its_run_and_skips_finished_ones(cli_env, tmp_path):
    env, script, requeues = fake_slurm(tmp_path, cli_env)
    sweep = tmp_path / "sweep"
    assert submit(sweep, env).returncode == 0
    for task in (0, 2):
        p = run_task(sweep, env, task)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    usr2 = tmp_path / "usr2_task.py"
    usr2.write_text(USR2_TASK)
    p = run_task(sweep, env, 1, usr2, run("5"))  # task 1: seeds 4-7; stopped in seed 5's second epoch
    assert p.returncode != 0, p.stderr[-3000:]
    assert requeues.read_text().split() == ["requeue", f"{JOB_ID}_1"]  # submitit asked SLURM to requeue it
    [seed5] = sweep.glob(run("5"))
    assert (seed5 / "checkpoint.pt").is_file() and not (seed5 / "result.json").exists()
    assert (next(sweep.glob(run("4"))) / "result.json").is_file()
    assert not list(sweep.glob(run("6") + "/result.json"))
    p = run_task(sweep, env, 1)  # SLURM runs the requeued task again: the same chunk
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    results = {json.loads((d / "result.json").read_text())["seed"]: json.loads((d / "result.json").read_text())
               for d in sweep.glob("*@*")}
    assert sorted(results) == list(range(10))
    assert results[5]["resumed_from"]  # continued from its checkpoint
    assert not results[4]["resumed_from"] and not results[6]["resumed_from"]
    attempt = json.loads((next(sweep.glob(run("4"))) / "attempt.json").read_text())
    assert attempt["action"] == "skipped"  # finished before the requeue: not run again
    p = nb("report", str(sweep), env=env)
    assert p.returncode == 0 and " (10) |" in p.stdout and "Every run found is in the tables." in p.stdout, p.stdout
    # submitted again (the --resume it printed): finished runs are not submitted at all
    script.unlink()
    p = nb("train", "--resume", str(sweep), env=env)
    assert p.returncode == 0 and "10 of 10 runs already finished (result.json): nothing to submit" in p.stderr, p.stderr
    assert not script.exists()
    shutil.rmtree(next(sweep.glob(run("7"))))
    p = nb("train", "--resume", str(sweep), env=env)
    assert p.returncode == 0 and "9 of 10 runs already finished (result.json): submitting the others" in p.stderr
    assert "submitted 1 run as 1 array task(s)" in p.stderr and "#SBATCH --array" not in script.read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="stand-in scontrol is an executable script")
def test_an_array_over_the_clusters_max_array_size_is_refused_with_the_fix(cli_env, tmp_path):
    env, script, _ = fake_slurm(tmp_path, cli_env, max_array=3)
    p = submit(tmp_path / "sweep", env, "hydra.launcher.runs_per_task=2")  # 10 runs at 2: 5 tasks > 3
    assert p.returncode != 0 and not script.exists()
    assert p.stderr.strip().splitlines()[-1] == (
        "noisybench: error: 10 runs at hydra.launcher.runs_per_task=2 make 5 array tasks, more than this cluster's "
        "MaxArraySize (3); use hydra.launcher.runs_per_task=4 or more"), p.stderr[-2000:]


def test_chunks_keep_the_grid_order_and_the_array_size_check():
    assert cluster.chunks(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert cluster.chunks([1, 2], 5) == [[1, 2]] and cluster.tasks_for(2000, 20) == 100
    cluster.check_array_size(2000, 2, 1001)  # 1000 tasks: fits
    cluster.check_array_size(2000, 1, None)  # unknown limit: not checked
    with pytest.raises(Exception, match=r"runs_per_task=2 or more"):
        cluster.check_array_size(2000, 1, 1001)


def test_gpu_slots_interleave_and_concurrent_jobs_spread_over_the_gpus(tmp_path):
    assert gpus.slot_gpus(2, 2) == [0, 1, 0, 1] and gpus.slot_gpus(3, 1) == [0, 1, 2]
    assert gpus.jobs_at_once_on_gpus(2, 2, "auto") == 4 and gpus.jobs_at_once_on_gpus(2, 1, "cuda") == 2
    assert gpus.jobs_at_once_on_gpus(0, 1, "auto") is None  # CPU only: nothing changes
    assert gpus.jobs_at_once_on_gpus(2, 1, "cpu") is None and gpus.jobs_at_once_on_gpus(2, 1, "cuda:1") is None
    assert gpus.jobs_at_once_on_gpus(2, None, "auto") is None
    got, barrier, lock = [], threading.Barrier(4), threading.Lock()

    def job():  # four jobs at once hold their slot until all have one (flock: per open file, threads too)
        with gpus.lease(tmp_path, gpus.slot_gpus(2, 2)) as gpu:
            with lock:
                got.append(gpu)
            barrier.wait(timeout=30)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == [0, 0, 1, 1]
    with gpus.lease(tmp_path, [0, 1]) as first, gpus.lease(tmp_path, [0, 1]) as second:
        assert (first, second) == (0, 1)  # the second job goes to the idle GPU


def test_the_runner_uses_the_gpu_of_its_slot(monkeypatch):
    import torch

    from noisybench.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    with gpus.on_gpu(1):
        assert resolve_device("auto") == torch.device("cuda", 1) == resolve_device("cuda")
        assert resolve_device("cpu") == torch.device("cpu")
        assert resolve_device("cuda:0") == torch.device("cuda", 0)  # a device the user fixed wins
    assert resolve_device("auto") == torch.device("cuda")


def test_a_four_job_local_sweep_on_two_faked_gpus_puts_two_jobs_on_each(cli_env, tmp_path, monkeypatch, capsys):
    """The device count is faked in this (the sweep's parent) process; the jobs, in joblib's worker
    processes, take their GPU slots and run on the CPU (no CUDA here), so each job's GPU is the one the
    launcher counts."""
    from noisybench.cli import main

    for k in ("NOISYBENCH_DATA_DIR", "NOISYBENCH_MULTIRUN_DIR"):
        monkeypatch.setenv(k, cli_env[k])
    monkeypatch.setattr(gpus, "visible_gpus", lambda: 2)
    sweep = tmp_path / "sweep"
    code = main(["train", "-m", "hydra/launcher=local", "hydra.launcher.jobs_per_gpu=2", "experiment=smoke",
                 "trainer.device=auto", "seed=0,1,2,3", f"hydra.sweep.dir={sweep}"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert "noisybench: jobs per GPU: GPU 0: 2, GPU 1: 2" in err, err[-3000:]
    assert len(list(sweep.glob("*/result.json"))) == 4


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_a_usr2_after_the_last_safe_point_of_a_run_waits_for_the_next_run_of_the_chunk():
    from noisybench.stopping import StopOnSignal, take_pending

    got = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))  # submitit's requeue handler, in a task
    try:
        with StopOnSignal():
            os.kill(os.getpid(), signal.SIGUSR2)  # noted; the run then ends without another safe point
            time.sleep(0.01)
        assert got == [] and take_pending() == signal.SIGUSR2 and take_pending() is None
        with StopOnSignal() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)
            stop.after_checkpoint()  # handed on at a safe point: nothing left pending
        assert got == [signal.SIGUSR2] and take_pending() is None
    finally:
        signal.signal(signal.SIGUSR2, old)


@pytest.mark.slow  # a sweep through submitit's local executor: two job processes that train
def test_a_chunked_sweep_that_waits_counts_every_run_of_every_task(cli_env, tmp_path):
    sweep = tmp_path / "sweep"
    p = nb("train", "-m", "hydra/launcher=noisybench_submitit_local", "hydra.launcher.runs_per_task=2",
           "experiment=smoke", "seed=0,1,2", f"hydra.sweep.dir={sweep}", env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "3 ran to the end" in p.stderr and "0 failed, 0 unfinished" in p.stderr, p.stderr[-2000:]
    assert len(list(sweep.glob("*/result.json"))) == 3
    assert len([d for d in (sweep / ".submitit").iterdir() if d.name != "%j"]) == 2  # 2 tasks: seeds 0-1, 2


def test_the_launchers_are_registered_where_hydras_plugin_scan_misses_them():
    """An editable install (pip install -e) maps hydra_plugins.noisybench_launchers in with an import hook,
    which Hydra's scan of the hydra_plugins package does not list: the CLI registers them itself."""
    from hydra.core.plugins import Plugins

    from noisybench.config import register_launchers

    plugins = Plugins.instance()
    ours = [n for n in plugins.class_name_to_class if n.startswith("hydra_plugins.noisybench_launchers.")]
    for name in ours:  # as if the scan had not found them
        cls = plugins.class_name_to_class.pop(name)
        for classes in plugins.plugin_type_to_subclass_list.values():
            if cls in classes:
                classes.remove(cls)
    register_launchers()
    assert {"hydra_plugins.noisybench_launchers._submitit.SlurmLauncher",
            "hydra_plugins.noisybench_launchers._submitit.LocalLauncher",
            "hydra_plugins.noisybench_launchers._joblib.GpuJoblibLauncher"} <= set(plugins.class_name_to_class)
