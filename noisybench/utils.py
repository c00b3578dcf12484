"""Small helpers shared across modules: atomic writes, paths, provenance."""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from noisybench import __version__


def _umask() -> int:
    mask = os.umask(0o022)  # read it (the only way), put it back
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: Path | str) -> Iterator[BinaryIO]:
    """`with atomic_output(path) as f: f.write(...)`: a binary file object on a temporary file next
    to `path`; on success it is flushed, fsynced, given the permissions of a normal file (0666
    minus the umask; mkstemp's 0600 would hide results from the user's group) and renamed onto
    `path`, so readers see either the old file or the complete new one. On an exception the
    temporary file is deleted and `path` is left as it was. For streamed writes (downloads,
    np.save, savefig); `atomic_write_bytes/text/json` for data already in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` atomically, with normal file permissions (see `atomic_output`)."""
    with atomic_output(path) as f:
        f.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def default_data_dir() -> Path:
    """$NOISYBENCH_DATA_DIR, else the user cache directory ($XDG_CACHE_HOME or ~/.cache)."""
    env = os.environ.get("NOISYBENCH_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "noisybench"


def resolve_data_dir(data_dir: str | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def code_origin() -> str:
    """Which noisybench code this process runs: its directory and git revision (benchmarks print it)."""
    return f"noisybench from {Path(__file__).resolve().parent} (revision {git_revision() or 'unknown'})"


def git_revision() -> str | None:
    """Git revision of the source tree the package runs from: noisybench's own checkout, recognised by
    its pyproject.toml beside the package. None for a wheel install, also one inside a user's own git
    repository (site-packages of a virtualenv in a project): that repository is not noisybench's code."""
    src = Path(__file__).resolve().parent.parent
    try:
        own = re.search(r'(?m)^name\s*=\s*"noisybench"\s*$', (src / "pyproject.toml").read_text(errors="replace"))
    except OSError:
        own = None
    if own is None:
        return None
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import numpy
    import torch

    return {"noisybench": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}
