"""Dialogue state tracking (DST) as a task: per-(turn, slot) gate / value / refer labels, per-slot
losses, joint goal accuracy.

Data (`build_data`): the loader's dialogues are flattened to one row per user turn; the training
pool is split BY DIALOGUE into train and validation (`dataset.val_fraction`, or the dataset's own dev
set); `dataset.subset` keeps that many training dialogues. The noise injector (`noise=dst`) corrupts
the cumulative belief-state labels of the pool (validation included unless `noise.apply_to_val=false`);
the training targets are TripPy-style update labels derived from the (noisy) states
(`noisybench.data.dialogue.update_labels`). Test labels are clean.

Loss (TripPy `modeling_bert_dst.py`, `class_loss_ratio` = 0.8): per turn,
    L = sum over slots of [ share_gate * L_gate + share_value * L_value + share_refer * L_refer ]
with L_value only on cells whose gate is `value` (and the value was seen in training) and L_refer
only on `refer` cells; each L is the loss method's per-sample `forward`, so CE / GCE / DAL apply to
every head. Departure: TripPy splits the remaining 0.2 as (1 - 0.8) / 2 between span and refer
losses; here value and refer get 0.1 each (the same numbers) and there is no span loss.

Evaluation (TripPy `metric_dst.py`): per slot the predicted value starts at `none` at a dialogue's
first turn and is updated by the predicted gate (`none` keeps it, `dontcare` sets it, `value` takes
the value classifier's value, `refer` copies the referred slot's value after this turn's other
updates). JGA = mean over turns of 1[every slot's predicted cumulative value equals the gold one],
`none` and `dontcare` included; slot accuracy = mean over (turn, slot) cells; gate F1 per gate class
over (turn, slot) cells of the test set, against the gates derived from the clean test states.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from noisybench.config import build
from noisybench.data import Dataset, split_pool, take_subset
from noisybench.data.dialogue import (
    DONTCARE,
    G_DONTCARE,
    G_REFER,
    G_VALUE,
    GATES,
    NONE,
    PAD,
    SEP,
    UNK,
    Flat,
    encode,
    flatten,
    tokenize,
    update_labels,
)
from noisybench.errors import ConfigError
from noisybench.metrics import gate_f1, joint_goal_accuracy, memorization, slot_accuracy
from noisybench.tasks.base import LossTerms, Task
from noisybench.utils import resolve_data_dir

NONE_ID, DONTCARE_ID = 0, 1
DST_METRICS = ("jga", "slot_acc", "gate_f1")  # gate_f1 expands to one F1 per gate class


@dataclass
class DSTDataset(Dataset):
    """`Dataset` plus what evaluation needs: cumulative states ([N, S] value ids), the previous-turn
    row of each turn (-1 at a first turn), turn positions, and the slot -> value-id table."""

    state_train: torch.Tensor | None = None
    state_train_clean: torch.Tensor | None = None
    state_val: torch.Tensor | None = None
    state_val_clean: torch.Tensor | None = None
    state_test: torch.Tensor | None = None
    prev_train: torch.Tensor | None = None
    prev_val: torch.Tensor | None = None
    prev_test: torch.Tensor | None = None
    turn_train: torch.Tensor | None = None
    turn_val: torch.Tensor | None = None
    turn_test: torch.Tensor | None = None
    value_table: torch.Tensor | None = None  # [S, Vmax] value id of each value-head index, -1 = padding
    vocab: list | None = None  # token id -> token
    value_strings: list | None = None  # value id -> normalised value string


def _take(flat: Flat, dialogue_of_row: np.ndarray, dialogues: np.ndarray, states: np.ndarray):
    """Rows of the given dialogues (in order) with `prev` re-indexed."""
    rows = np.flatnonzero(np.isin(dialogue_of_row, dialogues))
    new = np.full(len(flat.prev), -1, dtype=np.int64)
    new[rows] = np.arange(len(rows))
    prev = flat.prev[rows]
    prev = np.where(prev >= 0, new[np.maximum(prev, 0)], -1)
    return rows, states[rows], prev


def _dialogue_split(pool, dataset_cfg) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) dialogue indices: the dataset's own dev set, else a seeded split."""
    n = len(pool.train)
    if pool.val_index is not None:
        val_d = np.sort(np.asarray(pool.val_index, dtype=np.int64))
        return np.setdiff1d(np.arange(n), val_d), val_d
    return split_pool(n, float(dataset_cfg.val_fraction), int(dataset_cfg.split_seed))


def _state_noise(cfg, pool):
    """(injector, corrupt): the noise config and its function over cumulative states; one line for a
    noise that cannot apply to dialogue states."""
    injector = build(cfg.noise)
    if getattr(injector, "real", False) and pool.clean_known:
        raise ConfigError(f"dataset={cfg.dataset.name} has clean labels, no real noise; "
                          "use noise=dst noise.rate=<rate> (or noise=none)")
    corrupt = getattr(injector, "corrupt_states", None)
    if corrupt is None:
        if injector.rate != 0:
            raise ConfigError(f"noise={cfg.noise.name} does not apply to dialogue states; "
                              "use noise=dst noise.rate=<rate> (or noise=none)")
        corrupt = lambda st, *a, **k: (st.copy(), None, {})  # noqa: E731  (a stand-in for corrupt_states: no noise)
    return injector, corrupt


def _value_heads(st_train: np.ndarray, S: int):
    """Each slot's value-head vocabulary: the values its (noisy) training states hold; the value id ->
    head index maps and the [S, Vmax] table of value ids (-1 = padding)."""
    vocab_s = [np.unique(st_train[:, s][st_train[:, s] > DONTCARE_ID]) for s in range(S)]
    slot_vocab = [{int(g): i for i, g in enumerate(v)} for v in vocab_s]
    vmax = max(1, max(len(v) for v in vocab_s))
    table = np.full((S, vmax), -1, dtype=np.int64)
    for s, v in enumerate(vocab_s):
        table[s, :len(v)] = v
    return vocab_s, slot_vocab, table


def _token_vocab(texts, rows, min_count: int) -> list[str]:
    """Token id -> token: the special tokens, then the training turns' tokens by count (then name)."""
    counts = Counter(t for r in rows for t in texts[r])
    return [PAD, UNK, SEP] + sorted((t for t, c in counts.items() if c >= min_count and t != SEP),
                                    key=lambda t: (-counts[t], t))


class DSTTask(Task):
    kind = "dialogue state tracking"
    model_hint = "a DST model, e.g. model=dst"

    def __init__(self, metric: str = "jga", extra_metrics: list[str] | None = None,
                 shares: dict | None = None, max_len: int = 64, min_token_count: int = 1) -> None:
        super().__init__(metric, extra_metrics)
        if self.metric not in ("jga", "slot_acc"):
            raise ConfigError(f"dataset.metric={self.metric!r} is not a DST headline; use jga or slot_acc")
        unknown = [m for m in self.extra_metrics if m not in DST_METRICS]
        if unknown:
            raise ConfigError(f"dataset.extra_metrics has unknown {unknown}; use any of {', '.join(DST_METRICS)}")
        shares = dict(shares or {"gate": 0.8, "value": 0.1, "refer": 0.1})
        if set(shares) != {"gate", "value", "refer"} or any(float(v) < 0 for v in shares.values()):
            raise ConfigError(f"dataset.task.shares={shares} needs non-negative gate, value and refer "
                              "(TripPy: 0.8, 0.1, 0.1)")
        self.shares = {k: float(v) for k, v in shares.items()}
        self.max_len, self.min_token_count = int(max_len), int(min_token_count)

    # ---- data ---------------------------------------------------------------------------------
    def build_data(self, cfg):
        pool = build(cfg.dataset.loader)(data_dir=str(resolve_data_dir(cfg.data_dir)))
        slots, S = pool.slots, len(pool.slots)
        train_d, val_d = _dialogue_split(pool, cfg.dataset)

        values = {NONE: NONE_ID, DONTCARE: DONTCARE_ID}
        flat = flatten(pool.train, slots, values)
        dial = np.repeat(np.arange(len(pool.train)), [len(d.turns) for d in pool.train])
        test = flatten(pool.test, slots, values)
        strings = [v for v, _ in sorted(values.items(), key=lambda kv: kv[1])]

        injector, corrupt = _state_noise(cfg, pool)
        # after the noise checks above (a noise that cannot apply is the first thing to fix)
        train_d = take_subset(train_d, cfg.dataset.get("subset"), int(cfg.dataset.split_seed), unit="dialogues",
                              at_most=cfg.dataset.get("subset_at_most"))
        slot_values = [np.unique(flat.states[:, s][flat.states[:, s] > DONTCARE_ID]) for s in range(S)]
        scope_d = np.concatenate([train_d, val_d]) if injector.apply_to_val else train_d
        scope, st_scope, prev_scope = _take(flat, dial, scope_d, flat.states)
        noisy_scope, _, report = corrupt(st_scope, prev_scope, slot_values, NONE_ID, DONTCARE_ID)
        noisy = flat.states.copy()
        noisy[scope] = noisy_scope

        tr_rows, st_train, prev_train = _take(flat, dial, train_d, noisy)
        va_rows, st_val, prev_val = _take(flat, dial, val_d, noisy)
        st_train_clean, st_val_clean = flat.states[tr_rows], flat.states[va_rows]
        vocab_s, slot_vocab, table = _value_heads(st_train, S)

        ev = flat.evidence
        labels = lambda st, prev, rows: update_labels(st, prev, [ev[r] for r in rows], strings, slot_vocab,  # noqa: E731  (a local helper)
                                                      NONE_ID, DONTCARE_ID)
        y_train, y_train_clean = labels(st_train, prev_train, tr_rows), labels(st_train_clean, prev_train, tr_rows)
        y_val, y_val_clean = labels(st_val, prev_val, va_rows), labels(st_val_clean, prev_val, va_rows)
        y_test = update_labels(test.states, test.prev, test.evidence, strings, slot_vocab, NONE_ID, DONTCARE_ID)

        itos = _token_vocab(flat.texts, tr_rows, self.min_token_count)
        stoi = {t: i for i, t in enumerate(itos)}
        x = lambda rows, texts: torch.as_tensor(encode([texts[r] for r in rows], stoi, self.max_len))  # noqa: E731  (a local helper)

        if not pool.clean_known:
            report = {**report, "real_noise": "the dataset's training labels are noisy themselves "
                      "(no clean reference): memorisation and realised rates cover injected noise only"}
        noise_report = {
            "type": cfg.noise.name, **injector.spec(),
            "realized_noise_rate": float(report.get("realized_noise_rate", 0.0)),
            **{k: v for k, v in report.items() if k != "realized_noise_rate"},
            "applied_to": "train+val" if injector.apply_to_val else "train (validation labels clean)",
            "num_samples": int(len(scope)),
            "unit_of_num_samples": "user turns",
            "gate_label_noise_rate_train": (float((y_train[..., 0] != y_train_clean[..., 0]).mean())
                                            if len(y_train) else 0.0),
        }
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64)  # noqa: E731  (a local helper)
        gate_hist = lambda y: {g: int((y[..., 0] == i).sum()) for i, g in enumerate(GATES)}  # noqa: E731  (a local helper)
        info = {**pool.info, "slots": slots, "num_values_per_slot": [len(v) for v in vocab_s],
                "vocab_size": len(itos), "max_len": self.max_len,
                "turns": {"train": len(tr_rows), "val": len(va_rows), "test": len(test.states)},
                "dialogues": {"train": len(train_d), "val": len(val_d), "test": len(pool.test)},
                "gates_train_noisy": gate_hist(y_train), "gates_train_clean": gate_hist(y_train_clean),
                "gates_test": gate_hist(y_test), "loss_shares": self.shares}
        ds = DSTDataset(
            x_train=x(tr_rows, flat.texts), y_train=t(y_train), y_train_clean=t(y_train_clean),
            x_val=x(va_rows, flat.texts), y_val=t(y_val), y_val_clean=t(y_val_clean),
            x_test=x(range(len(test.states)), test.texts), y_test=t(y_test), num_classes=len(GATES), info=info,
            state_train=t(st_train), state_train_clean=t(st_train_clean), state_val=t(st_val),
            state_val_clean=t(st_val_clean), state_test=t(test.states),
            prev_train=t(prev_train), prev_val=t(prev_val), prev_test=t(test.prev),
            turn_train=t(flat.turn[tr_rows]), turn_val=t(flat.turn[va_rows]), turn_test=t(test.turn),
            value_table=t(table), vocab=itos, value_strings=strings)
        return ds, noise_report

    def model_kwargs(self, ds):
        return {"vocab_size": len(ds.vocab), "max_len": self.max_len, "num_slots": ds.value_table.shape[0],
                "num_values": [int(v) for v in (ds.value_table >= 0).sum(1)], "num_gates": len(GATES),
                "sep_id": ds.vocab.index(SEP), "itos": ds.vocab, "value_tokens": self.value_tokens(ds)}

    @staticmethod
    def value_tokens(ds) -> list[list[list[int]]]:
        """Token ids of every value of every slot's value head (unknown tokens -> [unk])."""
        stoi = {t: i for i, t in enumerate(ds.vocab)}
        return [[[stoi.get(tok, stoi[UNK]) for tok in tokenize(ds.value_strings[g])] for g in row if g >= 0]
                for row in ds.value_table.tolist()]

    # ---- loss ---------------------------------------------------------------------------------
    def sample_groups(self, targets):
        return int(targets.shape[1])  # targets [N, S, 3]: one gate decision per slot

    def sample_corrupted(self, corrupted):
        return corrupted[..., 0].reshape(-1)  # the gate label (the reweighted sample) differs from the clean one

    def sample_classes(self, targets):
        return targets[..., 0].reshape(-1)  # the gate label of each (turn, slot)

    def loss_terms(self, method, outputs, targets) -> LossTerms:
        """Samples = (turn, slot) gate decisions; rest = the value and refer losses (unweighted by a
        reweighting method; masked to their cells without a host sync)."""
        gate, value, refer = outputs
        B, S, G = gate.shape
        dev = gate.device
        rows = torch.arange(B, device=dev).repeat_interleave(S)
        slots = torch.arange(S, device=dev).repeat(B)
        g_t, v_t, r_t = (targets[..., i].reshape(-1) for i in range(3))
        gate_logits = gate.reshape(B * S, G)
        gate_loss = method(gate_logits, g_t)
        dtype = gate_loss.dtype  # the losses' (float32), not the logits' (bf16 under autocast)
        v_mask, r_mask = (v_t >= 0).to(dtype), (r_t >= 0).to(dtype)
        v_loss = method(value.reshape(B * S, -1), v_t.clamp(min=0)) * v_mask
        r_loss = method(refer.reshape(B * S, S), r_t.clamp(min=0)) * r_mask
        rest = torch.zeros(B, device=dev, dtype=dtype).index_add(
            0, rows, self.shares["value"] * v_loss + self.shares["refer"] * r_loss)
        return LossTerms(gate_loss, gate_logits, g_t, slots, rows, self.shares["gate"], rest)

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model, x, batch_size):
        """Per-turn gate, value-head index and referred slot, each [N, S]."""
        model.eval()
        outs = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        if not outs:
            e = torch.empty(0, 0, dtype=torch.int64, device=x.device)
            return e, e, e
        return tuple(torch.cat([o[k].argmax(-1) for o in outs]) for k in range(3))

    @staticmethod
    def accumulate(gates, values, refers, prev, turn, value_table) -> torch.Tensor:
        """Predicted cumulative states [N, S] (value ids), turn position by turn position."""
        N, S = gates.shape
        state = torch.full((N, S), NONE_ID, dtype=torch.int64, device=gates.device)
        if N == 0:
            return state
        slot_idx = torch.arange(S, device=gates.device)[None, :]
        for t in range(int(turn.max()) + 1):  # host sync: once per evaluation
            r = torch.nonzero(turn == t).squeeze(1)
            p = prev[r]
            cur = torch.where((p >= 0)[:, None], state[p.clamp(min=0)], torch.full_like(state[r], NONE_ID))
            g = gates[r]
            v = value_table[slot_idx, values[r]]
            cur = torch.where(g == G_DONTCARE, torch.full_like(cur, DONTCARE_ID), cur)
            cur = torch.where((g == G_VALUE) & (v >= 0), v, cur)
            cur = torch.where(g == G_REFER, cur.gather(1, refers[r]), cur)
            state[r] = cur
        return state

    def _states(self, model, ds, split, batch_size):
        g, v, r = self.predict(model, getattr(ds, f"x_{split}"), batch_size)
        return self.accumulate(g, v, r, getattr(ds, f"prev_{split}"), getattr(ds, f"turn_{split}"),
                               ds.value_table), g

    def evaluate(self, model, ds, batch_size):
        headline = {"jga": joint_goal_accuracy, "slot_acc": slot_accuracy}
        m = headline[self.metric]
        pred_train, _ = self._states(model, ds, "train", batch_size)
        pred_val, _ = self._states(model, ds, "val", batch_size)
        pred_test, gates_test = self._states(model, ds, "test", batch_size)
        mem_noisy, mem_clean = memorization(pred_train, ds.state_train, ds.state_train_clean)
        row = {"val": m(pred_val, ds.state_val), "test": m(pred_test, ds.state_test)}
        for name in self.extra_metrics:
            if name == "gate_f1":
                row.update({f"test_gate_f1_{g}": gate_f1(gates_test, ds.y_test[..., 0], i)
                            for i, g in enumerate(GATES)})
            else:
                row[f"test_{name}"] = headline[name](pred_test, ds.state_test)
        row.update({"train_noisy": m(pred_train, ds.state_train),
                    "memorized_noisy_frac": mem_noisy, "memorized_clean_frac": mem_clean})
        out = {}
        for k, v in row.items():  # host syncs, once per evaluated epoch
            f = float(v)
            out[k] = None if math.isnan(f) else f
        return out
