"""What a run writes, against a directory someone else may have touched (docs/runs.md#writes-and-a-full-disk):
writes never follow a symlink noisybench did not make, a full disk ends the run with one line and keeps
its last checkpoint, and a noise-cache entry forged together with its checksum is caught."""
from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from noisybench import rundir
from noisybench import train as train_mod
from noisybench.rundir import CHECKPOINT, CHECKSUM, RESULT, RunDir
from noisybench.utils import atomic_output

ARGS = ("trainer.epochs=3", "trainer.checkpoint_every=1", "trainer.threads=1")
PRECIOUS = "someone else's file\n"


@pytest.fixture
def cfg(make_cfg):
    return make_cfg(*ARGS)


@pytest.fixture
def reference(cfg, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ref")
    train_mod.run(cfg, d, progress=False)
    return d


def _same(a: Path, b: Path) -> None:
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    ra, rb = (json.loads((x / RESULT).read_text()) for x in (a, b))
    for k in ("test_last", "test_selected", "test_best", "val_selected", "selected_epoch", "realized_noise_rate"):
        assert ra[k] == rb[k], k


def _plant(d: Path, name: str, outside: Path) -> None:
    outside.write_text(PRECIOUS)
    (d / name).parent.mkdir(parents=True, exist_ok=True)
    (d / name).symlink_to(outside)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---- symlinks ------------------------------------------------------------------------------------------

def test_a_symlinked_train_log_is_set_aside_and_never_written_through(cfg, tmp_path, caplog):
    d, outside = tmp_path / "run", tmp_path / "outside.txt"
    _plant(d, "train.log", outside)
    with caplog.at_level(logging.WARNING):
        train_mod.run(cfg, d, progress=False)
    assert outside.read_text() == PRECIOUS
    log = d / "train.log"
    assert not log.is_symlink() and "finished: test_last=" in log.read_text()
    aside = sorted(d.glob("train.log.bad-*"))
    assert len(aside) == 1 and aside[0].is_symlink()
    w = _warnings(caplog)
    assert len(w) == 1 and w[0].startswith(f"noisybench: warning: {log} is a symlink"), w


@pytest.mark.parametrize("name", ["metrics.csv", "noise.json", "identity.json", "attempt.json", RESULT, CHECKPOINT,
                                  CHECKSUM])
def test_a_symlinked_record_is_replaced_never_written_through(make_cfg, tmp_path, name):
    cfg = make_cfg(*ARGS, "trainer.keep_checkpoint=true")  # checkpoint.pt is written to the end
    d, outside = tmp_path / "run", tmp_path / "outside.txt"
    _plant(d, name, outside)
    record = train_mod.run(cfg, d, progress=False)
    assert outside.read_text() == PRECIOUS
    assert not (d / name).is_symlink() and (d / name).is_file()
    assert json.loads((d / RESULT).read_text())["test_last"] == record["test_last"]


def test_a_symlink_put_in_place_after_the_check_fails_instead_of_being_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text(PRECIOUS)
    (tmp_path / "train.log").symlink_to(outside)
    with pytest.raises(OSError) as e:
        rundir.open_append(tmp_path / "train.log")
    assert e.value.errno == errno.ELOOP and outside.read_text() == PRECIOUS


def test_hydras_saved_config_is_not_written_through_a_planted_symlink(cli_env, tmp_path):
    d = tmp_path / "run"
    _plant(d, ".hydra/overrides.yaml", tmp_path / "outside.yaml")
    _plant(d, "train.log", tmp_path / "outside.log")
    p = subprocess.run([sys.executable, "-m", "noisybench", "train", "experiment=smoke", f"hydra.run.dir={d}"],
                       env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "outside.yaml").read_text() == PRECIOUS and (tmp_path / "outside.log").read_text() == PRECIOUS
    assert "experiment=smoke" in (d / ".hydra" / "overrides.yaml").read_text()
    assert (d / RESULT).is_file() and "Traceback" not in p.stderr
    assert (p.stdout + p.stderr).count("is a symlink (noisybench never makes one") == 2, p.stdout + p.stderr


# ---- a full disk -----------------------------------------------------------------------------------------

def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(cfg, reference, tmp_path, monkeypatch,
                                                                        caplog):
    d = tmp_path / "run"
    real = rundir.atomic_write_bytes
    writes = []

    def full_on_second_checkpoint(path, data):
        writes.append(path)
        if Path(path).name == CHECKPOINT and len([w for w in writes if Path(w).name == CHECKPOINT]) == 2:
            with atomic_output(path) as f:  # half written, then the disk is full
                f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    with monkeypatch.context() as m:
        m.setattr(rundir, "atomic_write_bytes", full_on_second_checkpoint)
        with pytest.raises(train_mod.DiskFull) as e:
            train_mod.run(cfg, d, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"the disk of {d} is full (No space left on device); its last "
                                              "checkpoint (after epoch 1) is kept")
    assert msg.endswith(f"continue with: noisybench train --resume {d}")
    assert not (d / "failed.json").exists() and not (d / RESULT).exists()
    assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")]  # the half-written file is gone
    assert RunDir(d, cfg).load_checkpoint("cpu")["epoch"] == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        record = train_mod.run(cfg, d, progress=False)  # space freed: it resumes after epoch 1
    assert _warnings(caplog) == [] and record["resumed_from"] == [{"epochs_done": 1, "batches_done": 0}]
    _same(reference, d)


def test_a_full_disk_while_writing_train_log_is_raised_not_printed(tmp_path, capsys):
    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            pass

    logger = train_mod._run_log(tmp_path)
    handler = logger.handlers[0]
    handler.stream.close()
    handler.stream = Full()
    with pytest.raises(OSError) as e:
        logger.info("epoch 1/3")
    assert e.value.errno == errno.ENOSPC and "Logging error" not in capsys.readouterr().err
    train_mod._close_log(logger)


# ---- a forged noise-cache entry ----------------------------------------------------------------------------

def test_a_noise_cache_entry_forged_with_its_checksum_is_caught(make_cfg, tmp_path, caplog):
    from noisybench.noise.cache import labels_sha256
    from noisybench.pipeline import build_noise

    cfg = make_cfg("dataset=digits", "noise=symmetric", "noise.rate=0.4", "noise.include_true_class=false",
                   f"data_dir={tmp_path}", tiny=False)
    pool, noisy0, rep0, _ = build_noise(cfg)
    assert rep0["from_cache"] is False and abs(rep0["realized_noise_rate"] - 0.4) < 0.06
    path = tmp_path / "noise-cache" / "digits" / f"{rep0['cache_key']}.npy"
    rng = np.random.default_rng(1)
    k, clean = pool.num_classes, pool.y_train.astype(np.int64)
    forged = np.where(rng.random(len(clean)) < 0.9, (clean + rng.integers(1, k, len(clean))) % k, clean)
    assert abs(np.mean(forged != clean) - 0.9) < 0.03
    with open(path, "wb") as f:
        np.save(f, forged, allow_pickle=False)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["labels_sha256"] = labels_sha256(forged)  # the checksum forged with it
    side.write_text(json.dumps(meta))

    with caplog.at_level(logging.WARNING, logger="noisybench"):
        _, noisy1, rep1, _ = build_noise(cfg)
    w = [m for m in _warnings(caplog) if "noise cache" in m]
    assert len(w) == 1 and "differ from the ones this noise definition generates" in w[0], w
    assert rep1["realized_noise_rate"] == rep0["realized_noise_rate"] and np.array_equal(noisy1, noisy0)
    assert np.array_equal(np.load(path, allow_pickle=False), noisy0)  # rewritten
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="noisybench"):
        _, noisy2, rep2, _ = build_noise(cfg)
    assert rep2["from_cache"] is True and _warnings(caplog) == [] and np.array_equal(noisy2, noisy0)


def test_a_sweeps_planted_symlinks_are_set_aside_before_hydra_writes(tmp_path):
    from omegaconf import OmegaConf

    from noisybench.locks import LockCallback, release_all

    sweep = tmp_path / "sweep"
    _plant(sweep, "multirun.yaml", tmp_path / "outside.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (sweep / "job@12345678").mkdir()
    (sweep / "job@12345678" / ".hydra").symlink_to(elsewhere, target_is_directory=True)
    (sweep / "seed=1@abcdef12").symlink_to(elsewhere, target_is_directory=True)  # a job directory
    try:
        LockCallback().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    finally:
        release_all()
    assert not os.path.lexists(sweep / "multirun.yaml") and not os.path.lexists(sweep / "job@12345678" / ".hydra")
    assert len(list(sweep.glob("multirun.yaml.bad-*"))) == 1 and len(list(sweep.glob("job@*/.hydra.bad-*"))) == 1
    assert not os.path.lexists(sweep / "seed=1@abcdef12") and len(list(sweep.glob("seed=1@abcdef12.bad-*"))) == 1
    assert (tmp_path / "outside.yaml").read_text() == PRECIOUS


FULL_DISK_CLI = """
import errno, os, sys
from pathlib import Path
from noisybench import rundir
real, n = rundir.atomic_write_bytes, []
def full(path, data):
    n.append(path)
    if Path(path).name == "checkpoint.pt" and len([p for p in n if Path(p).name == "checkpoint.pt"]) == 2:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real(path, data)
rundir.atomic_write_bytes = full
from noisybench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_is_one_error_line_from_the_cli(cli_env, tmp_path):
    d = tmp_path / "run"
    args = ["train", "experiment=smoke", "trainer.epochs=3", "trainer.checkpoint_every=1", f"hydra.run.dir={d}"]
    p = subprocess.run([sys.executable, "-c", FULL_DISK_CLI, *args], env=cli_env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"noisybench: error: the disk of {d} is full (No space left on device); its last checkpoint (after epoch 1) "
        f"is kept; free some space, then continue with: noisybench train --resume {d}"], p.stderr
    assert "Traceback" not in p.stdout + p.stderr and not (d / "failed.json").exists()
    again = subprocess.run([sys.executable, "-m", "noisybench", "train", "--resume", str(d)], env=cli_env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads((d / RESULT).read_text())["resumed_from"] == [{"epochs_done": 1, "batches_done": 0}]
