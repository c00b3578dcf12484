"""Trackers (`logger=`): each one gets every epoch of metrics.csv, the config and the result, read back
with the tracker's own reader; a resumed run has each epoch once; a missing package is one error line
before anything is written; a tracker that fails never fails the run. W&B runs offline (no network)."""
from __future__ import annotations

import csv
import json
import logging
import struct
import sys
import time
from pathlib import Path

import pytest

from noisybench import loggers
from noisybench.cli import main
from noisybench.rundir import RunDir
from noisybench.train import run

TINY = ["trainer.threads=1", "dataset.subset=128", "trainer.batch_size=64"]


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """W&B: offline, silent, its own files under tmp_path (never the user's ~/.config/wandb)."""
    for var, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_CONFIG_DIR", "wandb-config"),
                       ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_DATA_DIR", "wandb-data")):
        monkeypatch.setenv(var, value if not value.startswith("wandb-") else str(tmp_path / value))


def _metrics(run_dir: Path) -> list[dict]:
    """metrics.csv: {column: float} per epoch (empty cells left out)."""
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _per_epoch(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{tracker tag: [(epoch, value)]} of metrics.csv's rows (the tags of the dataset metric acc)."""
    keys = dict.fromkeys(k for r in rows for k in r if k != "epoch")
    return {loggers.tag(k, "acc"): [(int(r["epoch"]), r[k]) for r in rows if k in r] for k in keys}


def _same(got: dict[str, list[tuple[int, float]]], rows: list[dict]) -> None:
    """Every metrics.csv column under its grouped tag, every epoch exactly once, the same value (float32 in
    some trackers)."""
    want = _per_epoch(rows)
    for key, points in want.items():
        assert [s for s, _ in got[key]] == [s for s, _ in points], key
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in points], rel=1e-6), key


def _tensorboard(log_dir: Path) -> tuple[dict, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    scalars = {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    hparams = {k: (v.number_value if v.HasField("number_value") else v.string_value) for k, v in start.hparams.items()}
    return scalars, hparams


def _wandb_records(path: Path):
    """The records of an offline run's .wandb file (LevelDB log format: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _wandb(offline_run: Path, settle: float = 20.0) -> tuple[str, dict, dict, dict]:
    """(run id, history {key: [(step, value)]}, config, summary) of one offline-run directory. W&B's
    service process may still be writing the file when `finish()` has returned (seen once on a loaded
    machine: no run record yet): read it again until it holds the run record and the final summary, for
    at most `settle` seconds; the assertions then see what the file holds."""
    deadline = time.monotonic() + settle
    while True:
        got = _wandb_once(offline_run)
        if (got[0] is not None and any(k.startswith("result/") for k in got[3])) or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def _wandb_once(offline_run: Path) -> tuple[str, dict, dict, dict]:
    (path,) = offline_run.glob("run-*.wandb")
    history: dict = {}
    config, summary, run_id = {}, {}, None
    for r in _wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config.update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "history":
            items = {_key(i): json.loads(i.value_json) for i in r.history.item}
            for k, v in items.items():
                if not k.startswith("_"):
                    history.setdefault(k, []).append((int(items["_step"]), float(v)))
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    config = {k: v.get("value") if isinstance(v, dict) else v for k, v in config.items()}
    return run_id, history, config, summary


def _mlflow(run_dir: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    r = client.get_run(run_id)
    history = {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in r.data.metrics}
    return r, history, client


def _final(record: dict) -> dict:
    return {k: record[k] for k in ("test_last", "test_selected", "test_best", "val_selected")}


def test_tensorboard_event_files_hold_every_epoch_the_config_and_the_result(make_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = make_cfg("logger=tensorboard", *TINY)
    record = run(cfg, tmp_path / "r", progress=False)
    scalars, hparams = _tensorboard(tmp_path / "r" / "tb")
    rows = _metrics(tmp_path / "r")
    assert len(rows) == 2
    _same(scalars, rows)
    for k, v in _final(record).items():
        assert scalars[f"result/{k}"] == [(1, pytest.approx(v, rel=1e-6))]
    assert hparams["method.name"] == "ce" and hparams["noise.rate"] == pytest.approx(0.4)
    assert hparams["trainer.epochs"] == 2 and hparams["identity"] == record["identity"]


def test_tensorboard_tags_are_grouped_train_val_test_noise_method(make_cfg, tmp_path):
    """Read back from the event files: every scalar sits under a section (TensorBoard's panel groups), none
    under the flat metrics.csv names."""
    pytest.importorskip("tensorboard")
    run(make_cfg("logger=tensorboard", "method=dal", *TINY), tmp_path / "r", progress=False)
    scalars, _ = _tensorboard(tmp_path / "r" / "tb")
    assert {"train/loss", "train/lr", "train/acc", "val/acc", "test/acc", "noise/memorized_noisy_frac",
            "noise/detect_auc", "noise/detect_noisy_in_lowk", "method/q", "method/lambda"} <= set(scalars)
    assert not set(scalars) & {"train_loss", "lr", "val", "test", "train_noisy", "q", "detect_auc"}
    assert {t.split("/", 1)[0] for t in scalars} == {"train", "val", "test", "noise", "method", "result"}
    assert [s for s, _ in scalars["val/acc"]] == [0, 1]


def test_tags_follow_the_datasets_metric():
    assert loggers.tag("val", "jga") == "val/jga" and loggers.tag("train_noisy", "f1") == "train/f1"
    assert loggers.tag("test_macro_f1", "f1") == "test/macro_f1" and loggers.tag("test", "mcc") == "test/mcc"
    assert loggers.tag("weight_auc", "acc") == "method/weight_auc"
    assert loggers.tag("memorized_clean_frac", "acc") == "noise/memorized_clean_frac"
    row = {"epoch": 3, "train_loss": 0.5, "val": None, "note": "x", "flag": True, "q": 1}
    assert loggers.numbers(row, "acc") == {"train/loss": 0.5, "method/q": 1.0}


def test_mlflow_sqlite_store_holds_every_epoch_the_params_and_the_result(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    cfg = make_cfg("logger=mlflow", *TINY)
    record = run(cfg, tmp_path / "r", progress=False)
    run_id = json.loads((tmp_path / "r" / "trackers.json").read_text())["mlflow"]
    r, history, client = _mlflow(tmp_path / "r", run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "r"
    assert client.get_experiment(r.info.experiment_id).name == "noisybench"
    _same(history, _metrics(tmp_path / "r"))
    for k, v in _final(record).items():
        assert history[f"result/{k}"] == [(1, pytest.approx(v))]
    assert r.data.params["method.name"] == "ce" and r.data.params["noise.rate"] == "0.4"
    assert r.data.params["identity"] == record["identity"] and r.data.params["data_dir"] == str(cfg.data_dir)


def test_a_failure_after_training_closes_the_mlflow_run_as_failed_and_writes_no_result(make_cfg, tmp_path,
                                                                                       monkeypatch):
    """Training ends, then building the record fails: the MLflow run is FAILED (not left RUNNING) and there
    is no result.json that a table would count."""
    pytest.importorskip("mlflow")
    import noisybench.train as train_mod

    def broken(*args, **kwargs):
        raise RuntimeError("record could not be built")

    monkeypatch.setattr(train_mod, "make_record", broken)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="record could not be built"):
        run(make_cfg("logger=mlflow", *TINY), out, progress=False)
    assert not (out / "result.json").exists()
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    r, history, _ = _mlflow(out, run_id)
    assert r.info.status == "FAILED"
    assert [s for s, _ in history["train/loss"]] == [0, 1]  # the epochs it trained are there


def test_mlflow_param_values_are_cut_to_its_limit():
    pytest.importorskip("mlflow")
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    long = loggers.MLflow._param_value("x" * (MAX_PARAM_VAL_LENGTH + 50))
    assert len(long) == MAX_PARAM_VAL_LENGTH and long.endswith("...")
    assert loggers.MLflow._param_value(None) == "null" and loggers.MLflow._param_value(True) == "true"


def test_wandb_offline_run_holds_every_epoch_the_config_and_the_result(make_cfg, tmp_path):
    pytest.importorskip("wandb")
    cfg = make_cfg("logger=wandb", *TINY)
    record = run(cfg, tmp_path / "r", progress=False)
    (offline,) = (tmp_path / "r" / "wandb").glob("offline-run-*")
    run_id, history, config, summary = _wandb(offline)
    assert run_id == json.loads((tmp_path / "r" / "trackers.json").read_text())["wandb"]
    assert run_id.startswith(record["identity"][:8])
    _same(history, _metrics(tmp_path / "r"))
    assert config["method.name"] == "ce" and config["noise.rate"] == pytest.approx(0.4)
    for k, v in _final(record).items():
        assert summary[f"result/{k}"] == pytest.approx(v)


class Killed(BaseException):
    """A hard stop (like kill -9) after an epoch was logged: nothing in the runner catches it."""


def _dies_after_epoch(monkeypatch, epoch: int):
    """The run is killed right after its trackers logged `epoch`; returns the real log_epoch (to restore)."""
    real = loggers.Trackers.log_epoch

    def dies(self, row):
        real(self, row)
        if row["epoch"] == epoch:
            raise Killed

    monkeypatch.setattr(loggers.Trackers, "log_epoch", dies)
    return real


def test_a_resumed_run_has_each_epoch_once_in_every_tracker(make_cfg, tmp_path, monkeypatch):
    """Checkpoints every 2 epochs; the first attempt logs epochs 0-2 and dies in epoch 3, so the resume
    starts from the checkpoint after epoch 1 and trains epoch 2 again: each tracker still has 0-3 once."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    cfg = make_cfg("logger=[tensorboard,mlflow]", *TINY, "trainer.epochs=4", "trainer.checkpoint_every=2")
    out = tmp_path / "r"
    real = _dies_after_epoch(monkeypatch, 2)
    with pytest.raises(Killed):
        run(cfg, out, progress=False)
    assert (out / "checkpoint.pt").is_file() and not (out / "result.json").exists()
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    assert [s for s, _ in _mlflow(out, run_id)[1]["train/loss"]] == [0, 1, 2]
    assert _mlflow(out, run_id)[0].info.status == "FAILED"

    monkeypatch.setattr(loggers.Trackers, "log_epoch", real)
    record = run(cfg, out, progress=False)
    assert record["resumed_from"] == [{"epochs_done": 2, "batches_done": 0}]
    rows = _metrics(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    scalars, _ = _tensorboard(out / "tb")
    _same(scalars, rows)
    assert json.loads((out / "trackers.json").read_text())["mlflow"] == run_id  # the same MLflow run, continued
    r, history, _ = _mlflow(out, run_id)
    _same(history, rows)
    assert r.info.status == "FINISHED"


def test_a_resumed_wandb_run_keeps_its_id_and_its_last_offline_run_has_each_epoch_once(make_cfg, tmp_path,
                                                                                         monkeypatch):
    pytest.importorskip("wandb")
    cfg = make_cfg("logger=wandb", *TINY, "trainer.epochs=3")
    out = tmp_path / "r"
    real = _dies_after_epoch(monkeypatch, 1)
    with pytest.raises(Killed):
        run(cfg, out, progress=False)
    monkeypatch.setattr(loggers.Trackers, "log_epoch", real)
    first = json.loads((out / "trackers.json").read_text())["wandb"]
    run(cfg, out, progress=False)
    offline = sorted((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    run_id, history, _, summary = _wandb(offline[-1])
    assert run_id == first
    _same(history, _metrics(out))
    assert "result/test_last" in summary


def test_a_sweeps_jobs_share_one_mlflow_store_tagged_with_the_sweep(tmp_path, monkeypatch, data_dir):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("NOISYBENCH_DATA_DIR", str(data_dir))
    sweep = tmp_path / "2026-01-02" / "12-00-00-abc123"
    code = main(["train", "-m", "experiment=smoke", "trainer.threads=1", "logger=mlflow", "seed=0,1",
                 f"hydra.sweep.dir={sweep}"])
    assert code == 0
    assert not (sweep / "mlruns").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("noisybench").experiment_id])
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "result.json").is_file())
    assert sorted(r.info.run_name for r in runs) == jobs and len(jobs) == 2
    assert {r.data.tags["noisybench.sweep"] for r in runs} == {"2026-01-02/12-00-00-abc123"}
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize("choice,module", [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow"),
                                           ("mlflow", "sqlalchemy"), ("mlflow", "alembic")])
def test_a_missing_tracker_package_is_one_line_before_anything_is_written(choice, module, tmp_path, monkeypatch,
                                                                           capsys, data_dir):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    monkeypatch.setenv("NOISYBENCH_DATA_DIR", str(data_dir))
    code = main(["train", "experiment=smoke", f"logger={choice}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [f"noisybench: error: logger={choice} needs the {module} package: "
                                f"pip install 'noisybench[{choice}]'"]
    assert not (tmp_path / "run").exists()


def test_the_logger_is_not_part_of_a_runs_identity(make_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    assert RunDir(tmp_path, make_cfg()).hash == RunDir(tmp_path, make_cfg("logger=tensorboard")).hash


def test_a_tracker_that_fails_is_dropped_with_one_warning_and_the_run_finishes(make_cfg, tmp_path, monkeypatch,
                                                                               caplog):
    pytest.importorskip("tensorboard")

    def full_disk(self, row):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers.TensorBoard, "log_epoch", full_disk)
    with caplog.at_level(logging.WARNING, logger="noisybench"):
        record = run(make_cfg("logger=tensorboard", *TINY), tmp_path / "r", progress=False)
    warnings = [r.getMessage() for r in caplog.records if "logger=tensorboard" in r.getMessage()]
    assert len(warnings) == 1 and "could not write" in warnings[0] and "No space left" in warnings[0]
    assert (tmp_path / "r" / "result.json").is_file() and record["test_last"] is not None
