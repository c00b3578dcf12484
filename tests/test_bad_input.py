"""Bad input, table-driven: every case is one command a user could type. Each must end with exactly one
`noisybench: error:` line, the documented exit code (2: the command or config must change; 1: the
data, the environment or a run failed), no traceback, no result.json and no summary row; where the
message suggests a fix, the fix is in the message and the fixed command is accepted.

All commands run in one interpreter (tests/bad_input_runner.py calls the same `main` as the
`noisybench` script); a few are re-run as real subprocesses to show that this is the same thing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import nb

from noisybench.preflight import preflight

USAGE, FAILED = 2, 1
SMOKE = ["experiment=smoke", "trainer.progress=false"]


def case(id, args, code, expect, fix=None, cmd="train", base=True, run_fix=False, env=None):
    """fix=(bad, good): the message must contain `good`; the command with `bad` replaced by `good`
    must be accepted (by the preflight check, or by running it when run_fix)."""
    flags = ["-m"] if args[:1] == ["-m"] else []  # Hydra's flags first, as a user writes them
    argv = [cmd, *flags, *(SMOKE if base and cmd in ("train", "noise") else []), *args[len(flags):]]
    return dict(id=id, argv=argv, code=code, expect=expect, fix=fix, run_fix=run_fix, env=env or {})


CASES = [
    # ---- silent coercion: a value of the wrong type or range is refused, never rounded ----
    case("epochs-float", ["trainer.epochs=2.5"], USAGE, "must be a whole number",
         ("trainer.epochs=2.5", "trainer.epochs=2")),
    case("epochs-bool", ["trainer.epochs=true"], USAGE, "trainer.epochs=true must be a whole number",
         ("trainer.epochs=true", "trainer.epochs=100")),
    case("epochs-zero", ["trainer.epochs=0"], USAGE, "trainer.epochs=0 must be >= 1"),
    case("epochs-negative", ["trainer.epochs=-3"], USAGE, "trainer.epochs=-3 must be >= 1"),
    case("epochs-string", ["trainer.epochs=abc"], USAGE, "trainer.epochs=abc must be a whole number"),
    case("batch-float", ["trainer.batch_size=2.5"], USAGE, "trainer.batch_size=2.5 must be a whole number",
         ("trainer.batch_size=2.5", "trainer.batch_size=2")),
    case("batch-zero", ["trainer.batch_size=0"], USAGE, "trainer.batch_size=0 must be >= 1"),
    case("eval-batch-zero", ["trainer.eval_batch_size=0"], USAGE, "trainer.eval_batch_size=0 must be >= 1",
         ("trainer.eval_batch_size=0", "trainer.eval_batch_size=4096")),
    case("eval-every-zero", ["trainer.eval_every=0"], USAGE, "trainer.eval_every=0 must be >= 1"),
    case("eval-every-float", ["trainer.eval_every=1.5"], USAGE, "trainer.eval_every=1.5 must be a whole number"),
    case("subset-float", ["dataset.subset=2.7"], USAGE, "dataset.subset=2.7 must be a whole number",
         ("dataset.subset=2.7", "dataset.subset=2")),
    case("subset-zero", ["dataset.subset=0"], USAGE, "dataset.subset=0 must be >= 1"),
    case("subset-string", ["dataset.subset=all"], USAGE, "dataset.subset=all must be a whole number"),
    case("val-fraction-one", ["dataset.val_fraction=1"], USAGE, "dataset.val_fraction=1 must be in [0, 1)",
         ("dataset.val_fraction=1", "dataset.val_fraction=0.1")),
    case("val-fraction-negative", ["dataset.val_fraction=-0.1"], USAGE, "dataset.val_fraction=-0.1 must be in [0, 1)"),
    case("val-fraction-string", ["dataset.val_fraction=abc"], USAGE, "dataset.val_fraction=abc must be a number"),
    case("noise-rate-high", ["noise.rate=1.5"], USAGE, "noise.rate=1.5"),
    case("noise-rate-negative", ["noise.rate=-0.1"], USAGE, "noise.rate=-0.1"),
    case("noise-rate-string", ["noise.rate=abc"], USAGE, "noise.rate=abc must be a number",
         ("noise.rate=abc", "noise.rate=0.4")),
    case("progress-not-bool", ["trainer.progress=maybe"], USAGE, "trainer.progress=maybe must be true or false"),
    case("keep-checkpoint-int", ["trainer.keep_checkpoint=2"], USAGE,
         "trainer.keep_checkpoint=2 must be true or false"),
    case("checkpoint-every-negative", ["trainer.checkpoint_every=-1"], USAGE,
         "trainer.checkpoint_every=-1 must be >= 0"),
    case("max-loss-zero", ["trainer.max_train_loss=0"], USAGE, "trainer.max_train_loss=0 must be > 0"),
    case("include-true-class-string", ["noise.include_true_class=yes"], USAGE,
         "noise.include_true_class=yes must be true or false"),
    case("apply-to-val-int", ["noise.apply_to_val=1"], USAGE, "noise.apply_to_val=1 must be true or false"),
    case("channels-float", ["model.channels=2.5"], USAGE, "model.channels=2.5 must be a whole number"),
    case("mlp-hidden-float", ["model=mlp", "model.hidden=[256,2.5]"], USAGE,
         "model.hidden=[256,2.5] must be a list of whole numbers"),
    case("mlp-hidden-string", ["model=mlp", "model.hidden=abc"], USAGE, "model.hidden=abc must be a list",
         ("model.hidden=abc", "model.hidden=[256,256]")),
    case("seed-float", ["seed=1.5"], USAGE, "seed=1.5 must be a whole number"),
    case("noise-seed-negative", ["noise.seed=-1"], USAGE, "noise.seed=-1"),
    case("subset-larger-than-data", ["dataset.subset=100000"], USAGE, "dataset.subset=", run_fix=True),
    case("val-fraction-leaves-too-few", ["dataset.val_fraction=0.9999"], USAGE, "dataset.val_fraction=", run_fix=True),
    # ---- keys nothing reads: an error whose hint is the nearest existing key ----
    case("plus-typo", ["+trainer.epoch=3"], USAGE, "did you mean trainer.epochs=3",
         ("+trainer.epoch=3", "trainer.epochs=3")),
    case("plus-unknown-top", ["+foo=1"], USAGE, "foo is not an option of noisybench train"),
    case("plus-on-an-existing-key", ["+trainer.epochs=3"], USAGE, "trainer.epochs is already in the config",
         ("+trainer.epochs=3", "trainer.epochs=3")),
    case("plus-subset-typo", ["+dataset.subsett=100"], USAGE, "did you mean dataset.subset=100",
         ("+dataset.subsett=100", "dataset.subset=100")),
    case("typo-without-plus", ["trainer.epoch=3"], USAGE, "did you mean trainer.epochs=3",
         ("trainer.epoch=3", "trainer.epochs=3")),
    case("double-plus-typo", ["++trainer.epoch=3"], USAGE, "did you mean trainer.epochs=3",
         ("++trainer.epoch=3", "trainer.epochs=3")),
    case("method-param-typo", ["method=gce", "+method.qq=0.5"], USAGE, "did you mean method.q=0.5",
         ("+method.qq=0.5", "method.q=0.5")),
    case("method-param-typo-no-plus", ["method=gce", "method.qq=0.5"], USAGE, "did you mean method.q=0.5",
         ("method.qq=0.5", "method.q=0.5")),
    case("param-of-another-method", ["+method.q=0.5"], USAGE, "method.q is not an option of method=ce"),
    case("param-of-another-method-dal", ["method=dal", "++method.q=0.5"], USAGE,
         "method.q is not an option of method=dal"),
    case("settable-optimizer-param", ["optim.optimizer.dampening=0.1"], USAGE, "+optim.optimizer.dampening=0.1",
         ("optim.optimizer.dampening=0.1", "+optim.optimizer.dampening=0.1")),
    case("noise-typo", ["+noise.rat=0.2"], USAGE, "did you mean noise.rate=0.2", ("+noise.rat=0.2", "noise.rate=0.2")),
    case("model-typo", ["+model.dropuot=0.1"], USAGE, "did you mean model.dropout=0.1",
         ("+model.dropuot=0.1", "model.dropout=0.1")),
    case("top-typo", ["+seeds=1"], USAGE, "did you mean seed=1", ("+seeds=1", "seed=1")),
    case("sweep-with-typo", ["-m", "seed=0,1", "+trainer.epoch=3"], USAGE, "did you mean trainer.epochs=3"),
    case("unknown-group-choice", ["dataset=nope"], USAGE, "Choose one of dataset"),
    case("unknown-logger", ["logger=neptune"], USAGE, "Choose one of logger: csv, mlflow, tensorboard, wandb"),
    case("logger-key-typo", ["logger=tensorboard", "logger.tensorboard.savedir=x"], USAGE,
         "did you mean logger.tensorboard.save_dir=x",
         ("logger.tensorboard.savedir=x", "logger.tensorboard.save_dir=x")),
    case("logger-option-not-chosen", ["logger.wandb.mode=online"], USAGE,
         "logger.wandb.mode is an option of logger=wandb, which the command does not choose; add logger=wandb"),
    case("wandb-mode-unknown", ["logger=wandb", "logger.wandb.mode=onlin"], USAGE,
         "logger.wandb.mode=onlin must be one of offline, online, disabled",
         ("logger.wandb.mode=onlin", "logger.wandb.mode=offline")),
    case("unknown-method", ["method=nope"], USAGE, "Choose one of method"),
    # ---- checked before the run (no traceback, no job of a sweep starts) ----
    case("gce-q-string", ["method=gce", "method.q=abc"], USAGE, "method.q=abc must be a number",
         ("method.q=abc", "method.q=0.7")),
    case("gce-q-zero", ["method=gce", "method.q=0"], USAGE, "method.q=0 must be > 0"),
    case("lr-string", ["optim.optimizer.lr=abc"], USAGE, "optim.optimizer.lr=abc must be a number"),
    case("lr-negative", ["optim.optimizer.lr=-1"], USAGE, "optim.optimizer"),
    case("momentum-string", ["optim.optimizer.momentum=abc"], USAGE, "optim.optimizer.momentum=abc must be a number"),
    case("adam-betas-short", ["optim=adam", "optim.optimizer.betas=[0.9]"], USAGE, "optim.optimizer.betas=[0.9]"),
    case("seed-string", ["seed=abc"], USAGE, "seed=abc must be a whole number", ("seed=abc", "seed=0")),
    case("threads-negative", ["trainer.threads=-1"], USAGE, "trainer.threads=-1 must be >= 1",
         ("trainer.threads=-1", "trainer.threads=1")),
    case("threads-zero", ["trainer.threads=0"], USAGE, "trainer.threads=0 must be >= 1"),
    case("precision-unknown", ["trainer.precision=fp16"], USAGE,
         "trainer.precision=fp16 must be one of auto, fp32, bf16",
         ("trainer.precision=fp16", "trainer.precision=fp32")),
    case("channels-last-word", ["trainer.channels_last=yes"], USAGE, "trainer.channels_last=yes must be true or false",
         ("trainer.channels_last=yes", "trainer.channels_last=false")),
    case("compile-number", ["trainer.compile=2"], USAGE, "trainer.compile=2 must be true or false",
         ("trainer.compile=2", "trainer.compile=true")),
    case("split-seed-negative", ["dataset.split_seed=-1"], USAGE, "dataset.split_seed=-1 must be in [0, 4294967295]",
         ("dataset.split_seed=-1", "dataset.split_seed=0")),
    case("dropout-too-high", ["model=mlp", "model.dropout=1.5"], USAGE, "model.dropout=1.5 must be in [0, 1)",
         ("model.dropout=1.5", "model.dropout=0.0")),
    case("dropout-string", ["model.dropout=abc"], USAGE, "model.dropout=abc must be a number"),
    case("noise-seed-string", ["noise.seed=abc"], USAGE, "noise.seed=abc must be a whole number",
         ("noise.seed=abc", "noise.seed=0")),
    case("sweep-bad-value-in-the-middle", ["-m", "seed=0,abc,1"], USAGE, "seed=abc must be a whole number"),
    case("dal-q-start-string", ["method=dal", "method.q_start=abc"], USAGE, "method.q_start=abc must be a number"),
    case("dal-q-end-below-start", ["method=dal", "method.q_end=0.1"], USAGE, "method.q_end=0.1 must be greater"),
    case("dal-bootstrap-unknown", ["method=dal", "method.bootstrap=nope"], USAGE, "method.bootstrap='nope' is unknown"),
    case("storm-passes-zero", ["method=storm", "method.forward_passes=0"], USAGE,
         "method.forward_passes=0 must be >= 1"),
    case("storm-lr-string", ["method=storm", "method.rescaler_lr=abc"], USAGE,
         "method.rescaler_lr=abc must be a number"),
    case("storm-weight-norm-unknown", ["method=storm", "method.weight_norm=nope"], USAGE,
         "method.weight_norm='nope' is unknown"),
    case("sce-alpha-string", ["method=sce", "method.alpha=abc"], USAGE, "method.alpha=abc must be a number"),
    case("sce-beta-negative", ["method=sce", "method.beta=-1"], USAGE, "both must be >= 0"),
    case("apl-both-zero", ["method=apl", "method.alpha=0", "method.beta=0"], USAGE, "not both 0"),
    case("elr-beta-one", ["method=elr", "method.beta=1"], USAGE, "method.beta=1 must be in [0, 1)"),
    case("elr-lam-string", ["method=elr", "method.lam=abc"], USAGE, "method.lam=abc must be a number"),
    case("forward-transition-unknown", ["method=forward", "method.transition=clean"], USAGE,
         "method.transition=clean must be one of estimated, oracle"),
    case("forward-warmup-negative", ["method=forward", "method.warmup_epochs=-1"], USAGE,
         "method.warmup_epochs=-1 must be > 0"),
    case("coteaching-forget-rate-one", ["method=coteaching", "method.forget_rate=1"], USAGE,
         "method.forget_rate=1 must be in [0, 1)", ("method.forget_rate=1", "method.forget_rate=0.1")),
    case("coteaching-forget-rate-string", ["method=coteaching", "method.forget_rate=abc"], USAGE,
         "method.forget_rate=abc must be one of estimate or a number (or null)"),
    case("coteaching-num-gradual-negative", ["method=coteaching", "method.num_gradual=-1"], USAGE,
         "method.num_gradual=-1 must be >= 0"),
    case("coteaching-exponent-zero", ["method=coteaching", "method.exponent=0"], USAGE,
         "method.exponent=0 must be > 0"),
    case("coteaching-estimate-no-epoch-left", ["method=coteaching", "method.forget_rate=estimate"], USAGE,
         "method.estimate_epoch=1 leaves no epoch after the estimate (trainer.epochs=1); give trainer.epochs=2"),
    case("coteaching-dst", ["dataset=synthwoz", "method=coteaching"], USAGE,
         "method=coteaching needs one label per sample"),
    case("device-cuda-missing", ["trainer.device=cuda"], USAGE, "trainer.device=auto",
         ("trainer.device=cuda", "trainer.device=auto")),
    case("device-unknown", ["trainer.device=tpu"], USAGE, "trainer.device='tpu' is not a device"),
    case("objective-on-test", ["objective=test_best"], USAGE,
         "objective=test_best must be one of val_selected, val_last",
         ("objective=test_best", "objective=val_selected")),
    case("asymmetric-map-unknown", ["noise=asymmetric", "noise.map=nope"], USAGE, "noise.map='nope' is unknown"),
    case("delete-required-key", ["~trainer.epochs"], USAGE, "trainer.epochs is missing from the config",
         ("~trainer.epochs", "trainer.epochs=100")),
    case("delete-loader", ["~dataset.loader"], USAGE, "dataset.loader is missing from the config"),
    case("group-set-to-null", ["trainer=null"], USAGE, "a config group needs one of its choices"),
    case("group-deleted", ["~method"], USAGE, "the config has no method", ("~method", "method=ce")),
    case("dataset-deleted", ["~dataset"], USAGE, "choose one, e.g. dataset=mnist1d (choices: cifar10"),
    case("dst-noise-kind-weight-string", ["dataset=synthwoz", "noise.kinds.wrong=abc"], USAGE,
         "noise.kinds.wrong=abc must be a number"),
    case("sweep-and-cfg", ["-m", "seed=0,1", "--cfg", "job"], USAGE, "--cfg prints one composed config"),
    # ---- cluster launchers (docs/cluster.md) ----
    case("runs-per-task-zero", ["-m", "seed=0,1", "hydra/launcher=slurm", "hydra.launcher.runs_per_task=0"], USAGE,
         "hydra.launcher.runs_per_task=0 must be a whole number >= 1"),
    case("runs-per-task-float", ["-m", "seed=0,1", "hydra/launcher=slurm", "hydra.launcher.runs_per_task=2.5"], USAGE,
         "hydra.launcher.runs_per_task=2.5"),
    case("wait-not-a-bool", ["-m", "seed=0,1", "hydra/launcher=slurm", "hydra.launcher.wait=later"], USAGE,
         "hydra.launcher.wait=later"),
    case("wait-false-with-optuna", ["-m", "hparams_search=gce_q", "hydra/launcher=slurm", "hydra.launcher.wait=false"],
         USAGE, "drop hydra.launcher.wait=false"),
    case("jobs-per-gpu-zero", ["-m", "seed=0,1", "hydra/launcher=local", "hydra.launcher.jobs_per_gpu=0"], USAGE,
         "hydra.launcher.jobs_per_gpu=0 must be a whole number >= 1"),
    # ---- environment ----
    case("run-dir-is-a-file", ["hydra.run.dir={file}"], USAGE, "hydra.run.dir={file} is a file"),
    case("run-dir-under-a-file", ["hydra.run.dir={file}/run"], USAGE, "is a file, so the directory cannot be made"),
    case("sweep-dir-is-a-file", ["-m", "seed=0,1", "hydra.sweep.dir={file}"], USAGE,
         "hydra.sweep.dir={file} is a file"),
    case("data-dir-is-a-file", ["data_dir={file}"], USAGE, "data_dir={file} is a file"),
    case("resume-nothing", ["--resume", "{missing}"], USAGE, "not a run or sweep directory", base=False),
    case("resume-no-dir", ["--resume"], USAGE, "--resume needs a run or sweep directory", base=False),
    case("unknown-command", [], USAGE, "unknown command 'trian'", cmd="trian"),
    # ---- data ----
    case("tsv-missing-dir", ["dataset=tsv", "model=linear", "dataset.loader.path={missing}"], FAILED,
         "dataset.loader.path"),
    case("tsv-two-rows", ["dataset=tsv", "model=linear", "dataset.loader.path={tiny_tsv}"], FAILED, "train.tsv"),
    case("sms-offline-missing", ["dataset=sms_spam", "data_dir={empty}"], FAILED, "NOISYBENCH_DOWNLOAD",
         env={"NOISYBENCH_DOWNLOAD": "false"}),
    case("fashion-offline-missing", ["dataset=fashion_mnist", "data_dir={empty}", "dataset.loader.search_dirs=[]"],
         FAILED, "fashion", env={"NOISYBENCH_DOWNLOAD": "false"}),
    case("cifar-offline-missing", ["dataset=cifar10", "data_dir={empty}"], FAILED, "cifar",
         env={"NOISYBENCH_DOWNLOAD": "false"}),
    case("model-does-not-fit-text",
         ["dataset=tsv", "model=cnn1d", "dataset.loader.path={text_dir}", "dataset.subset=null"], USAGE, "model=cnn1d"),
    # ---- noise (same config and the same exit codes as train) ----
    case("noise-epochs-string", ["trainer.epochs=abc"], USAGE, "trainer.epochs=abc must be a whole number",
         cmd="noise"),
    case("noise-rate-out-of-range", ["noise.rate=2"], USAGE, "noise.rate=2", cmd="noise"),
    case("noise-unknown-key", ["+foo=1"], USAGE, "foo is not an option", cmd="noise"),
    case("noise-cmd-typo", ["trainer.epoch=3"], USAGE, "did you mean trainer.epochs=3",
         ("trainer.epoch=3", "trainer.epochs=3"), cmd="noise"),
    case("noise-unknown-choice", ["noise=nope"], USAGE, "Choose one of noise", cmd="noise"),
    case("noise-out-is-a-file", ["-o", "{file}/x"], FAILED, "cannot write", cmd="noise"),
    case("noise-sweep", ["-m", "seed=0,1"], USAGE, "run it once per setting", cmd="noise"),
    # ---- report ----
    case("report-missing-path", ["{missing}"], USAGE, "no such path", cmd="report"),
    case("report-corrupt-result", ["{corrupt_run}"], FAILED, "unreadable", cmd="report"),
    case("report-result-missing-keys", ["{partial_run}"], FAILED, "no key", cmd="report"),
    case("report-result-wrong-type", ["{wrong_type_run}"], FAILED, "not a number", cmd="report"),
    case("report-nothing-finished", ["{empty}"], FAILED, "no finished run", cmd="report"),
    case("report-out-is-a-file", ["{good_run}", "-o", "{file}"], USAGE, "is a file", cmd="report"),
    case("report-out-under-a-file", ["{good_run}", "-o", "{file}/x"], FAILED, "cannot write the report", cmd="report"),
    case("report-unknown-format", ["{good_run}", "-f", "docx"], USAGE, "unknown format or kind docx", cmd="report"),
    case("report-unknown-kind", ["{good_run}", "-k", "median"], USAGE, "unknown format or kind median", cmd="report"),
    case("report-tune-unknown-key", ["{good_run}", "--tune", "optim.optimizer.lrr"], USAGE,
         "--tune optim.optimizer.lrr", cmd="report"),
]
IDS = [c["id"] for c in CASES]
assert len(set(IDS)) == len(IDS)


def _fill(text: str, where: dict[str, str]) -> str:
    for k, v in where.items():
        text = text.replace("{" + k + "}", v)
    return text


def _fixtures(root: Path, data_dir: Path) -> dict[str, str]:
    """Files the cases point at (a plain file, a missing path, tiny data, result.json variants)."""
    (root / "afile").write_text("not a directory\n")
    (root / "empty").mkdir()
    tiny = root / "tiny_tsv"
    tiny.mkdir()
    (tiny / "train.tsv").write_text("index\tsentence1\tlabel\n0\tfree prize now\tspam\n1\tsee you at noon\tham\n")
    text = root / "text"
    text.mkdir()
    words = ["free", "noon"]  # a two-word TF-IDF vocabulary: too short for cnn1d's kernel
    for name, n in (("train.tsv", 80), ("test.tsv", 20)):
        rows = [f"{i}\t{words[i % 2]} {words[(i // 2) % 2]}\t{'spam' if i % 2 else 'ham'}" for i in range(n)]
        (text / name).write_text("index\tsentence1\tlabel\n" + "\n".join(rows) + "\n")
    good = root / "good_run"
    env = dict(os.environ, NOISYBENCH_DATA_DIR=str(data_dir), NOISYBENCH_DOWNLOAD="false")
    p = nb("train", *SMOKE, f"hydra.run.dir={good}", env=env)
    assert p.returncode == 0, p.stderr
    record = json.loads((good / "result.json").read_text())
    for name, text_ in (("corrupt_run", '{"dataset": "mnist1d", "test_last": 0.'),
                        ("partial_run", json.dumps({k: v for k, v in record.items() if k != "test_last"})),
                        ("wrong_type_run", json.dumps({**record, "test_last": "high"}))):
        (root / name).mkdir()
        (root / name / "result.json").write_text(text_)
    return {"file": str(root / "afile"), "missing": str(root / "missing"), "empty": str(root / "empty"),
            "tiny_tsv": str(tiny), "text_dir": str(text), "good_run": str(good),
            **{n: str(root / n) for n in ("corrupt_run", "partial_run", "wrong_type_run")}}


def _fixed_argv(c: dict) -> list[str]:
    bad, good = c["fix"]
    assert bad in c["argv"], f"{c['id']}: fix replaces {bad!r}, which is not in the command"
    return [good if a == bad else a for a in c["argv"]]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, data_dir):
    """Run every case once, in one interpreter; -> {(id, "case"): result}."""
    root = tmp_path_factory.mktemp("bad_input")
    where = _fixtures(root, data_dir)
    jobs, keys = [], []
    for c in CASES:
        for kind in ("case",):
            cwd = root / "cwd" / c["id"]
            cwd.mkdir(parents=True)
            argv = c["argv"]
            env = {"NOISYBENCH_DATA_DIR": str(data_dir), "NOISYBENCH_DOWNLOAD": "false",
                   "NOISYBENCH_OUTPUT_DIR": str(cwd / "outputs"), "NOISYBENCH_MULTIRUN_DIR": str(cwd / "multirun"),
                   **c["env"]}
            jobs.append({"argv": [_fill(a, where) for a in argv], "cwd": str(cwd), "env": env})
            keys.append((c["id"], kind))
    spec, out = root / "cases.json", root / "results.json"
    spec.write_text(json.dumps(jobs))
    runner = Path(__file__).with_name("bad_input_runner.py")
    p = subprocess.run([sys.executable, str(runner), str(spec), str(out)], capture_output=True, text=True,
                       timeout=900, env=dict(os.environ, NOISYBENCH_DOWNLOAD="false"))
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(out.read_text())
    return {"where": where, "root": root,
            **{k: {**r, "cwd": j["cwd"], "argv": j["argv"]} for k, r, j in zip(keys, results, jobs)}}


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("noisybench: error:")]


def test_the_table_is_big_enough():
    assert len(CASES) >= 80


@pytest.mark.parametrize("c", CASES, ids=IDS)
def test_bad_input(c, outcomes):
    r = outcomes[(c["id"], "case")]
    where = outcomes["where"]
    both = r["stdout"] + r["stderr"]
    assert "Traceback" not in both and r["code"] != "crash", both[-3000:]
    errors = _error_lines(r["stderr"])
    assert len(errors) == 1, f"{c['id']}: {r['stderr'][-2000:]}"
    assert r["code"] == c["code"], f"{c['id']}: exit {r['code']}: {errors[0]}"
    expect = _fill(c["expect"], where)
    assert expect in errors[0], f"{c['id']}: {errors[0]}"
    # nothing that looks like a success: no result.json, no summary row, wherever the command wrote
    cwd = Path(r["cwd"])
    assert not list(cwd.rglob("result.json")), f"{c['id']}: a result.json was written"
    for summary in cwd.rglob("summary.csv"):
        assert len(summary.read_text().strip().splitlines()) <= 1, f"{c['id']}: a summary row was written"
    if c["fix"] is not None:
        bad, good = c["fix"]
        assert _fill(good, where) in errors[0], f"{c['id']}: the message does not suggest {good}: {errors[0]}"
        if not c["run_fix"]:
            args = [_fill(a, where) for a in _fixed_argv(c)]
            if c["argv"][0] == "train":
                assert preflight(args[1:]) == (None, None), f"{c['id']}: the suggested fix is refused"
            else:  # `noise`: the same config; its preflight is train's
                assert preflight([a for a in args[1:] if a not in ("-m",)])[0] is None


@pytest.mark.parametrize("c", [c for c in CASES if c["run_fix"]], ids=[c["id"] for c in CASES if c["run_fix"]])
def test_runtime_errors_name_a_value_that_works(c, outcomes, data_dir, tmp_path):
    """Errors found only with the data (a subset larger than the data, a validation split that leaves
    too few training samples) name a value; the command with that value runs to the end."""
    import re

    r = outcomes[(c["id"], "case")]
    (error,) = _error_lines(r["stderr"])
    key = c["expect"].rstrip("=")
    bad_value = next(a for a in c["argv"] if a.startswith(key + "=")).split("=", 1)[1]
    good = [v for v in re.findall(rf"{re.escape(key)}=([0-9.]*[0-9]|null)", error) if v != bad_value]
    assert good, f"{c['id']}: no working value named: {error}"
    fixed = [f"{key}={good[0]}" if a.startswith(key + "=") else a for a in c["argv"]]
    env = dict(os.environ, NOISYBENCH_DATA_DIR=str(data_dir), NOISYBENCH_DOWNLOAD="false")
    p = nb(*fixed, f"hydra.run.dir={tmp_path / 'fixed'}", env=env)
    assert p.returncode == 0, f"{c['id']}: {' '.join(fixed)}: {p.stderr[-2000:]}"
    assert (tmp_path / "fixed" / "result.json").is_file()


def test_in_process_runs_match_real_subprocesses(outcomes, data_dir, tmp_path):
    """The runner is the CLI: the same exit code and error line from `python -m noisybench.cli`."""
    for cid in ("plus-typo", "tsv-two-rows", "report-result-missing-keys"):
        r = outcomes[(cid, "case")]
        env = dict(os.environ, NOISYBENCH_DATA_DIR=str(data_dir), NOISYBENCH_DOWNLOAD="false",
                   NOISYBENCH_OUTPUT_DIR=str(tmp_path / cid))
        p = nb(*r["argv"], env=env)
        assert p.returncode == r["code"] and _error_lines(p.stderr) == _error_lines(r["stderr"]), (cid, p.stderr)
        assert "Traceback" not in p.stderr


def test_a_diverging_run_is_a_marked_result_not_a_silent_one(outcomes, data_dir, tmp_path):
    """Finite divergence (loss 1e28, chance accuracy): result.json says diverged, the table cell says
    so, the exit code is 1 and there is one error line that names the fix."""
    env = dict(os.environ, NOISYBENCH_DATA_DIR=str(data_dir), NOISYBENCH_DOWNLOAD="false")
    run_dir = tmp_path / "r"
    p = nb("train", *SMOKE, "optim=adam", "optim.optimizer.lr=1e6", f"hydra.run.dir={run_dir}", env=env)
    assert p.returncode == FAILED and "Traceback" not in p.stderr
    (error,) = _error_lines(p.stderr)
    assert "diverged" in error and "optim.optimizer.lr" in error and "trainer.max_train_loss" in error
    record = json.loads((run_dir / "result.json").read_text())
    assert record["diverged"]["epoch"] == 0 and record["diverged"]["train_loss"] > 1e4
    rep = nb("report", str(run_dir), env=env)
    assert rep.returncode == 0 and "(1, 1 diverged)" in rep.stdout


def test_a_read_only_output_directory_is_one_line(tmp_path, monkeypatch):
    """(Root can write anywhere, so the permission is simulated.)"""
    real_access = os.access
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    err, _ = preflight([*SMOKE, f"hydra.run.dir={ro}/run"])
    assert err is not None and "is not writable by you" in err and "hydra.run.dir=DIR" in err
