"""The sweep's Hydra callback (tables rewritten after every job, the invocation's outcome at the
end) and the sweep's `k/N done, ETA` progress line."""
from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode

from noisybench import cluster
from noisybench.report.writers import write_report
from noisybench.rundir import ATTEMPT, FAILED, INVOCATION_ENV, RESULT, RESULT_KEYS, read_json_object

log = logging.getLogger(__name__)

def sweep_outcome(sweep_dir: Path, invocation: str | None) -> dict:
    """What the jobs of one sweep invocation did, from their run directories (attempt.json and the
    outcome files), so it holds whichever process or machine ran them."""
    counts = {"finished": 0, "resumed": 0, "skipped": 0}
    failed: list[tuple[str, str]] = []
    unfinished: list[str] = []
    diverged: list[tuple[str, str]] = []  # finished (a result.json) but marked diverged
    for path in sorted(Path(sweep_dir).rglob(ATTEMPT)):
        attempt = read_json_object(path)[0]  # a file that is not a JSON object: no attempt (the runner sets it aside)
        if attempt is None:
            continue
        if invocation is not None and attempt.get("invocation") != invocation:
            continue  # a job of an earlier invocation that this one did not run
        d = path.parent
        result, _ = read_json_object(d / RESULT, RESULT_KEYS)
        if result is not None:
            action = attempt.get("action")
            counts["skipped" if action == "skipped" else "finished"] += 1
            counts["resumed"] += action == "resumed"
            div = result.get("diverged")
            if div:
                diverged.append((str(d), div.get("message", "diverged") if isinstance(div, dict) else "diverged"))
        elif (d / FAILED).is_file():
            msg = (read_json_object(d / FAILED)[0] or {}).get("error", "?")
            failed.append((str(d), str(msg)))
        else:
            unfinished.append(str(d))
    line = (f"{counts['finished']} ran to the end ({counts['resumed']} of them resumed from a checkpoint), "
            f"{counts['skipped']} skipped (already finished), {len(failed)} failed, {len(unfinished)} unfinished"
            + (f"; {len(diverged)} of the finished runs diverged (in the tables, marked)" if diverged else ""))
    return {"dir": str(sweep_dir), "line": line, "failed": failed, "unfinished": unfinished, "diverged": diverged,
            **counts}


class SweepTablesCallback(Callback):
    """Rewrites the sweep's summary.csv and table.md after every job and at the end of a multirun,
    so the tables always reflect the finished runs, even if a later job crashes. In the parent
    process, it tags the jobs of this invocation (NOISYBENCH_INVOCATION, inherited by worker
    processes and submitted jobs) and, at the end, counts what they did from the disk (`last`)."""

    last: dict | None = None  # the parent's outcome of the latest multirun (read by the CLI)
    planned: int | None = None  # the number of jobs, when the CLI's preflight knows it
    progress_every = 5.0  # seconds between looks at the sweep dir for the "k/N done, ETA" line

    def __getstate__(self) -> dict:  # launchers pickle callbacks into worker processes: not the progress thread
        return {k: v for k, v in self.__dict__.items() if k != "_progress"}

    def _write(self, config) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            write_report([sweep_dir], sweep_dir)
        except Exception as e:  # a table failure must not fail the runs it summarises
            log.warning("could not write sweep tables in %s (no table file of an earlier job is left there): %s",
                        sweep_dir, e)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._token = secrets.token_hex(8)
        self._old_env = os.environ.get(INVOCATION_ENV)
        os.environ[INVOCATION_ENV] = self._token
        self._progress = _Progress(Path(config.hydra.sweep.dir), self._token, self.planned, self.progress_every)
        self._progress.start()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            self._write(config)

    def on_multirun_end(self, config, **kwargs) -> None:
        if getattr(self, "_progress", None) is not None:
            self._progress.stop()
        if cluster.left is not None:  # submitted, not waited for (hydra.launcher.wait=false): nothing ran here
            self._restore_env()
            return
        self._write(config)
        token = getattr(self, "_token", None)
        self._restore_env()
        SweepTablesCallback.last = sweep_outcome(Path(config.hydra.sweep.dir), token)
        log.info("sweep tables: %s", Path(config.hydra.sweep.dir) / "table.md")


    def _restore_env(self) -> None:
        if getattr(self, "_old_env", None) is None:
            os.environ.pop(INVOCATION_ENV, None)
        else:
            os.environ[INVOCATION_ENV] = self._old_env


class _Progress:
    """In the sweep's parent: every few seconds, count this invocation's finished jobs on disk and
    print `noisybench: k/N done (f failed), elapsed ..., ETA ...` when the count changes. Works for
    every launcher, as the jobs' outcome files are all it reads."""

    def __init__(self, sweep_dir: Path, token: str, planned: int | None, every: float) -> None:
        self.sweep_dir, self.token, self.planned, self.every = sweep_dir, token, planned, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="noisybench-progress", daemon=True)
        self._t0 = time.monotonic()
        self._shown = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.report()
            except Exception as e:  # progress is a courtesy: never let it break a sweep
                log.debug("progress: %s", e)

    def report(self) -> None:
        o = sweep_outcome(self.sweep_dir, self.token)
        done = o["finished"] + o["skipped"] + len(o["failed"])
        if done == self._shown:
            return
        self._shown = done
        elapsed = time.monotonic() - self._t0
        text = f"noisybench: {done}/{self.planned or '?'} done"
        if o["failed"]:
            text += f" ({len(o['failed'])} failed)"
        text += f", elapsed {_duration(elapsed)}"
        ran = o["finished"] + len(o["failed"])  # skipped jobs take no time: not in the rate
        if self.planned and ran and done < self.planned:
            text += f", ETA {_duration(elapsed / ran * (self.planned - done))}"
        print(text, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
