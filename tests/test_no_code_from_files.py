"""No code from data files (docs/runs.md#no-code-from-files): CIFAR's python batches go through the
same restricted unpickler as CIFAR-N's label files (numpy arrays and plain values only), with
`batches.meta` MD5-checked like every batch file when dataset.loader.verify is on. A crafted pickle
that would create a marker file is refused with one line, whatever `verify` says."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from noisybench.data import cifar
from noisybench.data.cifar import load_cifar
from noisybench.errors import DataError


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears if the loader runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real files are protocol-2 pickles with bytes keys


def make_cifar(root: Path, dataset: str = "cifar10", n: int = 6, seed: int = 0) -> Path:
    """Batches in the real format (pickled dicts with b'data', b'labels' / b'fine_labels', and a meta
    file with b'label_names' / b'fine_label_names') in torchvision's layout; returns the folder."""
    tv = cifar._torchvision_class(dataset)
    k, key, names = (10, b"labels", b"label_names") if dataset == "cifar10" else (100, b"fine_labels",
                                                                                   b"fine_label_names")
    rng = np.random.default_rng(seed)
    folder = root / tv.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    for f, _ in (*tv.train_list, *tv.test_list):
        _dump(folder / f, {b"batch_label": b"batch", key: rng.integers(0, k, n).tolist(),
                           b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8)})
    _dump(folder / tv.meta["filename"], {names: [f"c{i}".encode() for i in range(k)], b"num_vis": 3072})
    return folder


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


class _FakeTV:
    """torchvision's CIFAR10 class as the loader reads it, with the MD5s of the files written here."""

    def __init__(self, real, folder: Path, meta_md5: str | None = None) -> None:
        self.base_folder, self.filename = real.base_folder, real.filename
        self.train_list = [[f, _md5(folder / f)] for f, _ in real.train_list]
        self.test_list = [[f, _md5(folder / f)] for f, _ in real.test_list]
        meta = folder / real.meta["filename"]
        self.meta = {**real.meta, "md5": meta_md5 or _md5(meta)}


def _verified_as_published(monkeypatch, folder: Path, dataset: str = "cifar10", meta_md5: str | None = None):
    real = cifar._torchvision_class(dataset)
    fake = _FakeTV(real, folder, meta_md5)
    monkeypatch.setattr(cifar, "_torchvision_class", lambda name: fake)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_real_format_batches_load_through_the_restricted_unpickler(tmp_path, dataset):
    make_cifar(tmp_path, dataset)
    pool = load_cifar(dataset, data_dir=str(tmp_path), download=False, verify=False)
    k = 10 if dataset == "cifar10" else 100
    assert pool.x_train.shape == (30 if dataset == "cifar10" else 6, 3, 32, 32) and pool.x_test.shape == (6, 3, 32, 32)
    assert pool.class_names == [f"c{i}" for i in range(k)]


@pytest.mark.parametrize("victim", ["data_batch_1", "test_batch", "batches.meta"])
def test_a_malicious_pickle_is_refused_with_verify_off_and_runs_nothing(tmp_path, victim):
    folder = make_cifar(tmp_path)
    marker = tmp_path / "PWNED"
    _dump(folder / victim, {b"data": Payload(marker), b"labels": [0], b"label_names": [b"a"]})
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"refusing to load {folder / victim}: it references ")
    assert "open" in msg  # the global it names (builtins.open / io.open)
    assert not marker.exists()


def test_batches_meta_is_md5_checked_like_the_batches(tmp_path, monkeypatch):
    folder = make_cifar(tmp_path)
    _verified_as_published(monkeypatch, folder)
    assert load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=True).num_classes == 10
    marker = tmp_path / "PWNED"
    _dump(folder / "batches.meta", {b"label_names": Payload(marker)})  # the batches still match their MD5s
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=True)
    assert "batches.meta" in str(e.value) and "MD5" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_a_malicious_file_with_a_matching_md5_still_runs_nothing(tmp_path, monkeypatch):
    """Even a (hypothetically) colliding MD5 does not make the loader run code."""
    folder = make_cifar(tmp_path)
    marker = tmp_path / "PWNED"
    _dump(folder / "data_batch_2", {b"data": Payload(marker), b"labels": [0]})
    _verified_as_published(monkeypatch, folder)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=True)
    assert not marker.exists()


@pytest.mark.parametrize("content, why", [
    (["not", "a", "dict"], "not a CIFAR batch"),
    ({b"data": ["x"] * 3, b"labels": ["a", "b", "c"]}, "not numbers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": 7}, "labels of shape ()"),
])
def test_odd_but_harmless_pickles_give_one_line(tmp_path, content, why):
    folder = make_cifar(tmp_path)
    _dump(folder / "data_batch_3", content)
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=False)
    assert why in str(e.value) and "\n" not in str(e.value)


# ---- _target_: only callables a config file registers (noisybench.targets) ------------------------------

REFUSED_TARGETS = [
    "method._target_=os.system",
    "dataset.loader._target_=noisybench.data.cifar._unpickle",  # an internal unpickling helper
    "dataset.loader._target_=noisybench.data.cifarn._load_pt",
    "+method.extra={_target_: builtins.open, _args_: [x, w]}",
    "+method.extra='${oc.create:\"{_target_: os.system}\"}'",
]


@pytest.mark.parametrize("override", REFUSED_TARGETS)
def test_a_target_no_config_file_registers_is_one_line(override):
    from noisybench.preflight import preflight

    err, _ = preflight(["experiment=smoke", override])
    assert err is not None and "\n" not in err and "_target_ may only name a callable that a config file" in err
    assert err.split(":", 1)[0].startswith(override.split("=", 1)[0].lstrip("+")), err


def test_a_target_swept_among_registered_ones_is_refused_before_the_first_job():
    from noisybench.preflight import preflight

    err, _ = preflight(["-m", "experiment=smoke", "method._target_=noisybench.methods.ce.CrossEntropy,os.system"])
    assert err.startswith("method._target_=os.system: _target_ may only name"), err


def test_registered_targets_and_a_users_own_config_folder_are_allowed(monkeypatch):
    from noisybench.preflight import preflight

    conf = Path(__file__).resolve().parents[1] / "examples" / "user_method" / "conf"
    monkeypatch.syspath_prepend(str(conf.parent))
    assert preflight(["experiment=smoke", "method._target_=noisybench.methods.gce.GCE", "+method.q=0.7"]) == (
        None, None)
    # a user's class, registered by its YAML file in the folder given with -cd / hydra.searchpath
    sp = f"hydra.searchpath=[file://{conf}]"
    assert preflight([sp, "experiment=smoke", "method=bootstrap"]) == (None, None)
    assert preflight([sp, "experiment=smoke", "method._target_=mymethods.SoftBootstrapping", "+method.beta=0.9"]) == (
        None, None)
    err, _ = preflight(["experiment=smoke", "method._target_=mymethods.SoftBootstrapping"])  # no folder: not registered
    assert err.startswith("method._target_=mymethods.SoftBootstrapping: _target_ may only name"), err


def test_a_target_built_by_a_resolver_is_caught_in_the_composed_config():
    from omegaconf import OmegaConf

    from noisybench.errors import ConfigError
    from noisybench.targets import check_config, registered, sources_of

    allowed = registered(sources_of(None))
    assert "noisybench.methods.ce.CrossEntropy" in allowed and "os.system" not in allowed
    ok = OmegaConf.create({"method": {"_target_": "noisybench.methods.ce.CrossEntropy"}, "optim": {"_target_": None}})
    check_config(ok, allowed)
    yaml_text = "{_tar" + "get_: os.system}"  # the command line never spells it: the resolver builds it
    bad = OmegaConf.create({"spec": yaml_text, "method": {"extra": "${oc.create:${spec}}"}})
    with pytest.raises(ConfigError, match=r"^method\.extra\._target_=os\.system: "):
        check_config(bad, allowed)


def _nb(*args: str, env: dict, cwd: Path):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "noisybench", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)


def test_a_payload_target_on_the_command_line_runs_nothing(cli_env, tmp_path):
    marker = tmp_path / "PWNED"
    p = _nb("train", "experiment=smoke", f"+method.extra={{_target_: builtins.open, _args_: ['{marker}', w]}}",
            f"hydra.run.dir={tmp_path / 'run'}", env=cli_env, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("noisybench: error: method.extra._target_=builtins.open: ")
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


# ---- --resume DIR: the saved command is shown, and what loads code is not taken from it ------------------

def _run_dir(tmp_path: Path, task: list[str], hydra: list[str] = ()) -> Path:
    from omegaconf import OmegaConf

    d = tmp_path / "theirs"
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(list(task)), d / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"hydra": list(hydra), "task": list(task)}}}),
                   d / ".hydra" / "hydra.yaml")
    return d


@pytest.mark.parametrize("override, refused", [
    ("method=dal", False), ("noise.rate=0.4", False), ("seed=3", False), ("experiment=smoke", False),
    ("hydra/launcher=local", False), ("hydra.launcher.n_jobs=2", False), ("optim.optimizer.lr=0.1", False),
    ("dataset.loader.verify=false", True), ("data_dir=/elsewhere", True), ("dataset.loader.path=/x", True),
    ("dataset.loader.search_dirs=[/x]", True), ("dataset.human_labels.folder=/x", True), ("noise.data_dir=/x", True),
    ("method._target_=noisybench.methods.ce.CrossEntropy", True), ("+method.x={_target_: os.system}", True),
    ("hydra.searchpath=[file:///x]", True), ("hydra.callbacks.x._target_=os.system", True),
    ("hydra.job.env_set.LD_PRELOAD=/x.so", True), ("hydra.launcher.setup=[touch x]", True),
    ("logger.mlflow.tracking_uri=http://host:5000", True), ("hydra.sweeper.params.data_dir=/x,/y", True),
])
def test_which_saved_overrides_need_repeating(override, refused):
    from noisybench.resume import risky

    assert risky(override) is refused


def test_resume_refuses_saved_overrides_that_read_data_from_elsewhere_unless_repeated(tmp_path):
    from noisybench.errors import NoisybenchError
    from noisybench.resume import resume_args

    d = _run_dir(tmp_path, ["experiment=smoke", "dataset.loader.verify=false", "data_dir=/elsewhere"],
                 ["hydra.searchpath=[file:///elsewhere/conf]", "hydra.run.dir=somewhere"])
    with pytest.raises(NoisybenchError) as e:
        resume_args(["--resume", str(d)])
    msg = str(e.value)
    assert "\n" not in msg and "dataset.loader.verify, data_dir, hydra.searchpath" in msg
    assert msg.endswith(f"repeat them on the command line: noisybench train --resume {d} dataset.loader.verify=false "
                        "data_dir=/elsewhere 'hydra.searchpath=[file:///elsewhere/conf]'")
    with pytest.raises(NoisybenchError, match="sets hydra.searchpath, which"):  # only what is not repeated
        resume_args(["--resume", str(d), "dataset.loader.verify=false", "data_dir=/mine"])
    args = resume_args(["--resume", str(d), "dataset.loader.verify=false", "data_dir=/mine",
                        "hydra.searchpath=[file:///elsewhere/conf]"])
    assert args[-3:] == ["dataset.loader.verify=false", "data_dir=/mine", "hydra.searchpath=[file:///elsewhere/conf]"]
    assert f"hydra.run.dir={d}" in args and "hydra.run.dir=somewhere" not in args


@pytest.mark.parametrize("content", ["{a: 1}", "[1, 2]", "- [nested]\n", ": : :\n\t"])
def test_damaged_saved_overrides_are_one_line(tmp_path, content):
    from noisybench.errors import NoisybenchError
    from noisybench.resume import resume_args

    d = tmp_path / "run"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(content)
    with pytest.raises(NoisybenchError) as e:
        resume_args(["--resume", str(d)])
    assert "\n" not in str(e.value) and str(e.value).startswith("--resume: ")


def test_resume_of_a_directory_whose_saved_command_runs_a_payload_runs_nothing(cli_env, tmp_path):
    marker = tmp_path / "PWNED"
    payload = f"+method.extra={{_target_: builtins.open, _args_: ['{marker}', w]}}"
    d = _run_dir(tmp_path, ["experiment=smoke", payload])
    p = _nb("train", "--resume", str(d), env=cli_env, cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"noisybench: error: --resume {d}: its saved command sets method.extra, which")
    # repeated by the user: still no code (the target is not registered)
    p = _nb("train", "--resume", str(d), payload, env=cli_env, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "noisybench: error: method.extra._target_=builtins.open: _target_ may only name" in p.stderr
    assert "Traceback" not in p.stderr and not marker.exists()
    assert not (d / "identity.json").exists()
