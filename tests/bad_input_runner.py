"""Run many `noisybench` command lines in ONE process, as `python -m noisybench.cli ARGS` runs each
(same entry point, same argv handling), so a table of a hundred bad inputs costs one interpreter start.

usage: python bad_input_runner.py CASES.json RESULTS.json
CASES.json: [{"argv": [...], "cwd": DIR, "env": {...}}, ...]; RESULTS.json: [{"code", "stdout", "stderr"}]
An exception that escapes `main` is printed as a traceback into stderr and recorded as code "crash".
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback


def run_case(argv: list[str], cwd: str, env: dict[str, str]) -> dict:
    from noisybench.cli import main

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), list(sys.argv)
    os.environ.update(env)
    os.chdir(cwd)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as e:  # Hydra exits itself on some errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # broad on purpose: what a user would see as a traceback
                traceback.print_exc()
                code = "crash"
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    cases = json.loads(open(sys.argv[1]).read())
    results = [run_case(**c) for c in cases]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
