"""Files in a run directory that lie (docs/runs.md#verified-checkpoints-and-records): a checkpoint or
record that fails a check is set aside with one warning line, and the run starts over; never a resume
from a bad checkpoint, never a poisoned directory."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from noisybench import train as train_mod
from noisybench.rundir import CHECKPOINT, CHECKSUM, RESULT, RunDir

ARGS = ("trainer.epochs=3", "trainer.checkpoint_every=1", "trainer.threads=1")


@pytest.fixture
def cfg(make_cfg):
    return make_cfg(*ARGS)


@pytest.fixture
def reference(cfg, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ref")
    train_mod.run(cfg, d, progress=False)
    return d


def _interrupted(cfg, d: Path, monkeypatch) -> Path:
    """A run stopped (as by kill -9) after the checkpoint of its first epoch."""
    after = train_mod._after_epoch

    def stop_after_one(r, st, signalled):
        after(r, st, signalled)
        if st.epoch == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(train_mod, "_after_epoch", stop_after_one)
        with pytest.raises(KeyboardInterrupt):
            train_mod.run(cfg, d, progress=False)
    assert (d / CHECKPOINT).is_file() and not (d / RESULT).exists()
    return d


def _same(a: Path, b: Path) -> None:
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    ra, rb = (json.loads((x / RESULT).read_text()) for x in (a, b))
    for k in ("test_last", "test_selected", "test_best", "val_selected", "selected_epoch", "realized_noise_rate"):
        assert ra[k] == rb[k], k


def _rerun(cfg, d: Path, caplog) -> tuple[dict, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="noisybench.rundir"):
        record = train_mod.run(cfg, d, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return record, warnings


def _set_aside(d: Path, name: str) -> list[Path]:
    return sorted(d.glob(f"{name}.bad-*"))


def test_a_good_checkpoint_resumes_to_the_uninterrupted_result(cfg, reference, tmp_path, monkeypatch, caplog):
    d = _interrupted(cfg, tmp_path / "run", monkeypatch)
    assert json.loads((d / CHECKSUM).read_text())["sha256"]
    record, warnings = _rerun(cfg, d, caplog)
    assert warnings == [] and record["resumed_from"] == [{"epochs_done": 1, "batches_done": 0}]
    _same(reference, d)
    assert not (d / CHECKPOINT).exists() and not (d / CHECKSUM).exists()


def test_a_flipped_bit_is_set_aside_and_the_run_starts_over(cfg, reference, tmp_path, monkeypatch, caplog):
    d = _interrupted(cfg, tmp_path / "run", monkeypatch)
    data = bytearray((d / CHECKPOINT).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle (a weight)
    (d / CHECKPOINT).write_bytes(bytes(data))
    record, warnings = _rerun(cfg, d, caplog)
    assert len(warnings) == 1 and "does not match its checksum" in warnings[0] and "set aside" in warnings[0]
    assert record["resumed_from"] == []  # started over
    assert len(_set_aside(d, CHECKPOINT)) == 1  # kept for inspection
    _same(reference, d)


def test_an_epoch_counter_past_the_end_is_refused_even_with_a_valid_checksum(cfg, reference, tmp_path, monkeypatch,
                                                                            caplog):
    d = _interrupted(cfg, tmp_path / "run", monkeypatch)
    state = torch.load(d / CHECKPOINT, weights_only=True)
    state["epoch"] = 99
    RunDir(d, cfg).save_checkpoint({k: v for k, v in state.items() if k != "identity"})  # checksum recomputed
    record, warnings = _rerun(cfg, d, caplog)
    assert len(warnings) == 1 and "epoch 99, outside this run's 0..3" in warnings[0]
    assert record["resumed_from"] == []
    _same(reference, d)


def test_garbage_with_the_right_identity_and_checksum_is_set_aside(cfg, reference, tmp_path, monkeypatch, caplog):
    d = _interrupted(cfg, tmp_path / "run", monkeypatch)
    state = torch.load(d / CHECKPOINT, weights_only=True)
    state["model"] = {"nonsense": torch.zeros(3)}
    RunDir(d, cfg).save_checkpoint({k: v for k, v in state.items() if k != "identity"})
    record, warnings = _rerun(cfg, d, caplog)
    assert len(warnings) == 1 and "does not fit this run" in warnings[0]
    assert record["resumed_from"] == []
    _same(reference, d)


def test_a_checkpoint_that_is_a_directory_does_not_poison_the_run_dir(cfg, reference, tmp_path, caplog):
    d = tmp_path / "run"
    (d / CHECKPOINT).mkdir(parents=True)
    record, warnings = _rerun(cfg, d, caplog)
    assert len(warnings) == 1 and "is not a regular file" in warnings[0]
    assert _set_aside(d, CHECKPOINT)[0].is_dir()
    _same(reference, d)
    again, warnings = _rerun(cfg, d, caplog)  # and the directory is healthy: the rerun is skipped
    assert again.get("skipped") and warnings == []


def test_a_checkpoint_without_its_checksum_is_set_aside(cfg, reference, tmp_path, monkeypatch, caplog):
    d = _interrupted(cfg, tmp_path / "run", monkeypatch)
    (d / CHECKSUM).unlink()
    record, warnings = _rerun(cfg, d, caplog)
    assert len(warnings) == 1 and "has no readable checksum" in warnings[0]
    _same(reference, d)


@pytest.mark.parametrize("content, why", [(b"[]", "is not a JSON object (it holds a list)"),
                                          (b"{}", "lacks test_last"),
                                          (b"\xff\xfe not text", "is not UTF-8 text"),
                                          (b"{\"test_last\": ", "is not valid JSON")])
def test_a_result_json_that_is_not_a_record_is_set_aside_and_the_run_goes_on(cfg, reference, tmp_path, caplog,
                                                                            content, why):
    d = tmp_path / "run"
    d.mkdir()
    (d / RESULT).write_bytes(content)
    record, warnings = _rerun(cfg, d, caplog)
    assert len(warnings) == 1 and why in warnings[0], warnings
    assert not record.get("skipped")
    assert _set_aside(d, RESULT)[0].read_bytes() == content
    _same(reference, d)


@pytest.mark.parametrize("name", ["identity.json", "attempt.json", "trackers.json"])
def test_identity_attempt_and_trackers_files_that_are_not_json_objects_are_set_aside(cfg, reference, tmp_path,
                                                                                    caplog, name):
    d = tmp_path / "run"
    d.mkdir()
    (d / name).write_bytes(b"\x80\x81 not utf-8")
    record, warnings = _rerun(cfg, d, caplog)
    assert len(warnings) == 1 and "is not UTF-8 text" in warnings[0] and name in warnings[0]
    assert len(_set_aside(d, name)) == 1
    if name != "trackers.json":  # (written only with a tracker that has run ids)
        assert json.loads((d / name).read_text())  # a fresh one
    _same(reference, d)


def test_a_forged_identity_json_is_set_aside(cfg, tmp_path, caplog):
    d = tmp_path / "run"
    d.mkdir()
    (d / "identity.json").write_text(json.dumps({"identity": "0123456789abcdef", "config": {"seed": 5}}))
    _, warnings = _rerun(cfg, d, caplog)
    assert len(warnings) == 1 and "identity.json does not hold an identity" in warnings[0]


def test_a_truncated_sample_weights_file_is_no_weights(tmp_path):
    from noisybench.record import WEIGHTS, load_weights

    (tmp_path / WEIGHTS).write_bytes(b"PK\x03\x04 truncated")
    assert load_weights(tmp_path) == {}
