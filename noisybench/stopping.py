"""Ctrl-C and SIGTERM (what SLURM sends before it kills a job) during training: note the signal,
let the training loop stop at the next batch boundary and write a checkpoint. A second signal
stops at once (the last checkpoint on disk stays).

SIGUSR2 is taken only when a Python handler is already installed for it: submitit's, which on a
SLURM time limit or preemption requeues the job and exits. Then the run first checkpoints at the
next batch boundary and hands the signal on (`after_checkpoint`), so the requeued job loses nothing."""
from __future__ import annotations

import signal
import threading

from noisybench.rundir import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORWARDED = tuple(s for s in (getattr(signal, "SIGUSR2", None),) if s is not None)
# A forwarded signal that came after the run's last safe point (the run finished): not handed on, so
# that a one-run job ends as usual; an array task with more runs to go hands it on before the next
# one (take_pending; hydra_plugins/noisybench_launchers/_submitit.py), and submitit requeues the task.
_pending: list[int] = []


def take_pending() -> int | None:
    """The forwarded signal a finished run noted and did not hand on (cleared), or None."""
    return _pending.pop() if _pending else None


class StopOnSignal:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}
        self._handed = False

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second one: do not wait for the safe point
            raise Interrupted(signum, "again, before the next safe point (no new checkpoint)", None)
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
            for s in FORWARDED:
                if callable(signal.getsignal(s)):  # a Python handler (submitit's requeue) to hand it on to
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def after_checkpoint(self) -> None:
        """At the safe point, once the checkpoint is written: a forwarded signal goes to the handler it
        was meant for (submitit requeues the job and exits); others return, and the run stops."""
        previous = self._old.get(self.signum)
        if self.signum in FORWARDED and callable(previous):
            self._handed = True
            self.__exit__()
            previous(self.signum, None)

    def __exit__(self, *exc) -> None:
        if self.signum in FORWARDED and not self._handed and callable(self._old.get(self.signum)):
            _pending[:] = [self.signum]
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
