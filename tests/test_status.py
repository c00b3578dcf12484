"""`noisybench status SWEEP_DIR` and `noisybench train -m ... --dry-run` (docs/sweeps.md#the-state-of-a-sweep):
a sweep stopped half-way, every state of a job found from the directories alone, nothing written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import nb

from noisybench.status import STATES

GRID = ["-m", "experiment=smoke", "trainer.progress=false", "trainer.keep_checkpoint=true", "seed=0,1,2,3,4,5"]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under root with its size and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def job_dir(sweep: Path, seed: int) -> Path:
    (d,) = sweep.glob(f"*seed={seed}@*")
    return d


def listed(stdout: str) -> dict[str, tuple[str, str]]:
    """{job name: (state, detail)} from status / dry-run output."""
    out = {}
    for line in stdout.splitlines():
        for state in STATES:
            if line.startswith(state + " ") and not line.startswith("state "):
                name, _, detail = line[len(state):].strip().partition("  ")
                out[name] = (state, detail.strip())
    return out


def seed_of(name: str) -> int:
    return int(name.split("seed=")[1].split("@")[0].split(",")[0])


@pytest.fixture
def half_done(cli_env, tmp_path):
    """A 6-job sweep as a kill half-way leaves it: one finished, one diverged, one failed, one running (a
    live lock held by another process), one unfinished with its checkpoint, one not started."""
    sweep = tmp_path / "sweep"
    p = nb("train", *GRID, f"hydra.sweep.dir={sweep}", env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    d = job_dir(sweep, 1)  # diverged: its result says so
    result = json.loads((d / "result.json").read_text())
    (d / "result.json").write_text(json.dumps({**result, "diverged": {"message": "loss is nan at epoch 1"}}))
    d = job_dir(sweep, 2)  # failed: failed.json and nothing else, as RunDir.fail leaves it
    for name in ("result.json", "checkpoint.pt", "checkpoint.pt.sha256"):
        (d / name).unlink()
    (d / "failed.json").write_text(json.dumps({"error": "DataError: the data file is gone", "type": "DataError"}))
    for seed in (3, 4):  # interrupted: the checkpoint and no outcome (3 is then taken by a live process)
        (job_dir(sweep, seed) / "result.json").unlink()
    shutil.rmtree(job_dir(sweep, 5))  # never started
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom noisybench.locks import acquire\n"
                               "acquire(sys.argv[1]); print('locked', flush=True); time.sleep(300)",
                               str(job_dir(sweep, 3))], env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield sweep, holder
    finally:
        holder.kill()
        holder.wait()


def test_status_lists_every_state_of_a_sweep_stopped_half_way(half_done, cli_env, tmp_path, data_dir):
    """One sweep (building it is the slow part): status, --only, the dry run, then the printed command."""
    sweep, holder = half_done
    before, data_before = tree(tmp_path), tree(data_dir)
    p = nb("status", str(sweep), env=cli_env)
    assert p.returncode == 1, p.stderr  # something is left to run
    jobs = listed(p.stdout)
    assert sorted(seed_of(n) for n in jobs) == [0, 1, 2, 3, 4, 5], p.stdout
    state = {seed_of(n): s for n, s in jobs.items()}
    assert state[0][0] == "finished" and state[0][1].startswith("test_selected=")
    assert state[1] == ("diverged", "loss is nan at epoch 1")
    assert state[2] == ("failed", "DataError: the data file is gone")
    assert state[3][0] == "running" and f"pid {holder.pid} " in state[3][1] and "epoch 1 of 1 done" in state[3][1]
    assert state[4] == ("unfinished", "checkpoint after epoch 1 of 1")
    assert state[5] == ("not started", "")
    assert "6 jobs: 1 finished, 1 diverged, 1 failed, 1 running, 1 unfinished, 1 not started" in p.stdout
    assert "3 left to run; 1 running: when the sweep has ended" in p.stdout
    assert p.stdout.rstrip().endswith(f"noisybench train --resume {sweep}")
    only = nb("status", str(sweep), "--only", "failed,not_started", env=cli_env)
    assert sorted(s for s, _ in listed(only.stdout).values()) == ["failed", "not started"], only.stdout
    doc = json.loads(nb("status", str(sweep), "--json", env=cli_env).stdout)
    assert doc["counts"] == {s: 1 for s in STATES} and len(doc["jobs"]) == 6
    assert {seed_of(j["name"]): j["state"] for j in doc["jobs"]} == {k: v[0] for k, v in state.items()}

    # the dry run of the same command: the state each job would find; then one into a new directory
    p = nb("train", *GRID, f"hydra.sweep.dir={sweep}", "--dry-run", env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    states = {seed_of(n): s for n, (s, _) in listed(p.stdout).items()}
    assert states == {0: "finished", 1: "diverged", 2: "failed", 3: "running", 4: "unfinished", 5: "not started"}
    assert "would skip 2 (finished), refuse 1 (running), run 3" in p.stdout
    new = tmp_path / "new_sweep"
    p = nb("train", *GRID[:-1], "seed=0,1", "method=ce,gce", f"hydra.sweep.dir={new}", "--dry-run", env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "4 jobs: 0 finished, 0 diverged, 0 failed, 0 running, 0 unfinished, 4 not started" in p.stdout
    assert "result:" not in p.stdout  # nothing ran
    assert tree(tmp_path) == before and tree(data_dir) == data_before and not new.exists()  # nothing written

    # the process ends (its lock goes with it); the printed command runs what is left
    holder.kill()
    holder.wait()
    p = nb("status", str(sweep), env=cli_env)
    assert "0 running, 2 unfinished" in p.stdout and "4 left to run; run it with: noisybench train --resume" in p.stdout
    assert nb("train", "--resume", str(sweep), env=cli_env).returncode == 1  # the diverged run says so
    p = nb("status", str(sweep), env=cli_env)
    assert p.returncode == 0, p.stdout
    assert "6 jobs: 5 finished, 1 diverged, 0 failed, 0 running, 0 unfinished, 0 not started" in p.stdout
    assert p.stdout.rstrip().endswith("nothing left to run")


@pytest.mark.parametrize("args, expect", [
    ([], "the following arguments are required"),
    (["{tmp}/nowhere"], "is not a directory"),
    (["{tmp}", "--only", "done"], "--only done: not a state"),
    (["{tmp}", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_status_commands_are_one_line(args, expect, cli_env, tmp_path):
    p = nb("status", *[a.format(tmp=tmp_path) for a in args], env=cli_env)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("noisybench: error: ") and expect in lines[0], p.stderr


def test_status_of_a_directory_without_runs_is_one_line(cli_env, tmp_path):
    p = nb("status", str(tmp_path), env=cli_env)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "holds no run directory" in p.stderr
    assert os.listdir(tmp_path) == []


def test_the_lock_probe_names_a_live_holder_and_writes_nothing(tmp_path, cli_env):
    from noisybench.locks import LOCK, acquire, holder, release

    d = tmp_path / "run"
    d.mkdir()
    assert holder(d) is None and not (d / LOCK).exists()  # never locked: nothing made
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom noisybench.locks import acquire\n"
                              "acquire(sys.argv[1]); print('locked', flush=True); time.sleep(300)", str(d)],
                             env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        before = (d / LOCK).read_bytes()
        assert holder(d).startswith(f"pid {child.pid} on ")
        assert (d / LOCK).read_bytes() == before
    finally:
        child.kill()
        child.wait()
    assert holder(d) is None  # the lock went with its process; the file stays
    assert acquire(d)  # and the probe left nothing held
    release(d)


def test_a_saved_command_that_could_load_code_is_read_without_it(tmp_path):
    """multirun.yaml is a file like any other in the directory: status composes its grid without the saved
    hydra overrides that could import or run code (hydra.searchpath=[pkg://...] imports a package)."""
    from noisybench.status import saved_command

    (tmp_path / "multirun.yaml").write_text(json.dumps({"hydra": {"overrides": {
        "task": ["experiment=smoke", "seed=0,1"],
        "hydra": ["hydra.searchpath=[pkg://payload]", "hydra.callbacks.x._target_=os.system",
                  "hydra/launcher=local", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}/elsewhere"]}}}))
    cmd, left_out = saved_command(tmp_path)
    assert left_out == ["hydra.searchpath=[pkg://payload]", "hydra.callbacks.x._target_=os.system"]
    assert cmd == ["-m", "experiment=smoke", "seed=0,1", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
                   f"hydra.sweep.dir={tmp_path}"]
