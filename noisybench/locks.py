"""One process per run directory and per sweep directory (docs/runs.md#one-process-per-directory).

The lock is an OS lock (`fcntl.flock`) on `.noisybench.lock` inside the directory: the kernel
releases it when its process ends, however it ends (kill -9 included), so a lock file left behind
never blocks. The holder writes who it is into the file (pid, host, since when) for the message a
second process prints; a second process only opens the file and reads it, it writes nothing into
the directory. Locks are per process and re-entrant: the CLI locks a single run's directory before
Hydra writes into it, and the runner locks it again (a no-op) when it starts training.

A filesystem without flock support (some network filesystems) gets one warning line and no lock.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback

from noisybench.errors import NoisybenchError
from noisybench.rundir import unplant

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unlocked (one warning line)
    fcntl = None

log = logging.getLogger(__name__)
LOCK = ".noisybench.lock"
PROBE_RETRIES = 3  # acquire(): tries over 0.1 s, so that holder()'s instant probe never refuses a run
_HELD: dict[str, list] = {}  # realpath of the directory -> [fd, depth]: this process's locks


class DirBusy(NoisybenchError):
    """Another process works in this directory (nothing was written into it)."""


class Refused(BaseException):
    """DirBusy raised from a Hydra callback: a BaseException, like Interrupted, so that Hydra's
    callback machinery (which turns exceptions into warnings) lets it through to the CLI."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {int(info['pid'])} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "another process"  # it has the lock but has not written its name yet


def acquire(directory: Path | str, what: str = "run") -> bool:
    """Lock `directory` (created if missing) for this process; DirBusy if another process holds it.
    Re-entrant within a process. Returns False when the filesystem cannot lock (warned once)."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False  # not a directory we can make: the runner's own checks say so, in their words
    key = os.path.realpath(d)
    if key in _HELD:
        _HELD[key][1] += 1
        return True
    if fcntl is None:
        return False
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(d / LOCK, flags, 0o666)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EROFS, errno.ENOTDIR):
            return False  # a directory we cannot write: the run fails with the runner's own message
        raise DirBusy(f"cannot open the lock file {d / LOCK} ({e.strerror or e}); if it is a symlink or not a "
                      "file, remove it (no noisybench process makes it so)") from None
    try:
        _flock_retrying(fd)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DirBusy(f"{d} is in use by {holder} (another noisybench {what} in the same directory); wait "
                      f"for it to end, or stop it, then run the command again") from None
    except OSError as e:  # ENOLCK / EOPNOTSUPP: a filesystem that cannot lock
        os.close(fd)
        log.warning("noisybench: warning: cannot lock %s (%s): make sure no other process runs in it", d,
                    e.strerror or e)
        return False
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode() + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)
    _HELD[key] = [fd, 1]
    return True


def _flock_retrying(fd: int) -> None:
    """LOCK_EX | LOCK_NB, tried a few times over 0.1 s: `noisybench status` (holder()) holds a shared lock
    for microseconds to see whether a run is live, and must not make a starting run fail."""
    for attempt in range(PROBE_RETRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == PROBE_RETRIES - 1:
                raise
            time.sleep(0.05)


def holder(directory: Path | str) -> str | None:
    """Who holds `directory`'s lock (`pid P on HOST since T`), or None when no live process does. Writes
    nothing: the lock file is opened read-only (not created) and probed with a shared lock, released at once."""
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(directory) / LOCK, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None  # no lock file: never locked (or not readable: nothing to say)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None  # a filesystem that cannot lock
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def release(directory: Path | str) -> None:
    key = os.path.realpath(directory)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        os.close(held[0])  # closing the last descriptor releases the flock (the file stays: see above)


def release_all() -> None:
    for key in list(_HELD):
        os.close(_HELD.pop(key)[0])


@contextmanager
def locked(directory: Path | str, what: str = "run") -> Iterator[None]:
    got = acquire(directory, what)
    try:
        yield
    finally:
        if got:
            release(directory)


class LockCallback(Callback):
    """A single run's directory and a sweep's directory are locked before Hydra writes into them
    (.hydra/, multirun.yaml); each job of a sweep locks its own directory in the runner."""

    def on_run_start(self, config, **kwargs) -> None:
        self._take(config.hydra.run.dir, "run")
        unplant(str(config.hydra.run.dir))  # Hydra writes .hydra/*.yaml next, following symlinks

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        self._take(sweep, "sweep")
        # job directories (`<overrides>@<hash>`, made by noisybench) that are symlinks, then the .hydra/ of
        # jobs run earlier: Hydra rewrites it before the runner starts
        unplant(sweep, ("multirun.yaml", *(j.name for j in sweep.iterdir() if re.search(r"@[0-9a-f]{8}$", j.name))))
        for job in sweep.iterdir():
            if job.is_dir() and not job.is_symlink():
                unplant(job, (".hydra",))

    def on_run_end(self, config, **kwargs) -> None:
        release(str(config.hydra.run.dir))

    def on_multirun_end(self, config, **kwargs) -> None:
        release(str(config.hydra.sweep.dir))

    @staticmethod
    def _take(directory, what: str) -> None:
        try:
            acquire(str(directory), what)
        except DirBusy as e:
            raise Refused(str(e)) from None
