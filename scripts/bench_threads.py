"""Training time of whole runs as users start them, at the default thread policy and at one thread.

    python scripts/bench_threads.py                      # ce and storm, 20 epochs, 2 rounds
    python scripts/bench_threads.py --epochs 5 --rounds 3 --methods ce,gce,storm -- dataset=digits

Each round runs `noisybench train method=M noise.rate=0.4 seed=1 trainer.epochs=E [trainer.threads=1]`
for every method and thread setting, in turn (interleaved: a loaded machine slows every setting of a
round alike), each in a fresh process and a new run directory; the time is result.json's
`train_time_s` (training only: no start-up, no data generation). It prints the median per setting
and each method's ratio to the first method (CE) at the same setting, and the ratio of the default
policy to one thread. The thread policy is documented in docs/performance.md ("Threads").
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
SETTINGS = {"default": [], "threads=1": ["trainer.threads=1"]}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="ce,storm", help="comma-separated; the first is the reference")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="runs per (method, setting), interleaved")
    p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. dataset=digits")
    a = p.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    if a.rounds < 1 or a.epochs < 1 or not methods:
        p.error("--rounds and --epochs must be >= 1 and --methods must name at least one method")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("NOISYBENCH_DATA_DIR", tempfile.mkdtemp(prefix="noisybench-bench-data-"))
    times: dict[tuple[str, str], list[float]] = {}
    threads: dict[tuple[str, str], set] = {}
    with tempfile.TemporaryDirectory(prefix="noisybench-bench-") as tmp:
        for r in range(a.rounds):
            for setting, extra in SETTINGS.items():
                for m in methods:
                    out = Path(tmp) / f"{m}-{setting.replace('=', '')}-{r}"
                    cmd = [sys.executable, "-m", "noisybench", "train", f"method={m}", "noise.rate=0.4",
                           "seed=1", f"trainer.epochs={a.epochs}", "trainer.progress=false", *extra,
                           *a.overrides, f"hydra.run.dir={out}"]
                    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                    rec = json.loads((out / "result.json").read_text())
                    times.setdefault((m, setting), []).append(rec["train_time_s"])
                    threads.setdefault((m, setting), set()).add(
                        f"torch {rec['torch_threads']}, BLAS {rec.get('blas_threads')}")
                    print(f"round {r} {setting:9s} {m:8s} {rec['train_time_s']:7.2f} s", flush=True)
    print(f"\nmedian training time over {a.rounds} round(s), {a.epochs} epochs, noise.rate=0.4 seed=1 "
          f"{' '.join(a.overrides)}".rstrip())
    ref = methods[0]
    for setting in SETTINGS:
        for m in methods:
            med = statistics.median(times[(m, setting)])
            ratio = med / statistics.median(times[(ref, setting)])
            pools = "; ".join(sorted(threads[(m, setting)]))
            print(f"  {setting:9s} {m:8s} {med:7.2f} s   {ratio:5.2f}x {ref}   ({pools})")
    for m in methods:
        d, one = (statistics.median(times[(m, s)]) for s in SETTINGS)
        print(f"  {m:8s} default / threads=1: {d / one:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
