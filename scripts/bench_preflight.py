"""What the preflight of a sweep costs before its first job starts (216-point grid by default).

    python scripts/bench_preflight.py                  # 3 repeats, new and old interleaved
    python scripts/bench_preflight.py --repeats 5 --no-hydra

Printed, per repeat and as the median:
- new: `noisybench.preflight.preflight` (one Hydra compose per distinct config-group combination, the
  value overrides applied to copies, every job validated);
- old: what preflight did before, composing every grid point with the compose API and validating it;
- hydra (unless --no-hydra): Hydra's own check after preflight, before the first job: the basic sweeper
  composes every job again (BasicSweeper.validate_batch_is_legal -> load_sweep_config); not changed by
  noisybench, shown to put the preflight time in context.
All in this process, after one warm-up compose + validate (imports), new and old alternating in order.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))  # this checkout's noisybench is measured, not an installed one

GRID = ["method=ce,gce,dal", "noise.rate=0.2,0.4,0.6", "seed=0,1,2", "optim.optimizer.lr=0.01,0.05,0.1,0.2",
        "trainer.epochs=1,2"]


def old_preflight(overrides: list[str]) -> int:
    """The previous preflight: compose every grid point (compose API) and validate it."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from noisybench.checks import validate
    from noisybench.config import CONFIG_NAME, hydra_context

    axes = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        axes.append([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line])
    jobs = [list(c) for c in itertools.product(*axes)]
    with hydra_context():
        for job in jobs:
            validate(compose(CONFIG_NAME, overrides=job))
    return len(jobs)


def hydra_batch_check(overrides: list[str]) -> int:
    """Hydra's BasicSweeper.validate_batch_is_legal on the grid: load_sweep_config for every job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.types import RunMode

    from noisybench.config import CONFIG_NAME, config_path
    from noisybench.preflight import config_loader, parse_args

    loader, name = config_loader(parse_args(["-m", *overrides]), config_path(), CONFIG_NAME)
    master = loader.load_configuration(name, list(overrides), run_mode=RunMode.MULTIRUN)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(master.hydra.overrides.task))
    batch = BasicSweeper.split_arguments(parsed, None)[0]
    for job in batch:
        loader.load_sweep_config(master_config=master, sweep_overrides=list(job))
    return len(batch)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-hydra", action="store_true", help="skip timing Hydra's own batch check")
    p.add_argument("overrides", nargs="*", default=GRID, help="the sweep (default: a 216-point grid)")
    a = p.parse_args(argv)
    from noisybench.utils import code_origin

    print(code_origin(), flush=True)
    from hydra import compose

    from noisybench.checks import validate
    from noisybench.config import CONFIG_NAME, hydra_context, register_resolvers
    from noisybench.preflight import preflight

    register_resolvers()
    with hydra_context():
        validate(compose(CONFIG_NAME))  # warm-up: imports of the methods, noise models, optimizers
    times: dict[str, list[float]] = {"new": [], "old": [], "hydra": []}
    planned = None
    for r in range(a.repeats):
        order = ["new", "old"] if r % 2 == 0 else ["old", "new"]
        if not a.no_hydra:
            order.append("hydra")
        for which in order:
            tic = time.perf_counter()
            if which == "new":
                err, planned = preflight(["-m", *a.overrides])
                assert err is None, err
            elif which == "old":
                n = old_preflight(a.overrides)
            else:
                hydra_batch_check(a.overrides)
            times[which].append(time.perf_counter() - tic)
        print(f"  repeat {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v), flush=True)
    print(f"grid: {' '.join(a.overrides)} ({planned} jobs; old way: {n} composes)")
    print(f"preflight new: {statistics.median(times['new']):.2f} s, old: {statistics.median(times['old']):.2f} s "
          f"(median of {a.repeats})")
    if times["hydra"]:
        print(f"Hydra's own batch check (after preflight, before the first job; not noisybench's): "
              f"{statistics.median(times['hydra']):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
