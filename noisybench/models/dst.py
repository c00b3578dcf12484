"""A small dialogue state tracker in the spirit of TripPy (Heck et al., SIGDIAL 2020;
code meyko18/trippy `modeling_bert_dst.py`): an encoder of the dialogue context (previous system turn,
[sep], current user turn) and, per slot, a gate classifier (none / dontcare / value / refer), a value
classifier over the slot's training values, and a refer classifier over the other slots.

Departures from TripPy: the encoder is small and trained from scratch (token + position + segment
embeddings, two residual 1-D convolutions) instead of BERT/RoBERTa; each slot reads the sequence
through its own attention query instead of the [CLS] vector plus span logits; values are classified,
not extracted as spans; a value's score adds the similarity of the slot's pooled context with the
mean embedding of the value's tokens (`value_tokens`), so values seen a few times are still found.
`DSTTransformer` (optional) swaps the encoder for a pretrained Hugging Face one.
Padded value/refer entries get a large negative logit (never predicted, ~0 probability).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from noisybench.errors import ConfigError
from noisybench.schema import PositiveInt, Probability

MASKED = -1e4  # logit of padded value / self-refer entries: finite (no NaN in any loss), p ~ 0


class DSTOutput(NamedTuple):
    gate: torch.Tensor  # [B, S, G]
    value: torch.Tensor  # [B, S, Vmax]
    refer: torch.Tensor  # [B, S, S]


class SlotHeads(nn.Module):
    """Per-slot attention pooling and per-slot gate / value / refer classifiers."""

    def __init__(self, dim: int, num_slots: int, num_values: list[int], num_gates: int, dropout: float,
                 value_embedding: nn.Module | None = None, value_tokens: list | None = None) -> None:
        super().__init__()
        S, V = num_slots, max(max(num_values), 1)
        # two attention queries per slot: one for the gate and refer decisions (is the slot
        # mentioned, and how), one for the value (where is it)
        self.query = nn.Parameter(torch.randn(2, S, dim) / math.sqrt(dim))
        self.mix = nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(dropout)
        self.gate_w = nn.Parameter(torch.randn(S, dim, num_gates) / math.sqrt(dim))
        self.gate_b = nn.Parameter(torch.zeros(S, num_gates))
        self.value_w = nn.Parameter(torch.randn(S, dim, V) / math.sqrt(dim))
        self.value_b = nn.Parameter(torch.zeros(S, V))
        self.refer_w = nn.Parameter(torch.randn(S, dim, S) / math.sqrt(dim))
        self.refer_b = nn.Parameter(torch.zeros(S, S))
        value_mask = torch.arange(V)[None, :] >= torch.tensor(num_values)[:, None]
        self.register_buffer("value_mask", value_mask, persistent=False)
        self.register_buffer("refer_mask", torch.eye(S, dtype=torch.bool), persistent=False)
        # values scored by similarity with their own token embeddings (a pointer-like bias that
        # generalises across values with few examples each), plus the per-slot linear classifier
        self.value_embedding = value_embedding
        if value_embedding is not None:
            vt = torch.zeros(S, V, max((len(t) for vs in value_tokens for t in vs), default=1), dtype=torch.long)
            for s, vs in enumerate(value_tokens):
                for v, toks in enumerate(vs):
                    vt[s, v, :len(toks)] = torch.tensor(toks, dtype=torch.long)
            self.register_buffer("value_tokens", vt, persistent=False)
            self.value_proj = nn.Linear(dim, value_embedding.embedding_dim)

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> DSTOutput:
        scores = torch.einsum("bld,qsd->qbsl", h, self.query) / math.sqrt(h.shape[-1])
        att = scores.masked_fill(pad[None, :, None, :], MASKED).softmax(dim=-1)
        ctx = torch.einsum("qbsl,bld->qbsd", att, h)
        pooled = (h * (~pad)[..., None]).sum(1) / (~pad).sum(1, keepdim=True).clamp(min=1)
        r_gate = self.drop(torch.tanh(self.mix(torch.cat([ctx[0], pooled[:, None].expand_as(ctx[0])], dim=-1))))
        r = self.drop(ctx[1])
        gate = torch.einsum("bsd,sdg->bsg", r_gate, self.gate_w) + self.gate_b
        value = torch.einsum("bsd,sdv->bsv", r, self.value_w) + self.value_b
        if self.value_embedding is not None:
            tok = self.value_tokens
            emb = ((self.value_embedding(tok) * (tok > 0)[..., None]).sum(2)
                   / (tok > 0).sum(2, keepdim=True).clamp(min=1))
            # scaled dot product (as the attention scores above): with unit-variance embeddings the
            # unscaled score has a std of ~sqrt(dim) at initialisation (~8), which puts most targets'
            # probability below 1e-6 -- fatal for bounded losses (GCE/DAL), whose gradient is p_y^q
            # times CE's (and exactly 0 under their 1e-6 clamp)
            value = value + torch.einsum("bse,sve->bsv", self.value_proj(r), emb) / math.sqrt(emb.shape[-1])
        r = r_gate
        value = value.masked_fill(self.value_mask, MASKED)
        refer = (torch.einsum("bsd,sdt->bst", r, self.refer_w) + self.refer_b).masked_fill(self.refer_mask, MASKED)
        return DSTOutput(gate, value, refer)


class DSTConv(nn.Module):
    def __init__(self, vocab_size: int, max_len: int, num_slots: int, num_values: list[int], num_gates: int,
                 sep_id: int, dim: PositiveInt = 96, kernel: PositiveInt = 5, layers: PositiveInt = 2,
                 dropout: Probability = 0.1, itos: list[str] | None = None,
                 value_tokens: list | None = None) -> None:
        super().__init__()
        self.sep_id = int(sep_id)
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.seg = nn.Embedding(2, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=kernel // 2) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.heads = SlotHeads(dim, num_slots, num_values, num_gates, dropout,
                               self.tok if value_tokens is not None else None, value_tokens)

    def forward(self, x: torch.Tensor) -> DSTOutput:
        pad = x == 0
        seg = (torch.cumsum(x == self.sep_id, dim=1) > 0).long()  # 0: system turn, 1: user turn
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device)) + self.seg(seg)
        h = self.drop(h)
        for conv in self.convs:
            h = h + torch.relu(conv(h.transpose(1, 2))).transpose(1, 2)
        return self.heads(self.drop(h), pad)


class DSTTransformer(nn.Module):
    """A pretrained Hugging Face encoder (e.g. roberta-base; needs `transformers` and, practically, a
    GPU). The token ids are re-tokenised from the vocabulary by the encoder's own tokenizer."""

    def __init__(self, vocab_size: int, max_len: int, num_slots: int, num_values: list[int], num_gates: int,
                 sep_id: int, encoder: str = "roberta-base", dropout: Probability = 0.3, itos: list[str] | None = None,
                 value_tokens: list | None = None) -> None:
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ConfigError("model=dst_transformer needs the `transformers` package; pip install transformers "
                              "(or use model=dst)") from None
        self.encoder = AutoModel.from_pretrained(encoder)
        self.tokenizer = AutoTokenizer.from_pretrained(encoder)
        self.itos, self.sep_id, self.max_len = itos, int(sep_id), int(max_len)
        self.heads = SlotHeads(self.encoder.config.hidden_size, num_slots, num_values, num_gates, dropout)

    def forward(self, x: torch.Tensor) -> DSTOutput:
        texts = []
        for row in x.tolist():
            words = [self.itos[i] for i in row if i != 0]
            cut = words.index("[sep]") if "[sep]" in words else 0
            texts.append((" ".join(words[:cut]), " ".join(words[cut + 1:])))
        enc = self.tokenizer([u for _, u in texts], [s for s, _ in texts], padding=True, truncation=True,
                             max_length=self.max_len, return_tensors="pt").to(x.device)
        h = self.encoder(**enc).last_hidden_state
        return self.heads(h, enc["attention_mask"] == 0)
