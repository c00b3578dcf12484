"""Launch presets (conf/hydra/launcher/local.yaml, slurm.yaml) and Optuna searches (conf/hparams_search/):
the same sweep gives the same results under every launcher, `local` trains with one torch thread per job,
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

GRID = ["experiment=smoke", "method=ce,gce", "seed=0,1"]  # 2 x 2 jobs of a few seconds each
HPARAMS_SEARCH = "hparams_search"


def results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}


def summary(sweep: Path) -> dict[str, tuple[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return {Path(r["run_dir"]).name: (r["test_last"], r["test_selected"]) for r in csv.DictReader(f)}


def test_local_and_submitit_local_sweeps_equal_the_basic_launcher(cli_env, tmp_path):
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
    # the local preset: one torch thread per job (hydra.job.env_set OMP_NUM_THREADS=1)
    assert {r["torch_threads"] for r in results(sweeps["local"]).values()} == {1}


def test_local_preset_threads_come_from_env_set_and_a_single_run_keeps_torch_default(cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "OMP_NUM_THREADS"}
    # n_jobs=1: joblib runs the jobs in this process, where no worker thread limit applies (plain
    # hydra/launcher=joblib gives torch's default there): the 1 is the preset's env_set
    p = nb("train", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=1", "experiment=smoke", "seed=0,1",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [r["torch_threads"] for r in results(tmp_path / "sweep").values()] == [1, 1]
    # a single run (no -m) is untouched by the launcher presets: torch's default thread count
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    p = nb("train", "experiment=smoke", f"hydra.run.dir={tmp_path / 'single'}", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "single" / "result.json").read_text())["torch_threads"] == int(default)


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
    assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["direction"] == "maximize"
    assert sweeper["sampler"]["_target_"] == "optuna.samplers.TPESampler" and sweeper["sampler"]["seed"] == 0
    assert sweeper["n_jobs"] == 1 and set(sweeper["params"]) == params
    assert all(v.startswith("interval(") for v in sweeper["params"].values())


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
