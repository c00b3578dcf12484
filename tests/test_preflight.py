"""Preflight (every job of a sweep checked before the first starts), shell completion, python -m."""
from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONF_DIR, group_options
from omegaconf import OmegaConf

import noisybench.checks
import noisybench.config
from noisybench.cli import main
from noisybench.preflight import preflight

GRID_216 = ["method=ce,gce,dal", "noise.rate=0.2,0.4,0.6", "seed=0,1,2", "optim.optimizer.lr=0.01,0.05,0.1,0.2",
            "trainer.epochs=1,2"]


def nb(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "noisybench", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def seen(monkeypatch):
    """Records every config preflight validates (the real checks still run)."""
    from noisybench.config import register_resolvers

    register_resolvers()
    configs = []
    real = noisybench.checks.validate

    def record(cfg):
        configs.append(cfg)
        real(cfg)

    monkeypatch.setattr(noisybench.checks, "validate", record)
    return configs


@pytest.fixture
def user_conf(tmp_path) -> Path:
    """A user's config folder with its own method (conf/method/ce.yaml under a new name)."""
    d = tmp_path / "user_conf"
    (d / "method").mkdir(parents=True)
    text = (CONF_DIR / "method" / "ce.yaml").read_text().replace("name: ce", "name: mine")
    (d / "method" / "mine.yaml").write_text(text)
    return d


def one_error_line(err: str, key: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("noisybench: error:") and key in lines[0], err
    return lines[0]


def test_bad_value_in_the_last_job_stops_the_sweep_before_any_job(cli_env, tmp_path):
    # only the last of the 4 jobs is bad: noise=none with a noise rate
    p = nb("train", "-m", "experiment=smoke", "noise=symmetric,none", "noise.rate=0.0,0.3", env=cli_env)
    assert p.returncode == 2
    line = one_error_line(p.stderr, "noise.rate")
    assert "job 4 of 4" in line and "noise=none noise.rate=0.3" in line
    assert not list(tmp_path.rglob("result.json"))
    assert not (tmp_path / "multirun").exists()  # no sweep directory, no job directory


def test_planned_is_the_number_of_jobs_and_reaches_the_sweep_callback(cli_env, monkeypatch, tmp_path):
    assert preflight(["-m", "experiment=smoke", "method=ce,gce", "seed=0,1,2"]) == (None, 6)
    assert preflight(["experiment=smoke"]) == (None, None)  # a single run
    from noisybench import cli
    from noisybench.report.callback import SweepTablesCallback

    for k, v in cli_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(cli, "_train_task", lambda cfg: 0.0)  # the sweep itself is not what is tested here
    monkeypatch.setattr(SweepTablesCallback, "planned", None)
    main(["train", "-m", "experiment=smoke", "seed=0,1,2"])
    assert SweepTablesCallback.planned == 3


def test_glob_sweeps_are_expanded_and_every_config_checked(seen):
    assert preflight(["-m", "experiment=smoke", "method=glob(*)"]) == (None, len(group_options("method")))
    assert sorted(c.method.name for c in seen) == group_options("method")
    seen.clear()
    assert preflight(["-m", "experiment=smoke", "method=glob(c*)"]) == (None, 2)
    assert [c.method.name for c in seen] == ["ce", "coteaching"]
    # the jobs a glob makes are checked too: DAL has no q
    # (the baselines excluded too, so the first job is DAL's)
    err, _ = preflight(["-m", "experiment=smoke", "method=glob(*,exclude=[ce,apl,coteaching,elr,forward,sce])",
                        "++method.q=0.5", "seed=0,1"])
    assert (err is not None and "method.q is not an option of method=dal" in err
            and "job 1 of 6: experiment=smoke method=dal ++method.q=0.5" in err)
    # Hydra composes the sweep's base config with the default method (ce): q is not a key there
    err, _ = preflight(["-m", "experiment=smoke", "method=gce,dal", "method.q=0.5"])
    assert "method.q" in err and "base config" in err


def test_range_sweeps_are_checked(seen):
    assert preflight(["-m", "experiment=smoke", "seed=range(0,3)"]) == (None, 3)
    assert sorted(c.seed for c in seen) == [0, 1, 2]
    err, _ = preflight(["-m", "experiment=smoke", "trainer.epochs=range(2,-1,-1)"])
    assert err is not None and "trainer.epochs=0" in err and "job 3 of 3" in err


def test_value_overrides_on_a_copy_equal_a_full_compose():
    """The fast path (compose per group combination + Hydra's own override step) gives the config a
    full compose gives, for =, +, ++, ~ and interpolations."""
    from noisybench.config import CONFIG_NAME, config_path, register_resolvers
    from noisybench.preflight import _Checker, config_loader, parse_args

    register_resolvers()
    jobs = [["method=gce", "method.q=0.3", "noise.rate=${seed}", "seed=0"],
            ["experiment=smoke", "+extra.tag=a", "++seed=4", "~objective", "method=dal"],
            ["noise=pairflip", "++noise.rate=0.1", "+method.note=x", "dataset.subset=null"],
            ["method.q_start=0.5", "method=dal", "optim=adam", "optim.optimizer.lr=0.01"]]
    checker = _Checker(*config_loader(parse_args([]), config_path(), CONFIG_NAME))
    for job in jobs:
        fast = checker.fast_config([], job)
        full = checker.app_config(job)
        assert OmegaConf.to_container(fast) == OmegaConf.to_container(full), job
        assert OmegaConf.is_struct(fast)


def test_216_point_grid_is_checked_quickly():
    tic = time.perf_counter()
    assert preflight(["-m", *GRID_216]) == (None, 216)
    assert time.perf_counter() - tic < 20  # generous (shared machine); scripts/bench_preflight.py measures


@pytest.mark.slow  # a real subprocess sweep or signal: moved out of the default suite (time)
def test_user_config_dir_by_searchpath_and_config_dir(cli_env, user_conf):
    sp = f"hydra.searchpath=[file://{user_conf}]"
    assert preflight([sp, "experiment=smoke", "method=mine"]) == (None, None)
    assert preflight(["-m", sp, "experiment=smoke", "method=mine,ce", "seed=0,1"]) == (None, 4)
    assert preflight(["-cd", str(user_conf), "experiment=smoke", "method=mine"]) == (None, None)
    assert preflight([f"--config-dir={user_conf}", "-m", "method=mine", "seed=0,1"]) == (None, 2)
    err, _ = preflight(["-m", "-cd", str(user_conf), "method=mine", "method.q=0.5,0.6"])
    assert "method.q" in err
    err, _ = preflight(["-cd", str(user_conf / "nope"), "seed=1"])
    assert "not found" in err
    # a sweep defined in a config (hydra.sweeper.params), as Hydra's basic sweeper reads it
    (user_conf / "experiment").mkdir()
    (user_conf / "experiment" / "seeds.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      seed: 0,1,2\n      trainer.epochs: 1,0\n")
    err, planned = preflight(["-m", "-cd", str(user_conf), "experiment=seeds"])
    assert "trainer.epochs=0" in err and "job 2 of 6" in err

    p = nb("train", sp, "experiment=smoke", "method=mine", env=cli_env)
    assert p.returncode == 0, p.stderr
    result = Path(p.stdout.split("result: ")[1].split()[0])
    assert json.loads(result.read_text())["method"]["name"] == "mine"

    p = nb("train", sp, "experiment=smoke", "method=mien", env=cli_env)
    assert p.returncode == 2
    line = one_error_line(p.stderr, "method/mien")
    assert "mine" in line and "ce" in line


def test_interval_sweeps_for_optuna_are_checked_at_their_ends():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    base = ["-m", "experiment=smoke", "hydra/sweeper=optuna"]
    assert preflight([*base, "method=gce", "method.q=interval(0,1)", "seed=0,1"]) == (None, None)
    err, planned = preflight([*base, "noise.rate=interval(0.5,1.5)"])
    assert planned is None and "noise.rate" in err
    assert preflight([*base, "trainer.epochs=int(interval(1,3))"]) == (None, None)
    err, _ = preflight([*base, "trainer.epochs=int(interval(0,3))"])
    assert "trainer.epochs=0" in err
    # a search defined in a config (hydra.sweeper.params of conf/hparams_search/)
    assert preflight(["-m", "hparams_search=gce_q", "experiment=smoke"]) == (None, None)
    err, _ = preflight(["-m", "hparams_search=gce_q", "experiment=smoke", "noise.rate=1.2"])
    assert "noise.rate=1.2" in err and "a job the sweeper may run" in err


def test_flags_that_print_are_left_to_hydra():
    for args in (["--help"], ["--cfg", "job", "foo=1"], ["--info", "defaults"], ["-sc", "install=bash"], ["--bogus"]):
        assert preflight(args) == (None, None)


# ---------------------------------------------------------------------------------------- completion

def completion_env(cli_env) -> dict:
    env = dict(cli_env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the noisybench script
    return env


def bash_complete(line: str, env: dict) -> list[str]:
    """What _noisybench puts in COMPREPLY for `line` (cursor at the end), COMP_WORDS split as bash does
    with its default COMP_WORDBREAKS (which contains =)."""
    script = r'''
eval "$(noisybench completion bash)"
COMP_LINE=$1
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "${COMP_LINE//=/ = }"
[[ $COMP_LINE == *[[:space:]] || $COMP_LINE == *= ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_noisybench
printf '%s\n' "${COMPREPLY[@]}"
'''
    p = subprocess.run(["bash", "-c", script, "_", line], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.split("\n") if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion(cli_env, user_conf):
    env = completion_env(cli_env)
    assert bash_complete("noisybench ", env)[:3] == ["train", "noise", "report"]
    assert bash_complete("noisybench tr", env) == ["train"]
    assert set(bash_complete("noisybench train met", env)) >= {"method=", "method."}
    assert bash_complete("noisybench train method=", env) == group_options("method")
    assert bash_complete("noisybench train method=g", env) == ["gce"]  # bash replaces the word after '='
    assert bash_complete("noisybench train noise.r", env) == ["noise.rate="]
    assert bash_complete("noisybench train -m method=ce,gce noise.rate=0.2 noise.ra", env) == ["noise.rate="]
    assert "mine" in bash_complete(f"noisybench train hydra.searchpath=[file://{user_conf}] method=", env)
    assert bash_complete(f"noisybench train -cd {user_conf} method=mi", env) == ["mine"]
    assert bash_complete("noisybench noise -o x dataset=fashion", env) == ["fashion_mnist"]
    assert bash_complete("noisybench completion ", env) == ["bash"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_tab_in_an_interactive_bash(cli_env):
    """Real readline: TAB after `method=g` inserts `ce ` (with a space), after `noise.ra` `te=` (none)."""
    env = completion_env(cli_env)
    env.update(PS1="$ ", INPUTRC=os.devnull, TERM="dumb")

    def typed(keys: str, expect: str) -> str:
        pid, fd = pty.fork()
        if pid == 0:
            os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
        out, end = "", time.time() + 60
        try:
            os.write(fd, b'eval "$(noisybench completion bash)"\n')
            os.write(fd, keys.encode())
            while expect not in out and time.time() < end:
                if select.select([fd], [], [], 0.2)[0]:
                    out += os.read(fd, 4096).decode(errors="replace")
        finally:
            os.write(fd, b"\x15exit\n")
            os.waitpid(pid, 0)
        return out

    assert "noisybench train method=gce " in typed("noisybench train method=g\t", "method=gce ")
    assert "noisybench train noise.rate=" in typed("noisybench train noise.ra\t", "noise.rate=")


def test_hydra_shell_completion_flag_prints_our_script(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -o default -F _noisybench noisybench" in script and "train" not in script.split("complete")[-1]
    assert main(["train", "-sc", "install=bash"]) == 0
    assert capsys.readouterr().out == script
    assert main(["train", "-sc", "install=zsh"]) == 2
    one_error_line(capsys.readouterr().err, "noisybench completion bash")
    assert main(["completion", "fish"]) == 2
    one_error_line(capsys.readouterr().err, "bash")


def test_completion_finds_the_same_config_tree_without_torch():
    from noisybench.completion import primary_config_path

    assert primary_config_path() == noisybench.config.config_path()
    code = "import sys, noisybench.cli, noisybench.completion; assert 'torch' not in sys.modules, 'slow TAB'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_python_dash_m_noisybench(cli_env):
    p = nb("--help", env=cli_env)
    assert p.returncode == 0 and "train" in p.stdout and "report" in p.stdout
