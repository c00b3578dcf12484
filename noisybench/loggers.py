"""Experiment trackers (`logger=` config group, `conf/logger/`): TensorBoard, Weights & Biases, MLflow.

`metrics.csv` in the run directory is written by the runner whatever the logger (tables and resume read
it); a tracker is an extra copy for the tools users already watch. `logger=csv` (the default) adds none;
`logger=[tensorboard,mlflow]` adds several (each config of the group nests its keys under its own name,
as lightning-hydra-template's do: `logger.wandb.project=...`).

Every tracker gets, per epoch, the row the runner appends to metrics.csv (step = the 0-based epoch, as
the `epoch` column) under grouped tags (`tag`: `train/loss`, `train/lr`, `train/<metric>`, `val/<metric>`,
`test/<metric>`, `noise/...`, `method/...`: the sections TensorBoard, W&B and MLflow group panels by), once
at its start the flattened resolved config (hyperparameters), and at the end the result (`result/test_last`,
`result/test_selected`, `result/test_best` ...).

Resume: a tracker started on a checkpoint re-logs exactly the epochs the checkpoint holds, so its
record ends up with each epoch once, whatever an earlier attempt logged after its last checkpoint:
TensorBoard purges the earlier attempts' events (`purge_step=0`) and logs them again; MLflow continues
the run whose id `trackers.json` keeps and skips the steps it already has; W&B resumes the run id kept
there (offline: each attempt is an offline-run directory holding every epoch so far).

A missing package is found when the config is checked (before anything is written): one line naming
the pip command (`ConfigError`, exit 2).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional
from urllib.parse import urlparse

from omegaconf import OmegaConf

from noisybench.config import build
from noisybench.errors import ConfigError, one_line
from noisybench.rundir import Interrupted
from noisybench.utils import atomic_write_json

log = logging.getLogger(__name__)
IDS_FILE = "trackers.json"  # the tracker run ids of this run directory (W&B, MLflow), for resume
# the numbers of result.json every tracker gets at the end, as result/<key>
FINAL = ("test_last", "val_last", "test_selected", "val_selected", "selected_epoch", "test_best", "best_epoch",
         "realized_noise_rate", "memorized_noisy_frac", "memorized_clean_frac", "detect_auc", "detect_auc_selected",
         "train_time_s")
# metrics.csv columns -> tracker tags; the rest: see `tag`
TAGS = {"train_loss": "train/loss", "lr": "train/lr"}
NOISE = ("memorized_noisy_frac", "memorized_clean_frac", "detect_auc", "detect_noisy_in_lowk")


# a tracking server that does not answer costs seconds, not MLflow's default minutes (7 retries with a backoff
# factor of 2, 120 s per request: about 4 minutes for a refused connection); the user's own values win
MLFLOW_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
WANDB_INIT_TIMEOUT = 20.0  # seconds W&B online waits for its server at the start (its own default: 90)


class MissingPackage(ConfigError):
    """The chosen tracker's package is not installed."""


def _require(module: str, choice: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(f"logger={choice} needs the {package} package: pip install "
                             f"'noisybench[{choice}]'") from None


@dataclass
class RunInfo:
    """What a tracker knows about the run it records."""

    run_dir: Path
    name: str                      # the run directory's name (a sweep job's: its overrides and hash)
    group: str | None              # the sweep (<date>/<time>-<tag>), None for a single run
    sweep_dir: Path | None         # the sweep's directory, None for a single run
    identity: str                  # the run's identity hash (noisybench.rundir)
    hparams: dict[str, Any]        # the flattened resolved config
    metric: str = "acc"            # the dataset's headline metric (dataset.metric): the val/test tags
    done: list[dict] = field(default_factory=list)  # the epochs a checkpoint holds (resume), else []
    ids: dict[str, str] = field(default_factory=dict)  # tracker run ids kept in trackers.json


def tag(column: str, metric: str) -> str:
    """The tracker tag of a metrics.csv column, grouped as Lightning users expect: train_loss -> train/loss,
    lr -> train/lr, train_noisy -> train/<metric> (on the noisy training labels, as val's), val and test ->
    val/<metric> and test/<metric>, test_<m> -> test/<m> (the dataset's extra metrics), memorisation and the
    detection score -> noise/<column>, anything else (a method's own columns: DAL's q, STORM's weight_auc,
    the class-weight statistics) -> method/<column>."""
    if column in TAGS:
        return TAGS[column]
    if column == "train_noisy":
        return f"train/{metric}"
    if column in ("val", "test"):
        return f"{column}/{metric}"
    if column.startswith("test_"):
        return f"test/{column[5:]}"
    return f"noise/{column}" if column in NOISE else f"method/{column}"


def numbers(row: dict, metric: str) -> dict[str, float]:
    """The numeric entries of a metrics row (None, strings and flags left out) by their tracker tag
    (`metric`: the dataset's headline metric)."""
    return {tag(k, metric): float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


def final_metrics(record: dict) -> dict[str, float]:
    return {f"result/{k}": float(record[k]) for k in FINAL if isinstance(record.get(k), (int, float))}


def last_epoch(record: dict) -> int:
    """The step of the result: the last epoch trained (a diverged run's stopping epoch)."""
    return int(record["diverged"]["epoch"]) if record.get("diverged") else int(record["epochs"]) - 1


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"optimizer": {"lr": 0.05}}} -> {"optim.optimizer.lr": 0.05}; lists as JSON text,
    `_target_`-style keys left out (the `name` beside them says the choice)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if str(k).startswith("_"):
            continue
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


class Tracker(ABC):
    """One tracker: `start(info)`, `log_epoch(row)` per epoch, then `finish(record)` or `close(status)`.
    The constructor (called when the config is checked) only imports the package: MissingPackage."""

    choice = ""

    @abstractmethod
    def start(self, info: RunInfo) -> dict[str, str]:
        """Open the tracker's run and log `info.done`; returns the ids to keep in trackers.json."""

    @abstractmethod
    def log_epoch(self, row: dict) -> None:
        """One row of metrics.csv, at step row["epoch"]."""

    @abstractmethod
    def finish(self, record: dict) -> None:
        """The result (result.json's record); closes the tracker's run as finished."""

    @abstractmethod
    def close(self, status: Literal["interrupted", "failed"]) -> None:
        """Close the tracker's run without a result."""


class TensorBoard(Tracker):
    """Event files written with torch.utils.tensorboard: scalars per epoch (tags as the metrics.csv
    columns), the config as text and as hparams, the result as `result/*` scalars and hparams metrics."""

    choice = "tensorboard"

    def __init__(self, save_dir: Optional[str] = None) -> None:
        _require("tensorboard", self.choice, "tensorboard")
        self.summary = _require("torch.utils.tensorboard", self.choice, "tensorboard")
        self.save_dir = save_dir
        self.writer = None

    def start(self, info: RunInfo) -> dict[str, str]:
        # a sweep's jobs under the sweep's name, so runs of two sweeps never share (and purge) a directory
        self.log_dir = (Path(self.save_dir).expanduser() / (info.group or "") / info.name if self.save_dir
                        else info.run_dir / "tb")
        # purge_step=0: TensorBoard drops every earlier attempt's events; this attempt logs all epochs again
        self.writer = self.summary.SummaryWriter(log_dir=str(self.log_dir), purge_step=0)
        self.metric = info.metric
        self.hparams = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                        for k, v in info.hparams.items()}
        text = "\n".join(f"    {k}: {v}" for k, v in info.hparams.items())  # markdown code block
        self.writer.add_text("config", text, global_step=0)
        for row in info.done:
            self._scalars(row)
        self.writer.flush()
        return {}

    def _scalars(self, row: dict) -> None:
        for k, v in numbers(row, self.metric).items():
            self.writer.add_scalar(k, v, global_step=int(row["epoch"]))

    def log_epoch(self, row: dict) -> None:
        self._scalars(row)
        self.writer.flush()  # once per epoch: a killed job keeps every epoch it finished

    def finish(self, record: dict) -> None:
        # result/* scalars at the last epoch and the hparams plugin's table (the config against the
        # result), in this directory rather than the timestamped subdirectory torch would make
        self.writer.add_hparams(self.hparams, final_metrics(record), run_name=".",
                                global_step=last_epoch(record))
        self.writer.close()

    def close(self, status) -> None:
        if self.writer is not None:
            self.writer.close()


class WandB(Tracker):
    """A Weights & Biases run: `mode: offline` (default) writes <save_dir>/wandb/offline-run-* and never
    touches the network (`wandb sync DIR` uploads it later); `online` streams. Config = the flattened
    config, history = the epochs (step = epoch), summary = the result. Group = the sweep."""

    choice = "wandb"

    def __init__(self, project: str = "noisybench", entity: Optional[str] = None,
                 mode: Literal["offline", "online", "disabled"] = "offline", save_dir: Optional[str] = None,
                 tags: Optional[list[str]] = None) -> None:
        self.wandb = _require("wandb", self.choice, "wandb")
        self.project, self.entity, self.mode = project, entity, mode
        self.save_dir, self.tags = save_dir, list(tags or ())
        self.run = None

    def start(self, info: RunInfo) -> dict[str, str]:
        # a new id for a new attempt from epoch 0, the kept one when resuming from a checkpoint
        run_id = info.ids.get("wandb") if info.done else None
        run_id = run_id or f"{info.identity[:8]}-{secrets.token_hex(4)}"
        save_dir = Path(self.save_dir).expanduser() if self.save_dir else info.run_dir
        save_dir.mkdir(parents=True, exist_ok=True)
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT))  # the user's value wins
        settings = self.wandb.Settings(console="off", silent=True, init_timeout=timeout)  # stdout stays the runner's
        self.run = self.wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(save_dir),
                                   id=run_id, resume="allow", name=info.name, group=info.group,
                                   tags=self.tags or None, config=info.hparams, job_type="train",
                                   settings=settings, reinit="create_new")
        self.metric = info.metric
        first = int(getattr(self.run, "step", 0) or 0)  # online, resumed: the server's next step
        for row in info.done:
            if int(row["epoch"]) >= first:
                self.log_epoch(row)
        return {"wandb": run_id}

    def log_epoch(self, row: dict) -> None:
        self.run.log(numbers(row, self.metric), step=int(row["epoch"]))

    def finish(self, record: dict) -> None:
        self.run.summary.update(final_metrics(record))
        self.run.finish(exit_code=0)

    def close(self, status) -> None:
        if self.run is not None:
            if status == "interrupted":
                self.run.mark_preempting()  # it will be resumed
            self.run.finish(exit_code=1)


class MLflow(Tracker):
    """An MLflow run in `experiment`, in MLflow's default store, a SQLite database (`mlflow.db` in the run
    directory, or in the sweep directory for a sweep's jobs, tagged `noisybench.sweep`), unless
    `tracking_uri` says otherwise: params = the flattened config (values cut to MLflow's length limit),
    metrics per epoch (step = epoch), `result/*` at the end. A sweep's parallel jobs take turns (a file lock
    beside the database) to open it, so only one creates its tables."""

    choice = "mlflow"
    DB = "mlflow.db"

    def __init__(self, tracking_uri: Optional[str] = None, experiment: str = "noisybench") -> None:
        _require("mlflow", self.choice, "mlflow")
        if tracking_uri is None or urlparse(str(tracking_uri)).scheme == "sqlite":
            for module in ("sqlalchemy", "alembic"):  # a SQLite store's (not in mlflow-skinny's own requirements)
                _require(module, self.choice, module)
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client = self.run_id = None

    def start(self, info: RunInfo) -> dict[str, str]:
        # one store per sweep (its jobs side by side in one experiment), else per run directory
        db = ((info.sweep_dir or info.run_dir) / self.DB).resolve()
        uri = self.tracking_uri or f"sqlite:///{db}"
        if urlparse(uri).scheme in ("", "file"):
            # MLflow 3 keeps its file store in maintenance mode behind this opt-in; the user chose one
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if urlparse(uri).scheme in ("http", "https"):
            for key, value in MLFLOW_HTTP_LIMITS.items():
                os.environ.setdefault(key, value)
        # MLflow logs its database set-up (tables created, migrations) at INFO on stderr: not the run's news
        quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
        levels = [q.level for q in quiet]
        try:
            for q in quiet:
                q.setLevel(logging.WARNING)
            with _file_lock(db.with_name(self.DB + ".lock") if self.tracking_uri is None else None):
                return self._start(info, uri)
        finally:
            for q, level in zip(quiet, levels):
                q.setLevel(level)

    def _start(self, info: RunInfo, uri: str) -> dict[str, str]:
        from mlflow.entities import Param  # (the package is there: __init__ checked)
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.metric = info.metric
        self.run_id = info.ids.get("mlflow") if info.done else None
        self.logged: set[int] = set()
        if self.run_id is not None:
            try:
                self.client.get_run(self.run_id)
                self.client.update_run(self.run_id, status="RUNNING")
                self.logged = {m.step for m in self.client.get_metric_history(self.run_id, TAGS["train_loss"])}
            except MlflowException:
                self.run_id = None  # e.g. another tracking_uri than the first attempt's: a new run
        if self.run_id is None:
            exp = self._experiment()
            tags = {"noisybench.identity": info.identity, "noisybench.run_dir": str(info.run_dir)}
            if info.group:
                tags["noisybench.sweep"] = info.group
            self.run_id = self.client.create_run(exp, run_name=info.name, tags=tags).info.run_id
            params = [Param(k, self._param_value(v)) for k, v in info.hparams.items()]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 params per call
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        for row in info.done:
            self.log_epoch(row)
        return {"mlflow": self.run_id}

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except MlflowException:  # a parallel job of the sweep made it first
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    @staticmethod
    def _param_value(v: Any) -> str:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        s = "null" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
        return s if len(s) <= MAX_PARAM_VAL_LENGTH else s[:MAX_PARAM_VAL_LENGTH - 3] + "..."

    def _metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_epoch(self, row: dict) -> None:
        epoch = int(row["epoch"])
        if epoch in self.logged:  # an earlier attempt logged it (resume is bit-exact: the same numbers)
            return
        self._metrics(numbers(row, self.metric), epoch)
        self.logged.add(epoch)

    def finish(self, record: dict) -> None:
        self._metrics(final_metrics(record), last_epoch(record))
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self, status) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, "KILLED" if status == "interrupted" else "FAILED")


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive OS lock on `path` (created) while inside; nothing without a path or without flock."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def build_all(cfg) -> list[Tracker]:
    """The trackers `logger` configures (checks their packages: MissingPackage)."""
    node = cfg.get("logger")
    return [build(node[name]) for name in (node.keys() if node is not None else ())]


class Trackers:
    """The run's trackers as one: the runner calls log_epoch / finish; an exception in the run closes them.

    A tracker that fails at run time (a server that went away, a full disk) is dropped with one warning
    line and the run goes on: metrics.csv and result.json hold everything, and failing the run would
    throw its training away for a copy of the numbers. (Config errors, such as a missing package, are
    found before the run starts.)"""

    def __init__(self) -> None:
        self.trackers: list[Tracker] = []
        self.open = False

    def _each(self, what: str, method: str, *args) -> list:
        out = []
        for t in list(self.trackers):
            try:
                out.append(getattr(t, method)(*args))
            except Exception as e:  # broad on purpose: see the class docstring
                log.warning("noisybench: warning: logger=%s could not %s (%s: %s); the run goes on without it "
                            "(metrics.csv and result.json have every number)", t.choice, what, type(e).__name__,
                            one_line(e)[:300])
                self.trackers.remove(t)
                _quietly(t.close, "failed")
        return out

    def start(self, trackers: list[Tracker], info: RunInfo) -> dict[str, str]:
        self.trackers, self.open = list(trackers), True
        ids: dict[str, str] = {}
        for got in self._each("start", "start", info):
            ids.update(got)
        return ids

    def log_epoch(self, row: dict) -> None:
        self._each("write", "log_epoch", row)

    def finish(self, record: dict) -> None:
        if self.open:
            self._each("finish", "finish", record)
            self.open = False

    def close(self, status: Literal["interrupted", "failed"]) -> None:
        if self.open:
            self.open = False
            for t in self.trackers:
                _quietly(t.close, status)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # broad on purpose: closing after an error, the first error is the one to report
        pass


@contextmanager
def opened(cfg, rd, done: list[dict]) -> Iterator[Trackers]:
    """Start the configured trackers for run directory `rd` (a RunDir) with the epochs `done` a
    checkpoint holds; on an exception inside, close them as interrupted or failed."""
    trackers = build_all(cfg)
    group = rd.path.parent if (rd.path.parent / "multirun.yaml").is_file() else None
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("hydra", "logger")}
    ids_path = rd.path / IDS_FILE
    kept = rd.read_object(IDS_FILE) or {}  # not a JSON object (not UTF-8, a list, ...): set aside, one line
    info = RunInfo(run_dir=rd.path.resolve(), name=rd.path.name,
                   group=f"{group.parent.name}/{group.name}" if group else None,
                   sweep_dir=group.resolve() if group else None, identity=rd.hash,
                   hparams={**flatten(config), "identity": rd.hash}, done=list(done),
                   metric=str(cfg.dataset.get("metric", "acc")),
                   ids={k: v for k, v in kept.items() if isinstance(v, str)})
    active = Trackers()
    try:
        ids = active.start(trackers, info)
        if ids:
            atomic_write_json(ids_path, {**info.ids, **ids})
        yield active
    except Interrupted:
        active.close("interrupted")
        raise
    except BaseException:
        active.close("failed")
        raise
