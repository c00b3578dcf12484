"""The noise cache verifies every entry (sidecar, key, payload, checksum, shape, dtype, label range)
and recomputes a bad one with one warning; cache files, JSON, the heatmap and downloads are written
atomically with the permissions of a normal file (0666 minus the umask)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat

import numpy as np
import pytest

from noisybench.noise.cache import cached, labels_sha256, noise_key
from noisybench.noise.symmetric import SymmetricNoise

N, K = 2000, 10
CLEAN = np.random.default_rng(7).integers(0, K, N).astype(np.int64)


def entry(seed: int = 0):
    """(key, payload, compute, calls) for symmetric noise on CLEAN; `calls` counts computations."""
    inj = SymmetricNoise(0.4, include_true_class=False, seed=seed)
    key, payload = noise_key("synthetic", {"n": N}, "symmetric", inj.spec(), CLEAN, K)
    calls = []

    def compute():
        calls.append(1)
        return inj(CLEAN, K)

    return key, payload, compute, calls


def fresh(seed: int = 0) -> np.ndarray:
    return SymmetricNoise(0.4, include_true_class=False, seed=seed)(CLEAN, K)


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "noisybench" and r.levelno == logging.WARNING and "noise cache" in r.getMessage()]


def _save(path, arr):
    with open(path, "wb") as f:  # np.save(path) would append .npy to a str without it; keep the name
        np.save(f, arr, allow_pickle=False)


def _forge_sidecar(path, arr):
    """Rewrite the sidecar's checksum for `arr`: only the range/dtype checks can catch it then."""
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["labels_sha256"] = labels_sha256(arr)
    side.write_text(json.dumps(meta))


def tamper_zeros(path, tmp_path):
    _save(path, np.zeros(N, dtype=np.int64))


def tamper_clean(path, tmp_path):
    _save(path, CLEAN.copy())


def tamper_minus_one(path, tmp_path):
    _save(path, np.full(N, -1, dtype=np.int64))


def tamper_ninety_nine(path, tmp_path):
    _save(path, np.full(N, 99, dtype=np.int64))


def tamper_minus_one_forged(path, tmp_path):
    bad = np.full(N, -1, dtype=np.int64)
    _save(path, bad)
    _forge_sidecar(path, bad)


def tamper_ninety_nine_forged(path, tmp_path):
    bad = fresh()
    bad[::7] = 99
    _save(path, bad)
    _forge_sidecar(path, bad)


def tamper_int32(path, tmp_path):
    _save(path, fresh().astype(np.int32))


def tamper_wrong_length(path, tmp_path):
    _save(path, fresh()[:-1])


def tamper_truncated(path, tmp_path):
    path.write_bytes(path.read_bytes()[:200])


def tamper_garbage(path, tmp_path):
    path.write_bytes(b"this is not a .npy file\n" * 10)


def tamper_zip(path, tmp_path):
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)


def tamper_bad_header(path, tmp_path):
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}  \n" + b"\0" * 64)


def tamper_missing_sidecar(path, tmp_path):
    path.with_suffix(".json").unlink()


def tamper_garbage_sidecar(path, tmp_path):
    path.with_suffix(".json").write_text("{not json")


def tamper_other_key_sidecar(path, tmp_path):
    """The sidecar (and labels) of another noise definition copied over this key's entry."""
    other_dir = tmp_path / "other"
    key1, payload1, compute1, _ = entry(seed=1)
    cached(other_dir, key1, payload1, N, compute1, K)
    shutil.copy(other_dir / f"{key1}.json", path.with_suffix(".json"))
    shutil.copy(other_dir / f"{key1}.npy", path)


def tamper_other_payload(path, tmp_path):
    """Right key and checksum, but the payload says it was made for another noise seed."""
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["noise"]["seed"] = 1
    side.write_text(json.dumps(meta))


def tamper_old_version(path, tmp_path):
    """What the previous version wrote: the payload alone, no key, no checksum."""
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    for f in ("cache_key", "labels_sha256", "num_samples"):
        meta.pop(f)
    side.write_text(json.dumps(meta, indent=2))


TAMPERS = {
    "zeros": (tamper_zeros, "checksum"),
    "clean_labels": (tamper_clean, "checksum"),
    "minus_one": (tamper_minus_one, "checksum"),
    "ninety_nine": (tamper_ninety_nine, "checksum"),
    "minus_one_forged_checksum": (tamper_minus_one_forged, "outside [0, 10)"),
    "ninety_nine_forged_checksum": (tamper_ninety_nine_forged, "outside [0, 10)"),
    "int32": (tamper_int32, "dtype int32"),
    "wrong_length": (tamper_wrong_length, f"shape ({N - 1},)"),
    "truncated": (tamper_truncated, "unreadable labels file"),
    "garbage": (tamper_garbage, "not a .npy file"),
    "zip": (tamper_zip, "not a .npy file"),
    "bad_header": (tamper_bad_header, "unreadable labels file"),
    "missing_sidecar": (tamper_missing_sidecar, "no sidecar"),
    "garbage_sidecar": (tamper_garbage_sidecar, "unreadable sidecar"),
    "other_key_sidecar": (tamper_other_key_sidecar, "sidecar is for key"),
    "other_payload": (tamper_other_payload, "payload differs"),
    "old_version_no_checksum": (tamper_old_version, "no checksum"),
}


def test_correct_labels_are_not_all_zeros_or_clean():
    good = fresh()
    assert good.any() and not np.array_equal(good, CLEAN) and abs(np.mean(good != CLEAN) - 0.4) < 0.05


def test_good_entry_is_written_verified_and_hits(tmp_path, caplog):
    key, payload, compute, calls = entry()
    with caplog.at_level(logging.WARNING, logger="noisybench"):
        first, hit1 = cached(tmp_path, key, payload, N, compute, K)
        second, hit2 = cached(tmp_path, key, payload, N, compute, K)
    assert (hit1, hit2, len(calls)) == (False, True, 2)  # a hit is compared with the generator's labels
    assert np.array_equal(first, fresh()) and np.array_equal(second, fresh()) and second.dtype == np.int64
    meta = json.loads((tmp_path / f"{key}.json").read_text())
    assert meta["cache_key"] == key and meta["labels_sha256"] == labels_sha256(fresh())
    assert meta["noise"] == payload["noise"] and meta["num_classes"] == K
    assert cache_warnings(caplog) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.json", f"{key}.npy"]  # no temp files left


def test_missing_labels_file_is_a_plain_miss(tmp_path, caplog):
    key, payload, compute, calls = entry()
    cached(tmp_path, key, payload, N, compute, K)
    (tmp_path / f"{key}.npy").unlink()
    with caplog.at_level(logging.WARNING, logger="noisybench"):
        labels, hit = cached(tmp_path, key, payload, N, compute, K)
    assert not hit and len(calls) == 2 and np.array_equal(labels, fresh())
    assert cache_warnings(caplog) == []


def test_num_classes_defaults_to_the_payloads(tmp_path, caplog):
    key, payload, compute, calls = entry()
    cached(tmp_path, key, payload, N, compute)
    path = tmp_path / f"{key}.npy"
    tamper_ninety_nine_forged(path, tmp_path)
    with caplog.at_level(logging.WARNING, logger="noisybench"):
        labels, hit = cached(tmp_path, key, payload, N, compute)
    assert not hit and np.array_equal(labels, fresh()) and len(cache_warnings(caplog)) == 1


@pytest.mark.parametrize("kind", list(TAMPERS))
def test_bad_entry_is_recomputed_rewritten_with_one_warning(tmp_path, caplog, kind):
    tamper, reason = TAMPERS[kind]
    cache_dir = tmp_path / "cache"
    key, payload, compute, calls = entry()
    cached(cache_dir, key, payload, N, compute, K)
    path = cache_dir / f"{key}.npy"
    tamper(path, tmp_path)

    with caplog.at_level(logging.WARNING, logger="noisybench"):
        labels, hit = cached(cache_dir, key, payload, N, compute, K)
    assert not hit and len(calls) == 2
    assert np.array_equal(labels, fresh()) and labels.dtype == np.int64
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"noisybench: warning: noise cache entry {path} failed verification (")
    assert warnings[0].endswith("); recomputed") and reason in warnings[0], warnings[0]

    # rewritten on disk: the right labels and a sidecar for this key with their checksum
    on_disk = np.load(path, allow_pickle=False)
    assert np.array_equal(on_disk, fresh()) and on_disk.dtype == np.int64
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["cache_key"] == key and meta["labels_sha256"] == labels_sha256(fresh())
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temp files left

    # ... and now hits, without a warning (one generation, to compare)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="noisybench"):
        again, hit = cached(cache_dir, key, payload, N, compute, K)
    assert hit and len(calls) == 3 and np.array_equal(again, fresh())
    assert cache_warnings(caplog) == []


def test_cache_disabled_just_computes(tmp_path):
    key, payload, compute, calls = entry()
    labels, hit = cached(None, key, payload, N, compute, K)
    assert not hit and np.array_equal(labels, fresh()) and not list(tmp_path.iterdir())


# ---- end to end: the real noise path (build_noise) on digits ---------------------------------------

@pytest.fixture
def digits_cfg(tmp_path):
    from hydra import compose

    from noisybench.config import CONFIG_NAME, hydra_context, register_resolvers

    register_resolvers()
    with hydra_context():
        return compose(CONFIG_NAME, overrides=["dataset=digits", "noise=symmetric", "noise.rate=0.4",
                                                "noise.include_true_class=false", f"data_dir={tmp_path}"])


@pytest.mark.parametrize("kind", ["zeros", "clean_labels", "minus_one", "ninety_nine", "old_version_no_checksum"])
def test_build_noise_realised_rate_survives_a_tampered_cache(digits_cfg, tmp_path, caplog, kind):
    from noisybench.pipeline import build_noise

    pool, noisy0, rep0, _ = build_noise(digits_cfg)
    assert rep0["from_cache"] is False and abs(rep0["realized_noise_rate"] - 0.4) < 0.06
    path = tmp_path / "noise-cache" / "digits" / f"{rep0['cache_key']}.npy"
    assert path.is_file()
    if kind == "clean_labels":
        _save(path, pool.y_train.astype(np.int64))
    elif kind == "zeros":
        _save(path, np.zeros(len(pool.y_train), dtype=np.int64))
    elif kind == "minus_one":
        _save(path, np.full(len(pool.y_train), -1, dtype=np.int64))
    elif kind == "ninety_nine":
        _save(path, np.full(len(pool.y_train), 99, dtype=np.int64))
    else:
        TAMPERS[kind][0](path, tmp_path)

    with caplog.at_level(logging.WARNING, logger="noisybench"):
        _, noisy1, rep1, _ = build_noise(digits_cfg)
    assert rep1["from_cache"] is False and len(cache_warnings(caplog)) == 1
    assert rep1["realized_noise_rate"] == rep0["realized_noise_rate"] and np.array_equal(noisy1, noisy0)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="noisybench"):
        _, noisy2, rep2, _ = build_noise(digits_cfg)
    assert rep2["from_cache"] is True and cache_warnings(caplog) == []
    assert rep2["realized_noise_rate"] == rep0["realized_noise_rate"] and np.array_equal(noisy2, noisy0)


# ---- atomic writes and file modes --------------------------------------------------------------------

@pytest.fixture(params=[(0o022, 0o644), (0o002, 0o664)], ids=["umask022", "umask002"])
def umask(request):
    mask, mode = request.param
    old = os.umask(mask)
    yield mode
    os.umask(old)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_0666_minus_umask(tmp_path, umask):
    from noisybench.data.download import fetch
    from noisybench.noise.report import save_heatmap
    from noisybench.utils import atomic_write_json

    key, payload, compute, _ = entry()
    cached(tmp_path / "cache", key, payload, N, compute, K)
    npy, side = tmp_path / "cache" / f"{key}.npy", tmp_path / "cache" / f"{key}.json"
    assert (mode_of(npy), mode_of(side)) == (umask, umask)
    tamper_zeros(npy, tmp_path)  # a rewritten entry too
    os.chmod(side, 0o600)
    cached(tmp_path / "cache", key, payload, N, compute, K)
    assert (mode_of(npy), mode_of(side)) == (umask, umask)

    atomic_write_json(tmp_path / "out" / "x.json", {"a": 1})
    assert mode_of(tmp_path / "out" / "x.json") == umask

    png = tmp_path / "out" / "transition_matrix.png"
    save_heatmap(np.eye(3), png, ["a", "b", "c"], "title")
    assert mode_of(png) == umask and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 3000)
    got = fetch(src.as_uri(), tmp_path / "dl" / "src.bin")
    assert got.read_bytes() == src.read_bytes() and mode_of(got) == umask
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["transition_matrix.png", "x.json"]


def test_atomic_output_leaves_nothing_behind_on_failure(tmp_path):
    from noisybench.utils import atomic_output

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failed_download_leaves_no_partial_file(tmp_path):
    from noisybench.data.download import fetch
    from noisybench.errors import DataError

    with pytest.raises(DataError, match="could not download"):
        fetch((tmp_path / "missing.bin").as_uri(), tmp_path / "dl" / "x.bin", hint="place it by hand")
    assert list((tmp_path / "dl").iterdir()) == []
