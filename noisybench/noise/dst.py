"""Annotation noise for dialogue state tracking, modelled on MultiWOZ 2.1's known error kinds
(Eric et al. 2019; Ye et al. 2022, MultiWOZ 2.4; Zang et al. 2020, MultiWOZ 2.2).

The unit is a (turn, slot) cell of the cumulative belief state. Cells whose clean value is not
`none` (the slots of the gold state) are *eligible*; each is selected independently with probability
`rate` (Bernoulli, private Generator seeded by `noise.seed`), and a selected cell gets one error kind,
drawn by the `kinds` weights among the kinds that apply to it:

- ``missed``: missed update. Applies where the clean value changes at this turn. The label keeps the
  previous turn's value, and keeps it on the following turns while the clean value stays the same
  (the update is never annotated).
- ``late``: late update. Applies where the clean value changes at this turn and the dialogue has a
  next turn. The label keeps the previous value at this turn only, so the value appears one turn late.
- ``wrong``: wrong value. Applies to real values (not `dontcare`). The label is another value of the
  same slot (uniform over the values of that slot in the clean pool), carried over the following turns
  while the clean value stays the same.
- ``dontcare``: spurious dontcare. Applies to real values. The label is `dontcare`, carried over like
  `wrong`.

Cells are processed in dialogue order; a selected cell that an earlier carried-over error already
changed is left alone (counted in `selected_but_already_changed_per_kind`). `rate` is therefore the
per-eligible-cell selection probability; because missed, wrong and dontcare carry over, the realised
fraction of changed cells is higher. Both are recorded, per kind.
"""
from __future__ import annotations

import numpy as np

from noisybench.errors import ConfigError
from noisybench.noise import NoiseInjector
from noisybench.schema import Seed

KINDS = ("missed", "late", "wrong", "dontcare")


class DSTAnnotationNoise(NoiseInjector):
    def __init__(self, rate: float = 0.2, kinds: dict[str, float] | None = None, seed: Seed = 0,
                 apply_to_val: bool = True) -> None:
        super().__init__(rate, seed, apply_to_val)
        kinds = dict(kinds) if kinds is not None else {k: 1.0 for k in KINDS}
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ConfigError(f"noise.kinds has unknown {sorted(unknown)}; use weights for {', '.join(KINDS)}")
        w = np.array([float(kinds.get(k, 0.0)) for k in KINDS])
        if (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"noise.kinds={kinds} needs non-negative weights with a positive sum")
        self.kinds = {k: float(kinds.get(k, 0.0)) for k in KINDS}

    def corrupt(self, labels, num_classes, rng, features):
        raise ConfigError("noise=dst corrupts dialogue states; use it with a DST dataset "
                          "(dataset=synthwoz or multiwoz), or pick noise=symmetric for classification")

    def spec(self) -> dict:
        return {**super().spec(), "kinds": self.kinds, "unit": "(turn, slot) cell with a non-none clean value"}

    def corrupt_states(self, states: np.ndarray, prev: np.ndarray, slot_values: list[np.ndarray],
                       none_id: int = 0, dontcare_id: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
        """(noisy states, kind per cell (-1 = untouched), report). Rows of a dialogue are consecutive."""
        rng = np.random.default_rng(self.seed)
        N, S = states.shape
        noisy, kind = states.copy(), np.full((N, S), -1, dtype=np.int64)
        before = np.full_like(states, none_id)
        before[prev >= 0] = states[prev[prev >= 0]]
        nxt = np.full(N, -1, dtype=np.int64)
        nxt[prev[prev >= 0]] = np.flatnonzero(prev >= 0)
        eligible = states != none_id
        selected = eligible & (rng.random((N, S)) < self.rate)
        weights = np.array([self.kinds[k] for k in KINDS])
        counts = {k: 0 for k in KINDS}
        absorbed = {k: 0 for k in KINDS}
        for r, s in zip(*np.nonzero(selected)):  # row-major = dialogue order
            v, p = states[r, s], before[r, s]
            update, real = v != p, v != dontcare_id
            ok = np.array([update, update and nxt[r] >= 0, real and len(slot_values[s]) > 1, real])
            w = weights * ok
            if w.sum() == 0:
                continue
            k = int(rng.choice(len(KINDS), p=w / w.sum()))
            counts[KINDS[k]] += 1
            if kind[r, s] >= 0:  # already changed by an earlier error carried over
                absorbed[KINDS[k]] += 1
                continue
            if KINDS[k] == "late":
                noisy[r, s], kind[r, s] = p, k
                continue
            if KINDS[k] == "missed":
                new = p
            elif KINDS[k] == "wrong":
                others = slot_values[s][slot_values[s] != v]
                new = others[rng.integers(len(others))]
            else:
                new = dontcare_id
            row = r
            while row >= 0 and states[row, s] == v:  # carried over while the clean value is unchanged
                if kind[row, s] < 0:
                    noisy[row, s], kind[row, s] = new, k
                row = nxt[row]
        changed = noisy != states
        n_elig = max(int(eligible.sum()), 1)
        report = {  # rates are fractions of the eligible cells, the unit of `rate`
            "realized_noise_rate": float(changed.sum() / n_elig),
            "selected_rate": float(sum(counts.values()) / n_elig),
            "changed_fraction_of_all_cells": float(changed.sum() / max(N * S, 1)),
            "eligible_cells": int(eligible.sum()), "cells": int(N * S),
            "selected_per_kind": counts,
            "selected_but_already_changed_per_kind": absorbed,
            "realized_rate_per_kind": {k: float(((kind == i) & changed).sum() / n_elig)
                                       for i, k in enumerate(KINDS)},
            "turns_with_a_wrong_state": float(changed.any(axis=1).mean()) if N else 0.0,
        }
        return noisy, kind, report


class DSTRealNoise(NoiseInjector):
    """No injected noise: the dataset's own training labels are the noisy ones (MultiWOZ 2.1 trained
    on, MultiWOZ 2.4 evaluated on; see `dataset.loader.train_version` / `eval_version`)."""

    real = True  # a dataset with clean labels (synthwoz) refuses it

    def __init__(self, rate: float = 0.0, seed: Seed = 0, apply_to_val: bool = True) -> None:
        super().__init__(rate, seed, apply_to_val)
        if self.rate != 0.0:
            raise ConfigError(f"noise=dst_real injects nothing but noise.rate={self.rate}; "
                              "use noise=dst noise.rate=<rate> to add annotation noise")

    def corrupt(self, labels, num_classes, rng, features):
        raise ConfigError("noise=dst_real is the real noise of a DST dataset; use dataset=multiwoz")

    def corrupt_states(self, states, prev, slot_values, none_id=0, dontcare_id=1):
        return states.copy(), np.full(states.shape, -1, dtype=np.int64), {}
