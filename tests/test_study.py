"""Optuna searches that persist (docs/sweeps.md#optuna-studies-that-persist): the study is a file in the sweep
directory, an interrupted search continues toward n_trials in all, a trial can be the mean over seeds."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import yaml
from cli_helpers import nb, start

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

from noisybench.preflight import preflight  # noqa: E402
from noisybench.study_sweep import prepare_sqlite  # noqa: E402

SEARCH = ["-m", "hparams_search=gce_q", "experiment=smoke", "trainer.progress=false"]


def load(sweep, name="gce_q"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep}/optuna.db")


def test_an_interrupted_search_continues_to_n_trials_in_one_study_file(cli_env, tmp_path):
    sweep = tmp_path / "search"
    cmd = [*SEARCH, "trainer.epochs=3", "hydra.sweeper.n_trials=6", f"hydra.sweep.dir={sweep}"]
    p = start("train", *cmd, env=cli_env)
    deadline = time.monotonic() + 600  # a guard against a hang, not a timing
    while len(list(sweep.glob("*/result.json"))) < 3 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    while True:  # a Ctrl-C in the last epoch of a run lets that run finish and the sweep go on: again then
        try:
            _, err = p.communicate(timeout=3)
            break
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)
    assert p.returncode != 0, err[-3000:]  # stopped before its 6 trials
    first = load(sweep).trials
    assert len(first) >= 3 and sum(t.state.name == "COMPLETE" for t in first) < 6
    again = nb("train", *cmd, env=cli_env)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    study = load(sweep)
    states = [(t.number, t.state.name, t.params) for t in study.trials]
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials), (states, err[-2000:],
                                                                                              again.stderr[-3000:])
    assert [t.number for t in study.trials] == list(range(6))
    runs = {json.loads(r.read_text())["val_selected"] for r in sweep.glob("*/result.json")}
    assert len(list(sweep.glob("*/result.json"))) == 6
    assert {t.value for t in study.trials} <= runs
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == study.best_value and best["n_trials"] == 6
    third = nb("train", *cmd, env=cli_env)  # done: nothing more is asked
    assert third.returncode == 0 and len(load(sweep).trials) == 6


def test_a_trial_over_two_seeds_scores_the_mean_of_their_runs(cli_env, tmp_path):
    sweep = tmp_path / "seeds"
    p = nb("train", *SEARCH, "hydra.sweeper.n_trials=1", "hydra.sweeper.seeds=[0,1]", f"hydra.sweep.dir={sweep}",
           env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    (trial,) = load(sweep).trials
    runs = sorted(sweep.glob("*/result.json"))
    assert len(runs) == 2 and [r.parent.name.split("seed=")[1][0] for r in runs] == ["0", "1"]
    values = [json.loads(r.read_text())["val_selected"] for r in runs]
    assert values[0] != values[1]  # two seeds, two runs: else the mean would prove nothing
    assert trial.value == pytest.approx(sum(values) / 2, abs=1e-12)
    assert sorted(trial.user_attrs["run_dirs"]) == sorted(str(r.parent) for r in runs)


def test_a_grid_search_runs_every_value_once_and_a_rerun_asks_nothing(cli_env, tmp_path):
    """hparams_search=storm_sharpness (a grid sampler): optuna's grid sampler stops the study after its last
    point, which optuna refuses outside study.optimize; every point is still recorded, best by val_last."""
    sweep = tmp_path / "grid"
    cmd = ["-m", "hparams_search=storm_sharpness", "experiment=smoke", "trainer.progress=false",
           "hydra.sweeper.seeds=[0]", f"hydra.sweep.dir={sweep}"]
    p = nb("train", *cmd, env=cli_env)
    assert p.returncode == 0, p.stderr[-3000:]
    study = load(sweep, "storm_sharpness")
    values = sorted(str(t.params["method.sharpness"]) for t in study.trials)
    assert values == ["1.0", "1.5", "2.0", "4.0", "auto"]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    lasts = {json.loads(r.read_text())["val_last"] for r in sweep.glob("*/result.json")}
    assert {t.value for t in study.trials} <= lasts and len(lasts) >= 1
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == study.best_value
    again = nb("train", *cmd, env=cli_env)
    assert again.returncode == 0 and len(load(sweep, "storm_sharpness").trials) == 5, again.stderr[-3000:]


def test_a_study_of_the_other_direction_is_refused_in_one_line(cli_env, tmp_path):
    sweep = tmp_path / "other"
    sweep.mkdir()
    url = f"sqlite:///{sweep}/optuna.db"
    prepare_sqlite(url)
    optuna.create_study(study_name="gce_q", storage=url, direction="minimize")
    p = nb("train", *SEARCH, f"hydra.sweep.dir={sweep}", env=cli_env)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("noisybench: error: the study gce_q")
    assert "optimises minimize, this command maximize" in p.stderr and "Traceback" not in p.stderr
    assert not list(sweep.glob("*/result.json"))


@pytest.mark.parametrize("override, expect", [
    ("hydra.sweeper.seeds=[0,0]", "hydra.sweeper.seeds=[0, 0]: give a list of distinct integer seeds"),
    ("hydra.sweeper.seeds=[]", "hydra.sweeper.seeds=[]: give a list of distinct integer seeds"),
    ("hydra.sweeper.seeds=[a,b]", "give a list of distinct integer seeds"),
    ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0: give the number of trials in all"),
    ("hydra.sweeper.n_jobs=0", "hydra.sweeper.n_jobs=0: give the number of trials run at a time"),
    ("hydra.sweeper.storage=study.db", "hydra.sweeper.storage=study.db: give a database URL"),
    ("hydra.sweeper.study_name=null", "hydra.sweeper.study_name=null: a study kept in a database needs a name"),
])
def test_bad_sweeper_options_are_one_line(override, expect):
    err, _ = preflight([*SEARCH, override])
    assert err is not None and expect in err and "\n" not in err


def test_seeds_and_a_seed_on_the_command_line_are_refused():
    err, _ = preflight([*SEARCH, "hydra.sweeper.seeds=[0,1]", "seed=3"])
    assert err is not None and "drop seed=... from the command line" in err
    assert preflight([*SEARCH, "hydra.sweeper.seeds=[0,1]"])[0] is None


def test_a_bad_option_is_one_line_from_the_cli(cli_env, tmp_path):
    p = nb("train", *SEARCH, "hydra.sweeper.seeds=[1,1]", f"hydra.sweep.dir={tmp_path / 's'}", "--dry-run",
           env=cli_env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("noisybench: error: ")
    assert not (tmp_path / "s").exists()


def test_without_the_plugin_half_a_search_is_refused_not_forgotten():
    """An install that lacks hydra_plugins/noisybench_study leaves the plugin's own sweeper, which keeps the
    study in memory: refused in one line naming the fix."""
    from omegaconf import OmegaConf

    from noisybench.errors import ConfigError
    from noisybench.study import PLUGIN_TARGET, SWEEPER_TARGET, check_options

    good = OmegaConf.create({"_target_": SWEEPER_TARGET, "n_trials": 2, "n_jobs": 1, "storage": "sqlite:///x.db",
                             "study_name": "s", "seeds": None, "params": None})
    check_options(good, [])
    with pytest.raises(ConfigError, match="reinstall noisybench"):
        check_options(OmegaConf.merge(good, {"_target_": PLUGIN_TARGET}), [])
