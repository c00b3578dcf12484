"""A run's identity and the life of its directory (docs/runs.md).

Identity: the resolved config minus where it writes and how it reports (`NOT_IDENTITY`), hashed.
Two runs with the same identity are the same run. A run directory holds one identity
(`identity.json`, written when the run starts) and at most one outcome:

    result.json      finished (written last, atomically)
    failed.json      failed (one line why)
    checkpoint.pt    interrupted (everything the next step depends on); removed when the run
                     finishes unless trainer.keep_checkpoint=true (then it holds the final weights)

`attempt.json` records the last attempt (new, resumed, retried, skipped) and the sweep invocation
that made it, so a sweep's parent process can count outcomes from the disk (jobs may run in other
processes or on other machines).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from noisybench.errors import NoisybenchError
from noisybench.utils import atomic_write_bytes, atomic_write_json

# Keys that do not change the experiment a run is: where it reads/writes, where it runs and how it
# reports progress (trackers: `logger`). (Threads and devices can change floating-point summation order, not the
# experiment; result.json records the device used. So do the fast path's keys: precision=auto already differs
# by device, and result.json records the precision, channels_last and compile a run used.)
NOT_IDENTITY = ("data_dir", "noise_cache", "objective", "trainer.device", "trainer.progress",
                "trainer.checkpoint_every", "trainer.keep_checkpoint", "trainer.threads", "logger",
                "trainer.precision", "trainer.channels_last", "trainer.compile", "trainer.save_weights_at")
RESULT, FAILED, CHECKPOINT, IDENTITY, ATTEMPT = ("result.json", "failed.json", "checkpoint.pt", "identity.json",
                                                 "attempt.json")
INVOCATION_ENV = "NOISYBENCH_INVOCATION"  # set by a sweep's parent; jobs record it in attempt.json
MAX_DIRNAME = 120


class RunDirConflict(NoisybenchError):
    """The directory holds a run of a different configuration (nothing is written into it)."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM during training: a checkpoint was written. A BaseException (like
    KeyboardInterrupt) so that a sweep stops instead of starting its next job."""

    def __init__(self, signum: int, where: str, run_dir: Path | None) -> None:
        super().__init__(where)
        self.signum, self.where, self.run_dir = signum, where, run_dir

    def __reduce__(self):  # picklable: worker processes (joblib, submitit) send it to the sweep's parent
        return (type(self), (self.signum, self.where, self.run_dir))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def identity_config(cfg: DictConfig | dict) -> dict:
    """The resolved config that defines a run (hydra's own node and NOT_IDENTITY keys removed)."""
    if isinstance(cfg, DictConfig):
        keys = [k for k in cfg.keys() if k != "hydra"]
        container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    else:
        container = json.loads(json.dumps({k: v for k, v in cfg.items() if k != "hydra"}, default=str))
    for dotted in NOT_IDENTITY:
        *parents, leaf = dotted.split(".")
        node = container
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return container


def identity_hash(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_dirname(*, _root_) -> str:
    """Resolver for hydra.sweep.subdir: the job's overrides (readable; NOT_IDENTITY keys left out) and
    its identity hash, so rerunning a sweep finds its jobs again and a different grid in the same
    sweep dir never lands in (or overwrites) another configuration's directory."""
    items = []
    for o in _root_.hydra.overrides.task:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if key not in NOT_IDENTITY and not key.startswith(tuple(f"{k}." for k in NOT_IDENTITY)):
            items.append(str(o))
    name = re.sub(r"[^A-Za-z0-9._=,+~%:-]", "_", ",".join(sorted(items))) or "default"
    h = identity_hash(identity_config(_root_))
    return f"{name[:MAX_DIRNAME]}@{h[:8]}"


def differing_keys(saved: Any, new: Any, prefix: str = "") -> list[str]:
    """`key=new (it has old)` for every dotted key whose value differs; a config group whose choice
    (`name`) differs is one entry, `group=new (it has old)`."""
    if isinstance(saved, dict) and isinstance(new, dict):
        if prefix and "name" in saved and "name" in new and saved["name"] != new["name"]:
            return [f"{prefix[:-1]}={_short(new['name'])} (it has {_short(saved['name'])})"]
        out = []
        for k in sorted(set(saved) | set(new), key=str):
            out += differing_keys(saved.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if saved == new else [f"{prefix[:-1]}={_short(new)} (it has {_short(saved)})"]


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:37] + "..."


class RunDir:
    """The files of one run directory; see the module docstring."""

    def __init__(self, path: Path | str, cfg: DictConfig) -> None:
        self.path = Path(path)
        self.ident = identity_config(cfg)
        self.hash = identity_hash(self.ident)

    def file(self, name: str) -> Path:
        return self.path / name

    def saved_identity(self) -> dict | None:
        """The identity of the run already in this directory (None for a new directory). Directories
        written before identity.json existed are read from their result.json's config."""
        for name, key in ((IDENTITY, "config"), (RESULT, "config"), (FAILED, "config")):
            p = self.file(name)
            if p.is_file():
                try:
                    doc = json.loads(p.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                if isinstance(doc, dict) and isinstance(doc.get(key), dict):
                    return doc[key] if name == IDENTITY else identity_config(doc[key])
        return None

    def claim(self) -> None:
        """Refuse a directory that holds another configuration; else record this run's identity."""
        saved = self.saved_identity()
        if saved is not None and identity_hash(saved) != self.hash:
            diff = differing_keys(saved, self.ident)
            shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
            raise RunDirConflict(f"{self.path} holds a run of another configuration: {shown}; choose another "
                                 f"hydra.run.dir, or continue that run with: noisybench train --resume {self.path}")
        atomic_write_json(self.file(IDENTITY), {"identity": self.hash, "config": self.ident})

    def finished(self) -> dict | None:
        p = self.file(RESULT)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def write_attempt(self, action: str, **extra) -> None:
        atomic_write_json(self.file(ATTEMPT), {"action": action, "invocation": os.environ.get(INVOCATION_ENV),
                                               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})

    def clear_failure(self) -> bool:
        """Before a retry: the earlier failed.json goes (exactly one outcome per directory)."""
        p = self.file(FAILED)
        existed = p.is_file()
        p.unlink(missing_ok=True)
        return existed

    def fail(self, message: str, kind: str) -> None:
        """failed.json, and nothing a table could count: no result, no checkpoint."""
        self.file(CHECKPOINT).unlink(missing_ok=True)
        self.file(RESULT).unlink(missing_ok=True)
        atomic_write_json(self.file(FAILED), {"error": message, "type": kind, "identity": self.hash,
                                              "config": self.ident})

    # ---- checkpoints ----
    def save_checkpoint(self, state: dict) -> int:
        """Atomic torch.save; returns the file size in bytes."""
        import torch

        buf = io.BytesIO()
        torch.save({"identity": self.hash, **state}, buf)
        data = buf.getvalue()
        atomic_write_bytes(self.file(CHECKPOINT), data)
        return len(data)

    def load_checkpoint(self, device) -> dict | None:
        import torch

        p = self.file(CHECKPOINT)
        if not p.is_file():
            return None
        try:
            state = torch.load(p, map_location=device, weights_only=True)
        except Exception as e:  # a torn or foreign file: start over rather than resume from garbage
            import logging

            logging.getLogger(__name__).warning("ignoring unreadable checkpoint %s (%s); starting from epoch 0",
                                                p, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None
        if state.get("identity") != self.hash:
            return None
        return state

    def remove_checkpoint(self) -> None:
        self.file(CHECKPOINT).unlink(missing_ok=True)
