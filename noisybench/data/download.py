"""Fetching public archives when the network allows (never in tests: they pre-place the file)."""
from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from noisybench.errors import DataError
from noisybench.utils import atomic_output


def fetch(url: str, dest: Path, sha256: str | None = None, hint: str = "") -> Path:
    """Return `dest`, downloading `url` there first if it is missing (atomically)."""
    dest = Path(dest)
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:  # a failed or interrupted download leaves no partial file behind
            with urllib.request.urlopen(url, timeout=60) as r, atomic_output(dest) as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        except OSError as e:
            raise DataError(f"could not download {url} ({getattr(e, 'reason', e)}); {hint}") from None
    if sha256 is not None:
        digest = hashlib.sha256(dest.read_bytes()).hexdigest()
        if digest != sha256:
            raise DataError(f"{dest} is corrupt (sha256 {digest[:12]}…, expected {sha256[:12]}…); "
                            "delete it to re-download")
    return dest
