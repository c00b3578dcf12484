"""Runs per hour of a sweep: one job after another (Hydra's basic launcher, torch's default threads)
against the `local` preset (jobs side by side, threads by noisybench.threads), on the same runs.

    python scripts/bench_sweep.py                                  # both workloads, 8 runs each, 3 rounds
    python scripts/bench_sweep.py --runs 4 --epochs 2 --workloads mnist1d --rounds 2

Each measurement is one `noisybench train -m ...` command, timed from start to exit (what a user
waits for: start-up, workers, data, training, tables), in a fresh sweep directory. Per round and
workload the two modes run back to back, their order alternating between rounds, so a change of
machine load hits both. The runs differ only in `seed`; the noise is recomputed by every run
(+noise_cache=false), so no mode inherits another's cache.

Workloads:
  mnist1d     the default job (mnist1d, cnn1d, CE, SGD) cut to --epochs (default 15)
  storm_spam  the `storm_spam` preset (STORM, TF-IDF + linear, 10 epochs; --epochs cuts it) on
              generated text of SMS Spam's size (4,502 / 500 / 500 messages, 13 % spam, an
              8,000-word vocabulary), written to a temporary data directory (no download).
              The preset sets trainer.threads=1, so its sequential runs use one thread too.

Printed: a table (wall seconds, runs per hour, torch threads per job as the runs recorded them) and
one line per workload `speedup parallel/sequential: X.XXx`. With c cores the limit is c x.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))  # this checkout's noisybench is measured, not an installed one

import numpy as np

EPOCHS = {"mnist1d": 15, "storm_spam": None}  # None: the preset's own (10)
SPAM_SIZES = (4502, 500, 500)
VOCAB = 8000


def write_fake_sms(data_dir: Path, seed: int = 0) -> None:
    """Spam-like text of SMS Spam's size: Zipf-distributed words, spam messages drawing a third of their
    words from a spam vocabulary (so the task is learnable, as the real one)."""
    from noisybench.data.text import write_tsv

    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(VOCAB)]
    zipf = 1.0 / np.arange(1, VOCAB + 1)
    zipf /= zipf.sum()
    spam_words = rng.choice(VOCAB, 400, replace=False)
    out = data_dir / "sms_spam"
    out.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), SPAM_SIZES):
        labels = (rng.random(n) < 0.13).astype(int)
        texts = []
        for y in labels:
            k = int(rng.integers(4, 30))
            idx = rng.choice(VOCAB, k, p=zipf)
            if y:
                idx[: k // 3] = rng.choice(spam_words, k // 3)
            texts.append(" ".join(words[i] for i in idx))
        write_tsv(out / f"{split}.tsv", texts, labels.tolist())


def workload_args(name: str, epochs: int | None, spam_dir: Path) -> list[str]:
    epochs = epochs if epochs is not None else EPOCHS[name]
    ep = [f"trainer.epochs={epochs}"] if epochs is not None else []
    if name == "mnist1d":
        return ep
    return ["experiment=storm_spam", f"data_dir={spam_dir}", *ep]


def sweep(args: list[str], launcher: str, runs: int, out: Path, env: dict) -> tuple[float, list[int]]:
    """Wall seconds of one multirun, and the torch threads its runs recorded."""
    cmd = [sys.executable, "-m", "noisybench.cli", "train", "-m", f"hydra/launcher={launcher}", *args,
           "+noise_cache=false", "trainer.progress=false", f"seed={','.join(map(str, range(runs)))}",
           f"hydra.sweep.dir={out}"]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    results = [json.loads(f.read_text()) for f in out.glob("*/result.json")]
    if p.returncode != 0 or len(results) != runs:
        sys.exit(f"bench_sweep: {' '.join(cmd[2:])} failed (exit {p.returncode}, {len(results)}/{runs} results):\n"
                 + p.stderr[-2000:])
    return wall, sorted({r["torch_threads"] for r in results})


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=8, help="runs per sweep (seeds 0..runs-1; default 8)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run for every workload (default: mnist1d 15, storm_spam the preset's 10)")
    p.add_argument("--workloads", default="mnist1d,storm_spam", help="comma-separated: mnist1d, storm_spam")
    p.add_argument("--rounds", type=int, default=3, help="measurements per mode and workload (alternating order; "
                   "default 3: single rounds on a shared or virtual machine vary by 20 %% and more)")
    p.add_argument("--keep", action="store_true", help="keep the temporary sweeps and data (printed)")
    p.add_argument("--n-jobs", type=int, default=None, help="hydra.launcher.n_jobs of the parallel mode "
                   "(default: the preset's -1, one job per core)")
    a = p.parse_args(argv)
    from noisybench.utils import code_origin

    print(code_origin(), flush=True)
    names = [w for w in a.workloads.split(",") if w]
    unknown = [w for w in names if w not in EPOCHS]
    if unknown or not names or a.runs < 1 or a.rounds < 1:
        p.error(f"--workloads takes {', '.join(EPOCHS)}; --runs and --rounds are >= 1")
    try:
        import hydra_plugins.hydra_joblib_launcher  # noqa: F401  (only checks that the launcher is installed)
    except ImportError:
        sys.exit("bench_sweep: error: the parallel mode needs the joblib launcher: pip install 'noisybench[cluster]'")
    from noisybench.threads import cores

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NOISYBENCH_JOB_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), *filter(None, [os.environ.get("PYTHONPATH")])])  # the jobs too
    tmp = Path(tempfile.mkdtemp(prefix="noisybench-bench-sweep-"))
    env.setdefault("NOISYBENCH_DATA_DIR", str(tmp / "data"))
    env["NOISYBENCH_DOWNLOAD"] = "false"
    spam_dir = tmp / "spam-data"
    if "storm_spam" in names:
        write_fake_sms(spam_dir)
    if "mnist1d" in names:  # generate MNIST-1D once, untimed
        subprocess.run([sys.executable, "-m", "noisybench.cli", "train", "trainer.epochs=1", "dataset.subset=64",
                        "trainer.progress=false", f"hydra.run.dir={tmp / 'warmup'}"], env=env, check=True,
                       capture_output=True)
    modes = {"sequential": "basic", "parallel": "local"}
    extra = {"parallel": [] if a.n_jobs is None else [f"hydra.launcher.n_jobs={a.n_jobs}"], "sequential": []}
    wall = {(w, m): 0.0 for w in names for m in modes}
    threads: dict = {}
    print(f"{cores()} cores; {a.runs} runs per sweep; {a.rounds} round(s)", flush=True)
    for r in range(a.rounds):
        for w in names:
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for m in order:
                args = [*workload_args(w, a.epochs, spam_dir), *extra[m]]
                t, th = sweep(args, modes[m], a.runs, tmp / f"{w}-{m}-{r}", env)
                wall[w, m] += t
                threads[w, m] = th
                print(f"  round {r + 1} {w:<10} {m:<10} {t:7.1f} s", flush=True)
    print(f"\n{'workload':<11} {'mode':<11} {'runs':>5} {'wall_s':>8} {'runs/hour':>10} {'threads/job':>12}")
    for w in names:
        for m in modes:
            n = a.runs * a.rounds
            print(f"{w:<11} {m:<11} {n:>5} {wall[w, m]:>8.1f} {3600 * n / wall[w, m]:>10.0f} "
                  f"{','.join(map(str, threads[w, m])):>12}")
    for w in names:
        print(f"{w}: speedup parallel/sequential: {wall[w, 'sequential'] / wall[w, 'parallel']:.2f}x")
    if a.keep:
        print(f"sweeps and data kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
