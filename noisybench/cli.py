"""`noisybench <subcommand>`: train (a Hydra app), noise, report."""
from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

from noisybench.errors import NoisybenchError

USAGE = """usage: noisybench <command> [args]

commands:
  train [overrides]   train one run; `train -m a=1,2 b=x,y` sweeps the grid (Hydra multirun)
                      e.g. noisybench train method=dal noise.rate=0.4
                      `noisybench train --help` lists the config groups and options
  noise [overrides]   build the dataset and the noise only: print the realised noise rate and
                      transition matrix, write noise.json and transition_matrix.png (no training)
                      e.g. noisybench noise dataset=fashion_mnist noise=instance noise.rate=0.4
  report PATH...      rebuild summary.csv and tables from run or sweep directories

Results: each run directory gets result.json, metrics.csv and noise.json; each sweep
directory gets summary.csv and table.md.
"""

log = logging.getLogger("noisybench")
_FAILURES: list[tuple[str, str]] = []  # (run_dir, message) of runs that ended with a user error
# Hydra flags that take a value (preflight skips the value).
_HYDRA_FLAGS = {"-m", "--multirun"}
_SWEEP_LIMIT = 256  # above this many grid points, preflight checks each value on its own


def _one_line(msg: str) -> str:
    return " ".join(str(msg).replace("\t", " ").split())


def _condense_hydra_error(e: Exception) -> str:
    msg = str(e)
    if "Could not find" in msg and "Available options" in msg:
        head, _, opts = msg.partition("Available options")
        opts = opts.split("Config search path")[0]
        options = ", ".join(o.strip() for o in opts.split("\n")[1:] if o.strip())
        group = opts.split("\n")[0].strip(" :in'")
        return f"{_one_line(head).rstrip('.')}. Choose one of {group}: {options}"
    cause = e.__cause__
    parts = [msg.split("\n")[0]]
    if "Could not override" in msg or "not in struct" in msg or "Key" in msg:
        parts.append("check the spelling (noisybench train --cfg job lists every option), "
                     "or add a new key with a + prefix")
    if cause is not None and str(cause).split("\n")[0] not in parts[0]:
        parts.insert(1, str(cause).split("\n")[0])
    return _one_line(". ".join(p.rstrip(".") for p in parts if p))


def _grid(overrides: list[str]) -> list[list[str]]:
    """Expand sweep overrides into the job override lists Hydra will run (for preflight)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            try:
                axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # glob/interval sweeps: Hydra resolves these itself
                continue
        else:
            axes.append([o.input_line])
    size = 1
    for a in axes:
        size *= len(a)
    if size <= _SWEEP_LIMIT:
        return [list(c) for c in itertools.product(*axes)] or [[]]
    base = [a[0] for a in axes]
    return [base[:i] + [v] + base[i + 1:] for i, a in enumerate(axes) for v in a]


def preflight(args: list[str]) -> str | None:
    """Compose and check every job of the command before anything is written; return an error."""
    if any(a.startswith("-") and a not in _HYDRA_FLAGS for a in args):
        return None  # --help, --cfg, --info ...: Hydra's own flags
    overrides = [a for a in args if a not in _HYDRA_FLAGS and not a.lstrip("+~").startswith("hydra")]
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from noisybench.config import CONFIG_NAME, hydra_context, validate

    try:
        jobs = _grid(overrides)
        with hydra_context():
            for job in jobs:
                validate(compose(CONFIG_NAME, overrides=job))
    except NoisybenchError as e:
        return _one_line(e)
    except (HydraException, OmegaConfBaseException) as e:
        return _condense_hydra_error(e)
    return None


def _train_task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from noisybench.train import run
    from noisybench.utils import atomic_write_json

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    try:
        record = run(cfg, out_dir, progress=bool(cfg.trainer.progress) and not multirun)
    except NoisybenchError as e:
        atomic_write_json(out_dir / "failed.json", {"error": _one_line(e), "type": type(e).__name__})
        _FAILURES.append((str(out_dir), _one_line(e)))
        log.error("run failed: %s", _one_line(e))
        return
    sel = record["test_selected"]
    print(f"result: {out_dir / 'result.json'}  test_last={record['test_last']:.4f}  "
          f"test_selected={'n/a' if sel is None else f'{sel:.4f}'} (epoch {record['selected_epoch']})  "
          f"test_best[oracle]={record['test_best']:.4f}  noise={record['realized_noise_rate']:.4f} realised  "
          f"{record['train_time_s']:.1f}s", flush=True)


def train_main(args: list[str]) -> int:
    import hydra

    from noisybench.config import CONFIG_NAME, config_path, register_resolvers

    register_resolvers()
    err = preflight(args)
    if err:
        print(f"noisybench: error: {err}", file=sys.stderr)
        return 2
    app = hydra.main(version_base="1.3", config_path=config_path(), config_name=CONFIG_NAME)(_train_task)
    _FAILURES.clear()
    saved = sys.argv
    sys.argv = ["noisybench train", *args]
    try:
        app()
    finally:
        sys.argv = saved
    if _FAILURES:
        if len(_FAILURES) == 1:
            print(f"noisybench: error: {_FAILURES[0][1]} (no result.json in {_FAILURES[0][0]})", file=sys.stderr)
        else:
            print(f"noisybench: error: {len(_FAILURES)} runs failed, first: {_FAILURES[0][1]} "
                  f"(see failed.json in their run directories)", file=sys.stderr)
        return 1
    return 0


def _noise_run_dir() -> Path:
    """A fresh directory under $NOISYBENCH_OUTPUT_DIR (default outputs/)/noise/, like a train run's."""
    import os
    import secrets
    import time

    base = Path(os.environ.get("NOISYBENCH_OUTPUT_DIR") or "outputs")
    return base / "noise" / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{secrets.token_hex(3)}"


def noise_main(args: list[str]) -> int:
    """Compose the same config as `train`, build the dataset and the noise, report, write."""
    if any(a in ("-h", "--help") for a in args):
        print("usage: noisybench noise [-o DIR] [overrides]\n\nSame overrides as `noisybench train` (e.g. "
              "dataset=cifar10 noise=asymmetric noise.rate=0.4); nothing is trained. Writes noise.json and "
              "transition_matrix.png into DIR (default: a new directory under outputs/noise/).")
        return 0
    out = None
    for flag in ("-o", "--out"):
        if flag in args:
            i = args.index(flag)
            if i + 1 >= len(args):
                print(f"noisybench: error: {flag} needs a directory", file=sys.stderr)
                return 2
            out, args = Path(args[i + 1]), args[:i] + args[i + 2:]
    if any(a in _HYDRA_FLAGS for a in args):
        print("noisybench: error: `noise` makes one noise realisation; run it once per setting "
              "(sweeps are for `noisybench train -m`)", file=sys.stderr)
        return 2
    import numpy as np
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from noisybench.config import CONFIG_NAME, hydra_context, register_resolvers, validate

    from noisybench.noise.report import format_matrix, save_heatmap
    from noisybench.train import build_noise
    from noisybench.utils import atomic_write_json

    register_resolvers()
    overrides = [a for a in args if not a.lstrip("+~").startswith("hydra")]
    try:
        with hydra_context():
            cfg = compose(CONFIG_NAME, overrides=overrides)
        validate(cfg)
        pool, noisy, report, _ = build_noise(cfg)
    except NoisybenchError as e:
        print(f"noisybench: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except (HydraException, OmegaConfBaseException) as e:
        print(f"noisybench: error: {_condense_hydra_error(e)}", file=sys.stderr)
        return 2
    out = out or _noise_run_dir()
    counts, T = np.array(report["transition_counts"]), np.array(report["transition_matrix"])
    atomic_write_json(out / "noise.json", {"dataset": cfg.dataset.name, **report})
    spec = ", ".join(f"{k}={v}" for k, v in report.items() if k not in (
        "type", "realized_noise_rate", "expected_noise_rate", "applied_to", "num_samples", "cache_key",
        "from_cache", "class_names", "transition_matrix", "transition_counts"))
    title = f"{cfg.dataset.name}: {report['type']} ({spec}); realised {report['realized_noise_rate']:.4f}"
    save_heatmap(T, out / "transition_matrix.png", pool.class_names, title)
    expected = report.get("expected_noise_rate")
    print(f"{cfg.dataset.name}: {report['type']} noise ({spec}) on {report['num_samples']} training-pool labels")
    print(f"realised noise rate: {report['realized_noise_rate']:.4f}"
          + (f" (expected {expected:.4f})" if expected is not None else "")
          + ("  [from cache]" if report["from_cache"] else ""))
    print(format_matrix(T, counts, pool.class_names))
    print(f"wrote {out / 'noise.json'} and {out / 'transition_matrix.png'}")
    return 0


def report_main(args: list[str]) -> int:
    from noisybench.results import DEFAULT_KINDS, KINDS, WRITERS, load_summary, write_report

    p = argparse.ArgumentParser(prog="noisybench report",
                                description="Tables (mean ± std over seeds) from run or sweep directories.")
    p.add_argument("paths", nargs="+", type=Path, help="run directories, sweep directories or result.json files")
    p.add_argument("-o", "--out", type=Path, help="write summary.csv and the tables here (default: print Markdown)")
    p.add_argument("-f", "--format", default="md", help=f"comma-separated: {','.join(WRITERS)} (default md)")
    p.add_argument("-k", "--kinds", default=",".join(DEFAULT_KINDS),
                   help=f"which accuracies, comma-separated: {','.join(KINDS)} (best is the oracle)")
    a = p.parse_args(args)
    formats = [f for f in a.format.split(",") if f]
    kinds = [k for k in a.kinds.split(",") if k]
    bad = [f for f in formats if f not in WRITERS] + [k for k in kinds if k not in KINDS]
    if bad:
        print(f"noisybench: error: unknown format or kind {', '.join(bad)}; formats: {', '.join(WRITERS)}; "
              f"kinds: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    missing = [str(x) for x in a.paths if not x.exists()]
    if missing:
        print(f"noisybench: error: no such path: {', '.join(missing)}", file=sys.stderr)
        return 2
    if load_summary(a.paths).empty:
        print("noisybench: error: no result.json found under the given paths (finished runs have one)",
              file=sys.stderr)
        return 1
    if a.out:
        df = write_report(a.paths, a.out, formats, kinds)
        print(f"{len(df)} runs -> {a.out}/summary.csv, " + ", ".join(str(a.out / WRITERS[f][0]) for f in formats))
    else:
        df = load_summary(a.paths)
        for f in formats:
            print(WRITERS[f][1](df, kinds))
    return 0


COMMANDS = {"train": train_main, "noise": noise_main, "report": report_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in ("-V", "--version"):
        from noisybench import __version__

        print(__version__)
        return 0
    if cmd not in COMMANDS:
        print(f"noisybench: error: unknown command {cmd!r}; use one of {', '.join(COMMANDS)} "
              "(noisybench --help)", file=sys.stderr)
        return 2
    return COMMANDS[cmd](rest)


if __name__ == "__main__":
    sys.exit(main())
