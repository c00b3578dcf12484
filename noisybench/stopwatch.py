"""What `train_time_s` does not count: seconds of an attempt spent on something other than training.

- the trackers' calls (`logger=`): starting a run on a tracking server, logging an epoch; an unreachable
  server costs its time-outs, which are not the method's;
- numba compiling a kernel at its first call (STORM's features and Ω: 10-17 s without a cache on disk),
  measured by numba's own `numba:compile` events (outermost compile only; loading a cached kernel is
  not a compile).

Each excluded span is handed to a callback, which moves the start of the attempt's clock forward by it.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def excluded(skip: Callable[[float], None]) -> Iterator[None]:
    """The seconds the body takes, handed to `skip` (also when it raises)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        skip(time.perf_counter() - t)


@contextmanager
def numba_compiles(skip: Callable[[float], None]) -> Iterator[None]:
    """While inside, the seconds of every (outermost) numba compile, handed to `skip`. Nothing when
    numba has not been imported (no method uses it): it is not imported for this."""
    if "numba" not in sys.modules:
        yield
        return
    from numba.core import event

    class Compiles(event.Listener):
        depth, started = 0, 0.0

        def on_start(self, ev) -> None:
            if self.depth == 0:
                self.started = time.perf_counter()
            self.depth += 1

        def on_end(self, ev) -> None:
            self.depth -= 1
            if self.depth == 0:
                skip(time.perf_counter() - self.started)

    with event.install_listener("numba:compile", Compiles()):
        yield
