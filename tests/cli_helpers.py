"""Running the command line in a subprocess, as a user does (shared by the CLI test files)."""
from __future__ import annotations

import subprocess
import sys


def nb(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "noisybench.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def start(*args: str, env: dict) -> subprocess.Popen:
    """The same, in the background (to interrupt it)."""
    return subprocess.Popen([sys.executable, "-m", "noisybench.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
