"""Ctrl-C and SIGTERM (what SLURM sends before it kills a job) during training: note the signal,
let the training loop stop at the next batch boundary and write a checkpoint. A second signal
stops at once (the last checkpoint on disk stays)."""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second one: do not wait for the safe point
            from noisybench.rundir import Interrupted

            raise Interrupted(signum, "again, before the next safe point (no new checkpoint)", None)
        self.signum = signum

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
