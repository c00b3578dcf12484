"""Shell completion for `noisybench` (bash).

    eval "$(noisybench completion bash)"     # in ~/.bashrc (or this shell only)

`noisybench <TAB>` offers the subcommands; `noisybench train <TAB>` (and `noisybench noise <TAB>`)
offers what Hydra's own completion offers for the config: config groups (`method=`), keys
(`noise.rate=`, `optim.` ...), a group's options after `method=`, a key's current value after
`noise.rate=`, files after `data_dir=./`; `hydra.searchpath=[...]` and `-cd DIR` on the line are
taken into account. `noisybench report <TAB>`, `noisybench plot <TAB>` and `noisybench status <TAB>` complete paths.

Why not Hydra's `noisybench train -sc install=bash`: Hydra's script completes the program it was
started as, and the CLI starts the Hydra app as "noisybench train", so that script registered
completion for `noisybench` and for any `train`, and its TAB ran `noisybench -sc query=bash` (not a
command). `noisybench train -sc install=bash` now prints the script below instead (and
`uninstall=bash` removes it). The bash function asks `noisybench completion query` (reads COMP_LINE,
COMP_POINT, COMP_WORDBREAKS) for the candidates, which uses Hydra's CompletionPlugin query on the
same config search path as `noisybench train`.
"""
from __future__ import annotations

import os
import re
import sys

from noisybench.config import config_path
from noisybench.preflight import config_loader, parse_args

SUBCOMMANDS = ("train", "noise", "report", "plot", "status", "completion")
FLAGS = {
    "train": ("--multirun", "--cfg", "--resolve", "--package", "--info", "--help", "--hydra-help",
              "--config-dir", "--config-name", "--config-path", "--resume", "--dry-run"),
    "noise": ("--out", "--help"),
}
# flags of ours (not Hydra's) that take a value, and those that take none: dropped before Hydra's parser sees the line
_OWN_VALUE_FLAGS = {"train": ("--resume",), "noise": ("-o", "--out")}
_OWN_FLAGS = {"train": ("--dry-run",)}
SHELLS = ("bash",)

BASH_SCRIPT = r"""# noisybench bash completion: eval "$(noisybench completion bash)"
_noisybench() {
    local cur=${COMP_WORDS[COMP_CWORD]}
    if (( COMP_CWORD <= 1 )); then
        COMPREPLY=($(compgen -W "train noise report plot status completion --help --version" -- "$cur"))
        return 0
    fi
    local IFS=$'\n'
    case ${COMP_WORDS[1]} in
        train|noise)
            COMPREPLY=($(COMP_LINE=$COMP_LINE COMP_POINT=$COMP_POINT COMP_WORDBREAKS=$COMP_WORDBREAKS \
                         "${COMP_WORDS[0]}" completion query 2>/dev/null))
            local c
            for c in "${COMPREPLY[@]}"; do  # a group (method=), a node (optim.), a folder: no space yet
                case $c in *= | *. | */) compopt -o nospace 2>/dev/null; break ;; esac
            done
            ;;
        completion) COMPREPLY=($(compgen -W "bash" -- "$cur")) ;;
        *) COMPREPLY=() ;;  # report, plot, status: paths (-o default)
    esac
    return 0
}
complete -o default -F _noisybench noisybench
"""
BASH_UNINSTALL = "complete -r noisybench 2>/dev/null; unset -f _noisybench\n"

HELP = """usage: noisybench completion bash

Prints the bash completion script. To enable TAB completion of subcommands, config groups, keys and
options (noisybench train method=<TAB>), add this line to ~/.bashrc:

  eval "$(noisybench completion bash)"
"""


def primary_config_path() -> str:
    """The config tree `noisybench train` composes from (noisybench.config.config_path)."""
    return config_path()


def _drop_own_flags(words: list[str], sub: str) -> list[str]:
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in _OWN_VALUE_FLAGS.get(sub, ()):
            skip = True
        elif w not in _OWN_FLAGS.get(sub, ()):
            out.append(w)
    return out


def candidates(line: str) -> list[str]:
    """Full completions of the last word of `line` (the command line up to the cursor, program name
    included), e.g. "noisybench train met" -> ["method.", "method=", "method_dataset="]."""
    words = line.split()
    new_word = not line or line[-1].isspace()
    if len(words) < (1 if new_word else 2):
        return []
    token = "" if new_word else words[-1]
    before = words[1:] if new_word else words[1:-1]
    if not before:  # the subcommand itself
        return [c for c in (*SUBCOMMANDS, "--help", "--version") if c.startswith(token)]
    sub, args = before[0], before[1:]
    if sub not in FLAGS:
        return []
    if token.startswith("-"):
        return [f for f in FLAGS[sub] if f.startswith(token)]
    if args and args[-1] in (*_OWN_VALUE_FLAGS[sub], "-cd", "--config-dir", "-cp", "--config-path"):
        return []  # a directory: the shell's own file completion
    args = _drop_own_flags(args, sub)
    return [c for c in _hydra_query(args, token) if c.startswith(token)]


def _hydra_query(args: list[str], token: str) -> list[str]:
    """Hydra's CompletionPlugin query on the search path `noisybench train ARGS` would use."""
    from hydra.plugins.completion_plugin import DefaultCompletionPlugin

    ns = parse_args(args)
    if ns is None:
        return []
    try:
        loader, config_name = config_loader(ns, primary_config_path(), "train")
    except Exception:
        return []
    # Hydra's query parses this line with its argparse again: keep -m (it changes the config), drop
    # the config-path flags (already in the loader)
    line = " ".join([*(["-m"] if ns.multirun else []), *ns.overrides, token])
    try:
        return DefaultCompletionPlugin(loader)._query(config_name=config_name, line=line)
    except Exception:
        return []


def query(env: dict | None = None) -> list[str]:
    """The replies for bash: the candidates, each cut after the last COMP_WORDBREAKS character of the
    word being completed (bash splits `method=gc` into `method`, `=`, `gc` and replaces `gc`)."""
    env = os.environ if env is None else env
    line = env.get("COMP_LINE", "")
    point = env.get("COMP_POINT", "")
    line = line[: int(point)] if point.isdigit() else line
    token = "" if not line or line[-1].isspace() else line.split()[-1]
    breaks = env.get("COMP_WORDBREAKS", " \t\n\"'><=;|&(:")
    cut = max((token.rfind(c) for c in set(breaks) if not c.isspace()), default=-1)
    return [c[cut + 1:] for c in candidates(line)]


def script(shell: str) -> str:
    if shell not in SHELLS:
        raise ValueError(shell)
    return BASH_SCRIPT


def completion_main(args: list[str]) -> int:
    """`noisybench completion bash` prints the script; `noisybench completion query` answers TAB."""
    if not args or args[0] in ("-h", "--help"):
        print(HELP)
        return 0 if args else 2
    if args[0] == "query":
        print("\n".join(query()))
        return 0
    if args[0] in SHELLS:
        sys.stdout.write(script(args[0]))
        return 0
    print(f"noisybench: error: no completion for {args[0]!r}; supported: {', '.join(SHELLS)} "
          f'(eval "$(noisybench completion bash)")', file=sys.stderr)
    return 2


def hydra_shell_completion(args: list[str]) -> int:
    """`noisybench train -sc install=bash` (Hydra's flag): the same script as `noisybench completion bash`;
    `uninstall=bash` removes it; other shells: a one-line error naming the command that works."""
    words = [a for a in args if a not in ("-sc", "--shell-completion")]
    action = re.fullmatch(r"(install|uninstall|query)=(\w+)", words[0]) if len(words) == 1 else None
    if action and action.group(2) in SHELLS:
        if action.group(1) == "install":
            sys.stdout.write(script(action.group(2)))
        elif action.group(1) == "uninstall":
            sys.stdout.write(BASH_UNINSTALL)
        else:
            print("\n".join(query()))
        return 0
    print('noisybench: error: shell completion: use eval "$(noisybench completion bash)" (bash; '
          f"`noisybench train -sc install=bash` prints the same script), not -sc {' '.join(words)}",
          file=sys.stderr)
    return 2
