"""Launch presets (conf/hydra/launcher/local.yaml, slurm.yaml) and Optuna searches (conf/hparams_search/):
the same sweep gives the same results under every launcher, `local` trains with cores // (jobs at once)
torch threads per job (noisybench.threads),
the SLURM preset becomes the expected sbatch script (no cluster needed), Optuna maximises the validation
objective the runs return."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import nb
from omegaconf import OmegaConf

from noisybench.threads import (
    ThreadsCallback,
    blas_threads,
    cores,
    job_threads,
    jobs_at_once,
    thread_pools,
    torch_threads,
)

GRID = ["experiment=smoke", "method=ce,gce", "seed=0,1"]  # 2 x 2 jobs of a few seconds each
HPARAMS_SEARCH = "hparams_search"


def results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}


def summary(sweep: Path) -> dict[str, tuple[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return {Path(r["run_dir"]).name: (r["test_last"], r["test_selected"]) for r in csv.DictReader(f)}


@pytest.mark.slow  # 30-60 s: three full sweeps; the thread policy and the local preset have their own fast tests
def test_local_and_submitit_local_sweeps_equal_the_basic_launcher(cli_env, tmp_path):
    cli_env = {k: v for k, v in cli_env.items() if k != "OMP_NUM_THREADS"}  # the thread policy decides
    sweeps = {}
    for launcher in ("basic", "local", "submitit_local"):
        sweeps[launcher] = tmp_path / launcher
        p = nb("train", "-m", f"hydra/launcher={launcher}", *GRID, f"hydra.sweep.dir={sweeps[launcher]}",
               env=cli_env)
        assert p.returncode == 0, f"{launcher}: {p.stderr[-3000:]}"
        assert "4 ran to the end" in p.stderr and "0 failed, 0 unfinished" in p.stderr, p.stderr[-2000:]
        assert len(results(sweeps[launcher])) == 4
    base = summary(sweeps["basic"])
    assert len(base) == 4
    for launcher in ("local", "submitit_local"):
        assert summary(sweeps[launcher]) == base, launcher
        assert (sweeps[launcher] / "table.md").read_text() == (sweeps["basic"] / "table.md").read_text()
    # the local preset: 4 jobs, one per core at once: cores // min(cores, 4) threads each (1 on <= 4 cores)
    assert {r["torch_threads"] for r in results(sweeps["local"]).values()} == {job_threads(-1, 4)}


def test_local_preset_threads_need_no_flag_and_a_single_run_keeps_torch_default(cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "OMP_NUM_THREADS"}
    # 2 jobs, n_jobs=2: two loky worker processes, each told cores // 2 threads by the sweep's parent
    p = nb("train", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "experiment=smoke", "seed=0,1",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [r["torch_threads"] for r in results(tmp_path / "sweep").values()] == [max(1, cores() // 2)] * 2
    # a single run (no -m) is untouched by the launcher presets: torch's default thread count
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    p = nb("train", "hydra/launcher=local", "experiment=smoke", f"hydra.run.dir={tmp_path / 'single'}", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "single" / "result.json").read_text())["torch_threads"] == int(default)


def test_a_run_gets_one_blas_thread_and_the_limit_ends_with_it(monkeypatch):
    """numpy's/scipy's BLAS pools at 1 inside a run (docs/sweeps.md, "Which pool gets what"), put back
    after it; torch's count as the policy says."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):  # a pool of 2 before the run, even on 1 core
        before = blas_threads()
        with thread_pools(1) as record:
            assert blas_threads() == 1 and record == {"torch_threads": 1, "blas_threads": 1}
            np.ones((64, 64)) @ np.ones((64, 64))  # BLAS works inside the limit
        assert blas_threads() == before == 2


def test_thread_policy_shares_the_cores_among_the_jobs_running_at_once(monkeypatch):
    assert [jobs_at_once(-1, planned, 8) for planned in (None, 2, 100)] == [8, 2, 8]
    assert jobs_at_once(-2, None, 8) == 7 and jobs_at_once(3, 100, 8) == 3 and jobs_at_once(16, 4, 8) == 4
    assert [job_threads(-1, planned, 8) for planned in (1, 2, 3, 8, 100)] == [8, 4, 2, 1, 1]
    assert job_threads(16, None, 8) == 1 and job_threads(1, 50, 8) == 8  # never 0; n_jobs=1: all cores
    # trainer.threads, then the sweep's share, then OMP_NUM_THREADS, then torch's default (None)
    monkeypatch.delenv("NOISYBENCH_JOB_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch_threads(None) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_threads(None) == 3
    monkeypatch.setenv("NOISYBENCH_JOB_THREADS", "2")
    assert torch_threads(None) == 2 and torch_threads(5) == 5
    # the sweep's parent: Optuna's trials at a time cap the jobs at once; an exported OMP_NUM_THREADS wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("NOISYBENCH_JOB_THREADS")
    cb, cfg = ThreadsCallback(), OmegaConf.create({"hydra": {"launcher": {"n_jobs": -1}, "sweeper": {"n_jobs": 1}}})
    cb.on_multirun_start(cfg)
    assert os.environ["NOISYBENCH_JOB_THREADS"] == str(cores())
    cb.on_multirun_end(cfg)
    assert "NOISYBENCH_JOB_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    cb.on_multirun_start(cfg)
    assert "NOISYBENCH_JOB_THREADS" not in os.environ


def test_slurm_preset_composes_without_a_cluster(cli_env):
    p = nb("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=proj",
           "experiment=smoke", "--cfg", "hydra", env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    launcher = yaml.safe_load(p.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["account"] == "proj" and launcher["name"] == "train"
    assert launcher["timeout_min"] > 0 and launcher["cpus_per_task"] >= 1 and launcher["mem_gb"] > 0
    assert launcher["nodes"] == 1 and launcher["tasks_per_node"] == 1 and launcher["max_num_timeout"] > 0
    assert launcher["gpus_per_node"] is not None and launcher["array_parallelism"] > 0
    assert launcher["setup"] == ["export OMP_NUM_THREADS=${hydra.launcher.cpus_per_task}"]
    assert launcher["additional_parameters"] == {"requeue": True}
    # partition and account are the user's: null in the preset
    p = nb("train", "hydra/launcher=slurm", "--cfg", "hydra", env=cli_env)
    assert p.returncode == 0 and yaml.safe_load(p.stdout)["hydra"]["launcher"]["partition"] is None


@pytest.mark.skipif(sys.platform == "win32", reason="fake sbatch/srun are shell scripts")
def test_slurm_sweep_submits_the_expected_sbatch_script(cli_env, tmp_path):
    """A fake `sbatch` (and `srun`, which submitit looks for) on PATH: it keeps the script and refuses."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nfor a; do last="$a"; done\ncp "$last" "{script}"\n'
                                    'echo "sbatch: error: not a cluster" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**cli_env, "PATH": f"{bin_dir}{os.pathsep}{cli_env['PATH']}"}
    sweep = tmp_path / "sweep"
    p = nb("train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=proj",
           "hydra.launcher.cpus_per_task=3", "experiment=smoke", "seed=0,1", f"hydra.sweep.dir={sweep}", env=env)
    assert p.returncode != 0  # the fake sbatch refused the array
    assert script.is_file(), p.stderr[-3000:]
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --job-name=train",
                 "#SBATCH --cpus-per-task=3", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --array=0-1%2", "#SBATCH --requeue", "#SBATCH --signal=USR2@120",
                 "export OMP_NUM_THREADS=3"):
        assert line in text.splitlines(), f"{line!r} not in:\n{text}"
    assert any(line.startswith("#SBATCH --time=") for line in text.splitlines())
    assert not list(sweep.glob("*/result.json"))


@pytest.mark.parametrize("name, method, params", [("gce_q", "gce", {"method.q"}),
                                                  ("dal_q", "dal", {"method.q_start", "method.q_end"})])
def test_hparams_search_presets_compose(name, method, params, cli_env):
    p = nb("train", f"{HPARAMS_SEARCH}={name}", "--cfg", "all", env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = yaml.safe_load(p.stdout)
    assert cfg["method"]["name"] == method and cfg["objective"] == "val_selected"
    sweeper = cfg["hydra"]["sweeper"]
    assert sweeper["_target_"].endswith("StudySweeper") and sweeper["direction"] == "maximize"
    assert sweeper["storage"] == "sqlite:///${hydra.sweep.dir}/optuna.db" and sweeper["study_name"] == name
    assert sweeper["sampler"]["_target_"] == "optuna.samplers.TPESampler" and sweeper["sampler"]["seed"] == 0
    assert sweeper["n_jobs"] == 1 and set(sweeper["params"]) == params
    assert all(v.startswith("interval(") for v in sweeper["params"].values())


@pytest.mark.slow  # a real subprocess sweep or signal: moved out of the default suite (time)
def test_optuna_gce_q_maximises_the_validation_objective(cli_env, tmp_path):
    sweep = tmp_path / "optuna"
    p = nb("train", "-m", f"{HPARAMS_SEARCH}=gce_q", "hydra.sweeper.n_trials=5", "experiment=smoke",
           f"hydra.sweep.dir={sweep}", env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = results(sweep)
    assert len(runs) == 5
    assert all(r["method"]["name"] == "gce" and 0.1 <= r["method"]["q"] <= 0.9 for r in runs.values())
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(r["val_selected"] for r in runs.values())
    assert best["best_params"]["method.q"] in {r["method"]["q"] for r in runs.values()
                                               if r["val_selected"] == best["best_value"]}
    assert "5 ran to the end" in p.stderr
