"""Every `noisybench ...` command in a code block of README.md and docs/**/*.md is one the program
accepts: `train` (and `noise`) lines are expanded and checked by the real preflight (every job of a
sweep composed and validated, nothing trained); `report`, `plot`, `completion` and `--help` lines
go through the real argument parsers, with placeholder paths (SWEEP_DIR, DIR, ...) that do not
exist.
A doc line with an unknown key, a bad value, an unknown choice or an unknown flag fails here."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from noisybench.cli import main
from noisybench.preflight import preflight

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLE = ROOT / "examples" / "user_method"  # the docs' user method (on PYTHONPATH there)
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)\s*$")
# Hydra flags that print instead of running; dropped, and the rest of the line is checked
_PRINT_ONLY = {"--help", "-h", "--hydra-help", "--info", "-i", "--resolve"}
_PRINT_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}


def shell_lines(text: str):
    """(line number, command line) of every line in a shell code block; continuations joined."""
    block, pending, start = None, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip())
        if m:
            block = None if block is not None else m.group(1)
            continue
        if block is None or block not in SHELL_BLOCKS:
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def noisybench_commands(line: str) -> list[list[str]]:
    """The argument lists (after `noisybench`) of the noisybench commands on one shell line."""
    # eval "$(noisybench completion bash)"
    found = [shlex.split(m) for m in re.findall(r"\$\(noisybench ([^)]*)\)", line)]
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return found
    command: list[str] = []
    for tok in [*tokens, "&&"]:
        if tok in ("&&", "||", ";", "|"):
            while command and re.match(r"^[A-Z_]+=", command[0]):  # VAR=value noisybench ...
                command.pop(0)
            if command[:1] == ["noisybench"]:
                found.append(command[1:])
            elif command[:1] in (["python"], ["python3"]) and command[1:3] == ["-m", "noisybench"]:
                found.append(command[3:])
            command = []
        else:
            command.append(tok)
    return found


def doc_commands() -> list[tuple[str, list[str]]]:
    out = []
    for page in PAGES:
        for n, line in shell_lines(page.read_text()):
            for args in noisybench_commands(line):
                out.append((f"{page.relative_to(ROOT)}:{n}", args))
    return out


def _drop_flag(args: list[str], flags: set[str], with_value: bool) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = with_value
        else:
            out.append(a)
    return out


def train_overrides(args: list[str]) -> list[str]:
    """What preflight checks of a `train` line: the flags that print instead of training, `--dry-run`
    and `--resume DIR` dropped (its extra overrides stay and are checked)."""
    args = _drop_flag(args, {"--resume"}, with_value=True)
    args = _drop_flag(args, {"--dry-run"}, with_value=False)
    args = _drop_flag(args, _PRINT_WITH_VALUE, with_value=True)
    return _drop_flag(args, _PRINT_ONLY, with_value=False)


def normalised(args: list[str]) -> list[str]:
    """The command as it is checked: `noise` lines as the train config they compose (without -o)."""
    if args[:1] == ["train"]:
        return ["train", *train_overrides(args[1:])]
    if args[:1] == ["noise"]:
        return ["train", *train_overrides(_drop_flag(args[1:], {"-o", "--out"}, with_value=True))]
    return args


def check_train(args: list[str]) -> str | None:
    err, _ = preflight(train_overrides(args))
    return err


def check_parser(args: list[str], capsys) -> str | None:
    """report / plot / completion / --help through the CLI's own parsers (placeholder paths)."""
    if args[0] in ("report", "plot"):
        # "[more dirs]": an optional part of the synopsis
        args = [a for a in args if not re.search(r"^\[|\]$", a)]
    try:
        code = main(args)
    except SystemExit as e:  # argparse: an unknown flag or a bad flag value
        return f"exit {e.code}: {capsys.readouterr().err.strip()}"
    err = capsys.readouterr().err.strip()
    if code == 0 or (args[0] in ("report", "plot") and code == 2 and "no such path" in err):
        return None
    if args[0] == "status" and code == 2 and "is not a directory" in err:  # a placeholder SWEEP_DIR
        return None
    return f"exit {code}: {err}"


def check(args: list[str], capsys) -> str | None:
    if not args:
        return "no subcommand"
    if args[0] in ("train", "noise"):
        return check_train(normalised(args)[1:])
    if args[0] in ("report", "plot", "status", "completion", "--help", "-h", "--version", "-V"):
        return check_parser(args, capsys)
    return f"unknown subcommand {args[0]!r}"


@pytest.fixture
def docs_env(monkeypatch, tmp_path):
    """The docs' commands run from the repository root (relative -cd paths), with the example's
    module importable; report/plot placeholders (SWEEP_DIR, DIR) resolve under an empty tmp_path.
    """
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setenv("NOISYBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NOISYBENCH_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("NOISYBENCH_MULTIRUN_DIR", str(tmp_path / "multirun"))
    return tmp_path


def test_docs_have_commands_to_check():
    found = doc_commands()
    kinds = {args[0] for _, args in found if args}
    assert len(found) >= 40, found
    assert {"train", "report", "plot", "noise", "completion", "--help"} <= kinds, kinds


def unique_commands() -> dict[tuple[str, ...], list[str]]:
    """Each distinct command once (several pages repeat a command), with where it appears."""
    seen: dict[tuple[str, ...], list[str]] = {}
    for where, args in doc_commands():
        seen.setdefault(tuple(normalised(args)), []).append(where)
    return seen


def test_every_documented_command_is_accepted(docs_env, capsys, monkeypatch):
    failures = []
    for args, where in unique_commands().items():
        if args and args[0] in ("report", "plot", "status"):
            monkeypatch.chdir(docs_env)  # placeholders must not exist
        err = check(list(args), capsys)
        monkeypatch.chdir(ROOT)
        if err:
            failures.append(f"{', '.join(where)}: noisybench {' '.join(args)}\n    {err}")
    assert not failures, "\n".join(failures)


BROKEN = """
```bash
noisybench train -m method=ce,gce trainer.epoch=3     # unknown key
noisybench train method=nope                          # unknown choice
noisybench train -m noise.rate=0.2,1.4 seed=0,1       # a bad value in one job of the sweep
noisybench train -cd examples/user_method/conf method=bootstrap method.gamma=2
noisybench noise dataset=digits noise=pairflip noise.ratio=0.3
noisybench report SWEEP_DIR -f md,pdf                 # unknown format
noisybench report SWEEP_DIR --nope
noisybench plot SWEEP_DIR --dpi many
noisybench completion zsh
noisybench trian method=ce
```
"""


def test_a_broken_line_fails(docs_env, capsys, monkeypatch):
    lines = [line for _, line in shell_lines(BROKEN)]
    commands = [args for line in lines for args in noisybench_commands(line)]
    assert len(commands) == len(lines) == 10
    monkeypatch.chdir(docs_env)
    for args in commands:
        if args[0] in ("train", "noise"):
            monkeypatch.chdir(ROOT)
        assert check(args, capsys), f"accepted: noisybench {' '.join(args)}"
        monkeypatch.chdir(docs_env)


def test_extraction():
    text = ('x\n```bash\nA=1 noisybench train a=1 \\\n  b=2   # note\n'
            'eval "$(noisybench completion bash)"\n'
            'pip install . && noisybench train c=3\ntensorboard --logdir outputs\n```\n'
            '`noisybench no`\n')
    cmds = [args for _, line in shell_lines(text) for args in noisybench_commands(line)]
    assert cmds == [["train", "a=1", "b=2"], ["completion", "bash"], ["train", "c=3"]]


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_pages_resolve():
    bad = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):  # http:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".md":
                text = dest.read_text()
                heads = [slug(h) for h in re.findall(r"^#+ (.*)$", text, re.MULTILINE)]
                if anchor not in heads:
                    bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)
