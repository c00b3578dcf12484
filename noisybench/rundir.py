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
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from noisybench.errors import NoisybenchError, one_line
from noisybench.utils import atomic_write_bytes, atomic_write_json

# Keys that do not change the experiment a run is: where it reads/writes, where it runs and how it
# reports progress (trackers: `logger`). (Threads and devices can change floating-point summation order, not the
# experiment; result.json records the device used. So do the fast path's keys: precision=auto already differs
# by device, and result.json records the precision, channels_last and compile a run used.)
NOT_IDENTITY = ("data_dir", "noise_cache", "objective", "trainer.device", "trainer.progress",
                "trainer.checkpoint_every", "trainer.keep_checkpoint", "trainer.threads", "logger",
                "trainer.precision", "trainer.channels_last", "trainer.compile", "trainer.save_weights_at")
# Keys added to the configs after runs were made: at these values (the behaviour from before the key
# existed) they stay out of the identity, so a directory made before the key existed is still the same run
# and a sweep resumed across the upgrade skips or continues it (docs/runs.md, "A run's identity and life").
ADDED_AT_DEFAULT = {"method.apply_weights": True, "dataset.subset_at_most": None, "method.class_floor": 0.0,
                    "method.sharpness": 1.0}
RESULT, FAILED, CHECKPOINT, IDENTITY, ATTEMPT = ("result.json", "failed.json", "checkpoint.pt", "identity.json",
                                                 "attempt.json")
CHECKSUM = "checkpoint.pt.sha256"  # the checkpoint's sha256 (and its identity), beside it
# the keys a result.json must hold to count as a finished run (the CLI's result line and the tables read them)
RESULT_KEYS = ("test_last", "test_selected", "test_best", "selected_epoch", "realized_noise_rate", "train_time_s",
               "config")
MAX_RECORD_BYTES = 64 << 20
# what a run writes into its directory besides the atomic records (which replace a symlink, never write
# through it): its log (appended to), the trackers' folders, Hydra's saved config. A symlink under one of
# these names was planted (noisybench makes none): it is set aside before anything is written.
APPENDED = ("train.log", "tb", "mlruns", "wandb", ".hydra")
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
INVOCATION_ENV = "NOISYBENCH_INVOCATION"  # set by a sweep's parent; jobs record it in attempt.json
MAX_DIRNAME = 120
LEFTOVER = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # noisybench.utils.atomic_output's temporary files
log = logging.getLogger(__name__)


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
        node, leaf = _parent(container, dotted)
        if node is not None:
            node.pop(leaf, None)
    for dotted, default in ADDED_AT_DEFAULT.items():
        node, leaf = _parent(container, dotted)
        if node is not None and leaf in node and node[leaf] == default:
            del node[leaf]
    return container


def _parent(container: dict, dotted: str) -> tuple[dict | None, str]:
    """The dict that holds `dotted`'s last part (None when a parent is missing), and that part."""
    *parents, leaf = dotted.split(".")
    node = container
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def identity_hash(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_dirname(*, _root_) -> str:
    """Resolver for hydra.sweep.subdir: the job's overrides (readable; NOT_IDENTITY keys left out) and
    its identity hash, so rerunning a sweep finds its jobs again and a different grid in the same
    sweep dir never lands in (or overwrites) another configuration's directory."""
    return job_dirname_of([str(o) for o in _root_.hydra.overrides.task], _root_)


def job_dirname_of(task_overrides: list[str], cfg: DictConfig | dict) -> str:
    """job_dirname of a job with these overrides and this config (`noisybench status` and --dry-run
    compute where each job of a grid lives)."""
    items = []
    for o in task_overrides:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if key not in NOT_IDENTITY and not key.startswith(tuple(f"{k}." for k in NOT_IDENTITY)):
            items.append(str(o))
    name = re.sub(r"[^A-Za-z0-9._=,+~%:-]", "_", ",".join(sorted(items))) or "default"
    h = identity_hash(identity_config(cfg))
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
    """The files of one run directory; see the module docstring. Every file it reads back is checked
    (`read_object`, `load_checkpoint`): one that fails is set aside (`set_aside`) with one warning line
    and the run goes on as if it were absent."""

    def __init__(self, path: Path | str, cfg: DictConfig) -> None:
        self.path = Path(path)
        self.ident = identity_config(cfg)
        self.hash = identity_hash(self.ident)
        self.in_place: str | None = None  # the sha256 of checkpoint.pt as this process verified or wrote it

    def file(self, name: str) -> Path:
        return self.path / name

    def set_aside(self, name: str, why: str, quiet: bool = False) -> Path:
        """Rename `name` to `name.bad-<time>` (kept for inspection), with one warning line."""
        p = self.file(name)
        dest = _rename_aside(p)
        if not quiet:
            log.warning("noisybench: warning: %s %s; set aside as %s", p, why, dest.name)
        return dest

    def unplant(self) -> None:
        """Set aside every symlink where this run (or Hydra, or a tracker) writes by name (`APPENDED`)."""
        unplant(self.path)

    def read_object(self, name: str, required: tuple[str, ...] = ()) -> dict | None:
        """The JSON object in `name` (None if absent); a file that is not one is set aside."""
        doc, why = read_json_object(self.file(name), required)
        if why is not None:
            self.set_aside(name, why)
        return doc

    def saved_identity(self) -> dict | None:
        """The identity of the run already in this directory (None for a new directory). Directories
        written before identity.json existed are read from their result.json's config."""
        ident = self.read_object(IDENTITY, ("identity", "config"))
        if ident is not None:
            if isinstance(ident["config"], dict) and ident["identity"] == identity_hash(ident["config"]):
                return ident["config"]
            self.set_aside(IDENTITY, "does not hold an identity and the config it is the hash of")
        for name, keys in ((RESULT, RESULT_KEYS), (FAILED, ("config",))):
            doc = self.read_object(name, keys)
            if doc is not None and isinstance(doc["config"], dict):
                return identity_config(doc["config"])
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

    def remove_leftovers(self) -> list[Path]:
        """The temporary files of atomic writes (`.checkpoint.pt.k3x9a_qz.tmp`) that a killed process left
        in the directory: removed (the caller holds the run's lock, so no write of another process is
        under way), so that killed attempts do not fill the disk with copies of a checkpoint."""
        removed = []
        for p in self.path.glob(".*.tmp"):
            if LEFTOVER.match(p.name) and (p.is_file() or p.is_symlink()):
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

    def finished(self) -> dict | None:
        """This run's record, if it finished (a result.json of another identity is set aside)."""
        doc = self.read_object(RESULT, RESULT_KEYS)
        if doc is not None and doc.get("identity", self.hash) != self.hash:
            self.set_aside(RESULT, f"belongs to another run (identity {_short(doc.get('identity'))})")
            return None
        return doc

    def check_attempt(self) -> None:
        """An attempt.json that is not a JSON object is set aside (a sweep's parent reads it)."""
        self.read_object(ATTEMPT, ("action",))

    def write_attempt(self, action: str, **extra) -> None:
        atomic_write_json(self.file(ATTEMPT), {"action": action, "invocation": os.environ.get(INVOCATION_ENV),
                                               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})

    def clear_failure(self) -> bool:
        """Before a retry: the earlier failed.json goes (exactly one outcome per directory)."""
        existed = os.path.lexists(self.file(FAILED))
        self._remove(FAILED)
        return existed

    def fail(self, message: str, kind: str) -> None:
        """failed.json, and nothing a table could count: no result, no checkpoint."""
        self.remove_checkpoint()
        self._remove(RESULT)
        atomic_write_json(self.file(FAILED), {"error": message, "type": kind, "identity": self.hash,
                                              "config": self.ident})

    def _remove(self, name: str) -> None:
        """Unlink `name`; a directory in its place (nothing noisybench makes) is set aside instead."""
        p = self.file(name)
        if p.is_dir() and not p.is_symlink():
            self.set_aside(name, "is a directory")
        else:
            p.unlink(missing_ok=True)

    # ---- checkpoints ----
    def save_checkpoint(self, state: dict) -> int:
        """Atomic torch.save, and its checksum beside it; returns the file size in bytes. The
        checksum file, written first, lists the new checksum and that of the checkpoint in place (the
        one this process verified or wrote: not the file's earlier first entry, which a killed attempt
        may have written for a checkpoint that never arrived), so a crash between the two writes leaves
        a checkpoint that still matches (a genuine point of this run: resuming from it gives the same
        numbers)."""
        import torch

        buf = io.BytesIO()
        torch.save({"identity": self.hash, **state}, buf)
        data = buf.getvalue()
        new = hashlib.sha256(data).hexdigest()
        before = [self.in_place] if self.in_place and self.in_place != new else []
        atomic_write_json(self.file(CHECKSUM), {"identity": self.hash, "sha256": [new, *before],  # the position:
                                                "epoch": state.get("epoch"), "batch": state.get("batch")})  # for status
        atomic_write_bytes(self.file(CHECKPOINT), data)
        self.in_place = new
        return len(data)

    def load_checkpoint(self, device) -> dict | None:
        """The checkpoint, if it passes every check (`_verify`); else it is set aside (one warning
        line) and the run starts from epoch 0."""
        p = self.file(CHECKPOINT)
        if not os.path.lexists(p):
            return None
        state, why = self._verify(p, device)
        if why is not None:
            self.set_aside_checkpoint(why)
        return state

    def set_aside_checkpoint(self, why: str) -> None:
        """The checkpoint (and its checksum file, silently) set aside: the run starts from epoch 0."""
        self.in_place = None
        self.set_aside(CHECKPOINT, f"{why}; starting from epoch 0")
        if os.path.lexists(self.file(CHECKSUM)):
            self.set_aside(CHECKSUM, "", quiet=True)

    def _verify(self, p: Path, device) -> tuple[dict | None, str | None]:
        """(state, None) or (None, why): a regular file, whose sha256 is in checkpoint.pt.sha256, that
        torch loads (weights only), of this identity, whose position is inside the run."""
        import torch

        if not p.is_file() or p.is_symlink():
            return None, "is not a regular file"
        data = p.read_bytes()
        sums = read_json_object(self.file(CHECKSUM), ("sha256",))[0]
        if sums is None:
            return None, f"has no readable checksum ({CHECKSUM})"
        digest = hashlib.sha256(data).hexdigest()
        if digest not in (sums["sha256"] if isinstance(sums["sha256"], list) else []):
            return None, "does not match its checksum (damaged or edited)"
        try:
            state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        except Exception as e:  # a foreign file: start over rather than resume from garbage
            return None, f"cannot be read ({one_line(e)[:120] or type(e).__name__})"
        if not isinstance(state, dict) or state.get("identity") != self.hash:
            return None, "belongs to another run (its identity differs)"
        why = _position_error(state, self.ident.get("trainer") or {})
        if why:
            return None, why
        self.in_place = digest
        return state, None

    def remove_checkpoint(self) -> None:
        self.in_place = None
        self._remove(CHECKPOINT)
        self._remove(CHECKSUM)


def unplant(directory: Path | str, names: tuple[str, ...] = APPENDED) -> None:
    """Rename each symlink named `names` in `directory` (and in its `.hydra/`) to NAME.bad-<time>, with one
    warning line: writes never follow a symlink that noisybench did not make."""
    d = Path(directory)
    subs = [d / n for n in names] + [d / ".hydra" / n for n in HYDRA_FILES]
    for p in subs:
        if p.is_symlink():
            dest = _rename_aside(p)
            log.warning("noisybench: warning: %s is a symlink (noisybench never makes one, and does not write "
                        "through it); set aside as %s", p, dest.name)


def _rename_aside(p: Path) -> Path:
    """Rename `p` to `NAME.bad-<time>` (a free name) and return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest, i = p.with_name(f"{p.name}.bad-{stamp}"), 1
    while os.path.lexists(dest):
        dest, i = p.with_name(f"{p.name}.bad-{stamp}-{i}"), i + 1
    os.rename(p, dest)
    return dest


def open_append(path: Path):
    """`path` opened for appending without following a symlink (O_NOFOLLOW): a symlink put there after
    `unplant` fails with ELOOP instead of being written through. Returns a text file object."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(path, flags, 0o666), "a", encoding="utf-8")


def _position_error(state: dict, trainer: dict) -> str | None:
    """Why a checkpoint's position (epoch, batch, metric rows) cannot be a point of this run, or None."""
    epochs, bs = trainer.get("epochs"), trainer.get("batch_size")
    epoch, batch, rows, perm = state.get("epoch"), state.get("batch"), state.get("rows"), state.get("perm")
    if not _is_int(epoch) or not _is_int(batch) or not isinstance(rows, list):
        return "lacks its epoch, batch or metric rows"
    if _is_int(epochs) and not 0 <= epoch <= epochs:
        return f"is at epoch {epoch}, outside this run's 0..{epochs}"
    if len(rows) != epoch:
        return f"is at epoch {epoch} but holds {len(rows)} epochs' metrics"
    if batch < 0 or (batch > 0 and (epoch == epochs or perm is None or getattr(perm, "ndim", 0) != 1
                                    or (_is_int(bs) and batch >= len(perm) + bs))):
        return f"is at batch position {batch}, outside its epoch"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_json_object(path: Path, required: tuple[str, ...] = ()) -> tuple[dict | None, str | None]:
    """(the JSON object in `path`, None), (None, None) if there is no file, or (None, why not): not a
    regular file, not UTF-8, not JSON, not an object, or without a `required` key."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return None, "is not a regular file"
    if st.st_size > MAX_RECORD_BYTES:
        return None, f"is {st.st_size} bytes, too large for a record"
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    except UnicodeDecodeError:
        return None, "is not UTF-8 text"
    except (ValueError, RecursionError):
        return None, "is not valid JSON"
    if not isinstance(doc, dict):
        return None, f"is not a JSON object (it holds a {type(doc).__name__})"
    missing = [k for k in required if k not in doc]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    return doc, None
