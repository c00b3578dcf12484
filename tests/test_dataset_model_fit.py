"""Each dataset picks a model that fits it; a model that cannot take a dataset's inputs, a subset larger
than the training split and a validation split that leaves fewer training samples than classes are
one-line errors naming the fix; the fit check leaves the run's randomness alone."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import nb
from conftest import group_options
from hydra import compose
from omegaconf import DictConfig, OmegaConf
from test_images import make_idx
from torch import nn

from noisybench.config import CONFIG_NAME, build, hydra_context, register_resolvers
from noisybench.data import mnist1d
from noisybench.errors import ConfigError
from noisybench.pipeline import build_data
from noisybench.tasks import make_task
from noisybench.train import run

# what each dataset trains by default (the dataset yaml's `override /model@_global_.model`)
DEFAULT_MODEL = {"mnist1d": "cnn1d", "digits": "cnn1d", "fashion_mnist": "cnn28", "mnist": "cnn28",
                 "cifar10": "resnet18", "cifar100": "resnet18", "sms_spam": "linear", "youtube_spam": "linear",
                 "tsv": "linear", "synthwoz": "dst", "multiwoz": "dst"}
WORDS = {0: ["awful", "bad", "poor", "ugly"], 1: ["great", "fine", "lovely", "good"]}


def _compose(*overrides: str):
    register_resolvers()
    with hydra_context():
        return compose(CONFIG_NAME, overrides=list(overrides))


def write_text_split(folder: Path, sizes=(("train", 60), ("valid", 12), ("test", 20)), two_words=False) -> Path:
    """STORM-style TSV splits (`index<TAB>sentence1<TAB>label`); two_words: a 2-term TF-IDF vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        rng = np.random.default_rng(len(split))
        rows = ["index\tsentence1\tlabel"]
        for i in range(n):
            y = i % 2
            text = ("spam" if y else "ham") if two_words else " ".join(rng.choice(WORDS[y], 3)) + " the"
            rows.append(f"{i}\t{text}\t{y}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("noisybench: error:")]


def assert_one_line_error(p, tmp_path: Path) -> str:
    assert p.returncode == 2, p.stderr[-2000:]  # 2: the command must change (a ConfigError)
    assert "Traceback" not in p.stderr + p.stdout
    (line,) = _error_lines(p.stderr)
    assert not list(tmp_path.rglob("result.json"))
    return line


# ---- each dataset picks a model that fits it -------------------------------------------------------

def test_every_dataset_has_a_known_default_model():
    assert set(group_options("dataset")) == set(DEFAULT_MODEL), "add the new dataset's default model here"


@pytest.mark.parametrize("dataset", sorted(DEFAULT_MODEL))
def test_dataset_picks_its_model_and_the_command_line_wins(dataset):
    cfg = _compose(f"dataset={dataset}")
    assert cfg.model.name == DEFAULT_MODEL[dataset] and cfg.dataset.name == dataset
    assert "model" not in cfg.dataset  # the dataset's own keys stay under dataset.
    assert _compose(f"dataset={dataset}", "model=cnn1d").model.name == "cnn1d"
    assert _compose("model=mlp", f"dataset={dataset}").model.name == "mlp"  # wherever it is typed


def test_experiments_still_choose_their_model():
    assert _compose("experiment=storm_spam").model.name == "linear"
    assert _compose("experiment=storm_spam", "dataset=youtube_spam").model.name == "linear"
    assert _compose("experiment=fmnist_cpu").model.name == "cnn28"
    assert _compose("experiment=gce_cifar10").model.name == "resnet34"
    assert _compose("experiment=smoke").model.name == "cnn1d"


@pytest.mark.parametrize("dataset", ["mnist1d", "digits", "sms_spam", "youtube_spam", "tsv", "fashion_mnist",
                                     "mnist"])
def test_default_model_takes_the_datasets_inputs(make_cfg, tmp_path, dataset):
    extra = []
    if dataset in ("sms_spam", "youtube_spam"):
        write_text_split(tmp_path / dataset)
        extra = [f"data_dir={tmp_path}", "dataset.subset=null"]
    elif dataset == "tsv":
        extra = [f"dataset.loader.path={write_text_split(tmp_path / 'own')}", "dataset.subset=null"]
    elif dataset in ("fashion_mnist", "mnist"):
        make_idx(tmp_path / dataset, n_train=40, n_test=10)
        extra = [f"data_dir={tmp_path}", "dataset.loader.search_dirs=[]", "dataset.subset=null"]
    cfg = make_cfg(f"dataset={dataset}", *extra)
    assert cfg.model.name == DEFAULT_MODEL[dataset]
    task = make_task(cfg.dataset)
    ds, _ = task.build_data(cfg)
    model = task.build_model(cfg.model, ds)  # includes the forward check
    assert model.training


def test_a_text_dataset_trains_with_its_default_model(make_cfg, tmp_path):
    write_text_split(tmp_path / "sms_spam")
    cfg = make_cfg("dataset=sms_spam", f"data_dir={tmp_path}", "dataset.subset=null", "trainer.epochs=1")
    record = run(cfg, tmp_path / "run", progress=False)
    assert record["model"] == "linear" and record["dataset"] == "sms_spam" and record["test_last"] is not None
    assert (tmp_path / "run" / "result.json").is_file()


# ---- a model that cannot take the inputs ------------------------------------------------------------

@pytest.mark.slow  # the same command is a case of tests/test_bad_input.py (in-process, fast)
def test_cnn1d_on_a_tiny_tfidf_vocabulary_is_one_line(cli_env, tmp_path):
    """A 2-term vocabulary: Conv1d's kernel is longer than the input. Was a Conv1d traceback."""
    data = write_text_split(tmp_path / "two", two_words=True)
    common = ["dataset=tsv", f"dataset.loader.path={data}", "trainer.epochs=1", "trainer.device=cpu",
              "trainer.progress=false"]
    p = nb("train", *common, "model=cnn1d", f"hydra.run.dir={tmp_path / 'bad'}", env=cli_env)
    line = assert_one_line_error(p, tmp_path)
    assert "model=cnn1d cannot take dataset=tsv's inputs of shape (2,)" in line
    assert "Kernel size" in line and "model=linear" in line
    assert (tmp_path / "bad" / "failed.json").is_file()
    p = nb("train", *common, f"hydra.run.dir={tmp_path / 'good'}", env=cli_env)  # the default: linear
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "good" / "result.json").is_file()


class ImagesOnly(nn.Module):
    """Builds for any shape, but its forward needs (C, H, W) images (no check in the constructor)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


class DrawsInForward(nn.Module):
    """Fits anything; its forward draws from torch's global RNG (as some stochastic models do)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)) + 0 * torch.rand(1)


def _model_cfg(cls) -> DictConfig:
    return OmegaConf.create({"name": cls.__name__.lower(), "_target_": f"{__name__}.{cls.__name__}",
                             "_partial_": True})


def test_a_forward_failure_is_a_config_error_naming_models_that_fit(make_cfg):
    cfg = make_cfg()  # mnist1d: (40,) sequences
    task = make_task(cfg.dataset)
    ds, _ = task.build_data(cfg)
    with pytest.raises(ConfigError) as e:
        task.build_model(_model_cfg(ImagesOnly), ds)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model=imagesonly cannot take dataset=mnist1d's inputs of shape (40,)")
    assert "model=linear or model=mlp" in msg


def test_model_constructor_messages_are_kept(make_cfg):
    cfg = make_cfg("model=cnn28")
    task = make_task(cfg.dataset)
    ds, _ = task.build_data(cfg)
    with pytest.raises(ConfigError, match="model=cnn28 does not fit inputs of shape"):
        task.build_model(cfg.model, ds)
    with pytest.raises(ConfigError, match="does not fit this classification dataset"):
        task.build_model(make_cfg("model=dst").model, ds)


@pytest.mark.parametrize("model", ["cnn1d", "mlp", DrawsInForward], ids=["cnn1d", "mlp", "draws_in_forward"])
def test_the_forward_check_does_not_touch_the_rng(make_cfg, model):
    """build_model draws what constructing the model draws, nothing more (so runs stay bit-identical)."""
    cfg = make_cfg()
    model_cfg = _model_cfg(model) if isinstance(model, type) else make_cfg(f"model={model}", "model.dropout=0.5").model
    task = make_task(cfg.dataset)
    ds, _ = task.build_data(cfg)
    torch.manual_seed(3)
    checked = task.build_model(model_cfg, ds)
    after_check = torch.get_rng_state()
    torch.manual_seed(3)
    plain = build(model_cfg)(**task.model_kwargs(ds))
    assert torch.equal(after_check, torch.get_rng_state())
    assert checked.training and all(m.training for m in checked.modules())
    for a, b in zip(checked.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


# ---- subset and validation split sizes --------------------------------------------------------------

def test_subset_larger_than_the_training_split(make_cfg):
    with pytest.raises(ConfigError) as e:
        build_data(make_cfg("dataset.subset=100000"))
    msg = str(e.value)
    assert "dataset.subset=100000" in msg and "dataset.subset=7200" in msg and "dataset.subset=null" in msg
    ds, _ = build_data(make_cfg("dataset.subset=7200"))  # the named maximum works
    assert len(ds.y_train) == 7200


def test_subset_smaller_than_the_class_count(make_cfg):
    with pytest.raises(ConfigError, match=r"dataset.subset=3 keeps fewer .* 10 classes; use dataset.subset=10"):
        build_data(make_cfg("dataset.subset=3"))
    assert len(build_data(make_cfg("dataset.subset=10"))[0].y_train) == 10


def test_val_fraction_that_leaves_fewer_training_samples_than_classes(make_cfg):
    with pytest.raises(ConfigError) as e:
        build_data(make_cfg("dataset.val_fraction=0.9999", "dataset.subset=null"))
    msg = str(e.value)
    assert "\n" not in msg and "dataset.val_fraction=0.9999" in msg and "1 training sample for 10 classes" in msg
    assert "use dataset.val_fraction=0.1" in msg and "at most 0.99" in msg
    ds, _ = build_data(make_cfg("dataset.val_fraction=0.99", "dataset.subset=null"))  # the named bound works
    assert len(ds.y_train) >= 10


def test_dialogue_subset_larger_than_the_training_dialogues(make_cfg):
    cfg = make_cfg("dataset=synthwoz", "dataset.loader.num_train=40", "dataset.loader.num_test=10",
                   "dataset.subset=50")
    with pytest.raises(ConfigError, match="subset=50 is more than the 36 training dialogues.*dataset.subset=36"):
        make_task(cfg.dataset).build_data(cfg)


@pytest.mark.slow  # the same command is a case of tests/test_bad_input.py (in-process, fast)
@pytest.mark.parametrize("bad, good", [("dataset.subset=100000", "dataset.subset=7200"),
                                       ("dataset.val_fraction=0.9999", "dataset.val_fraction=0.1")])
def test_split_size_errors_on_the_command_line(cli_env, tmp_path, bad, good):
    p = nb("train", bad, "trainer.epochs=1", "trainer.device=cpu", "trainer.progress=false",
           f"hydra.run.dir={tmp_path / 'run'}", env=cli_env)
    line = assert_one_line_error(p, tmp_path)
    assert bad in line and good in line


# ---- the MNIST-1D cache is written atomically -------------------------------------------------------

def test_mnist1d_cache_is_written_whole_with_normal_permissions(tmp_path, monkeypatch):
    pool = mnist1d.load_mnist1d(str(tmp_path), num_samples=200)
    folder = tmp_path / "mnist1d"
    (cache,) = folder.iterdir()  # no temporary file left behind
    assert cache.name == "mnist1d_n200_seed42.npz"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o666 & ~umask
    monkeypatch.setattr(mnist1d, "_generate", lambda *a: pytest.fail("the cache must be read, not regenerated"))
    again = mnist1d.load_mnist1d(str(tmp_path), num_samples=200)
    assert np.array_equal(again.x_train, pool.x_train) and np.array_equal(again.y_test, pool.y_test)
