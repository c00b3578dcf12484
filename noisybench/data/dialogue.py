"""Dialogue corpora for dialogue state tracking (DST): turns, cumulative belief states, and the
conversion to tensors (token ids, state ids, TripPy-style per-turn update labels).

A *turn* is one user utterance with the system utterance before it and the cumulative belief state
after it (slot -> value; slots not in the dict are `none`). Values are normalised strings;
`dontcare` is a value like any other for the state, and a gate class for the model.

Update labels (TripPy, Heck et al. 2020, `dataset_multiwoz21.py`): for each (turn, slot) the gate
says how the state changes at this turn -- `none` (no change), `dontcare`, `value` (the value is
predicted by the slot's value classifier) or `refer` (copied from another slot of the state, e.g.
"in the same area as the restaurant"). `refer` is used when the new value occurs neither in the user
turn nor in the previous system turn but is the value of another slot. Departures from TripPy: the
value is classified over the slot's training values instead of extracted as a span (so TripPy's
`copy_value` and `inform` gates are one `value` gate), and there are no `true`/`false` gates
(boolean slots are values). A state that *drops* a value (value -> none; only label noise makes
these) cannot be expressed by update gates, as in TripPy, and is labelled `none`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NONE, DONTCARE = "none", "dontcare"
GATES = ("none", "dontcare", "value", "refer")
G_NONE, G_DONTCARE, G_VALUE, G_REFER = range(4)
PAD, UNK, SEP = "[pad]", "[unk]", "[sep]"
_TOKEN = re.compile(r"\d+:\d+|\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


@dataclass
class Turn:
    system: str  # the system utterance before this user turn ("" at the first turn)
    user: str
    state: dict[str, str]  # cumulative belief state after this turn; missing slots are `none`


@dataclass
class Dialogue:
    id: str
    turns: list[Turn]


@dataclass
class DialoguePool:
    """What a DST loader returns: the training pool (train + validation dialogues) and the test set."""

    slots: list[str]
    train: list[Dialogue]
    test: list[Dialogue]
    # positions in `train` of the dataset's own validation dialogues; None = hold out val_fraction
    val_index: list[int] | None = None
    # False when the pool's training labels are themselves noisy with no clean reference (MultiWOZ 2.1)
    clean_known: bool = True
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Flat:
    """A list of dialogues as arrays, one row per turn, rows of a dialogue consecutive and in order."""

    states: np.ndarray  # [N, S] value ids
    prev: np.ndarray  # [N] row of the previous turn of the same dialogue, -1 at a dialogue's first turn
    turn: np.ndarray  # [N] turn position in its dialogue
    texts: list[list[str]]  # tokens: previous system turn, [sep], user turn
    evidence: list[str]  # " user tokens system tokens " for value matching


def flatten(dialogues: list[Dialogue], slots: list[str], values: dict[str, int]) -> Flat:
    """Rows per turn; unseen value strings are added to `values` (global id space over all slots)."""
    rows, prev, turn, texts, evidence = [], [], [], [], []
    for d in dialogues:
        for t, tr in enumerate(d.turns):
            rows.append([values.setdefault(tr.state.get(s, NONE), len(values)) for s in slots])
            prev.append(len(prev) - 1 if t > 0 else -1)
            turn.append(t)
            sys_tok, user_tok = tokenize(tr.system), tokenize(tr.user)
            texts.append(sys_tok + [SEP] + user_tok)
            evidence.append(" " + " ".join(user_tok) + " | " + " ".join(sys_tok) + " ")
    S = len(slots)
    return Flat(np.asarray(rows, dtype=np.int64).reshape(-1, S), np.asarray(prev, dtype=np.int64),
                np.asarray(turn, dtype=np.int64), texts, evidence)


def previous_states(states: np.ndarray, prev: np.ndarray, none_id: int = 0) -> np.ndarray:
    out = np.full_like(states, none_id)
    has = prev >= 0
    out[has] = states[prev[has]]
    return out


def update_labels(states: np.ndarray, prev: np.ndarray, evidence: list[str], value_strings: list[str],
                  slot_vocab: list[dict[int, int]], none_id: int = 0, dontcare_id: int = 1) -> np.ndarray:
    """[N, S, 3] int64: gate, value index in the slot's vocabulary (-1 = not a value update or a
    value unseen in training), referred slot (-1 = not a refer)."""
    N, S = states.shape
    out = np.full((N, S, 3), -1, dtype=np.int64)
    out[..., 0] = G_NONE
    before = previous_states(states, prev, none_id)
    for r, s in zip(*np.nonzero(states != before)):
        v = states[r, s]
        if v == none_id:
            continue  # a dropped value: not expressible by update gates (see the module docstring)
        if v == dontcare_id:
            out[r, s, 0] = G_DONTCARE
            continue
        src = [o for o in range(S) if o != s and states[r, o] == v]
        if f" {value_strings[v]} " not in evidence[r] and src:
            out[r, s, 0], out[r, s, 2] = G_REFER, src[0]
        else:
            out[r, s, 0], out[r, s, 1] = G_VALUE, slot_vocab[s].get(int(v), -1)
    return out


def encode(texts: list[list[str]], vocab: dict[str, int], max_len: int) -> np.ndarray:
    """Token ids, truncated from the left (the user turn is at the end and matters most)."""
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    unk = vocab[UNK]
    for i, toks in enumerate(texts):
        ids = [vocab.get(t, unk) for t in toks][-max_len:]
        out[i, :len(ids)] = ids
    return out
