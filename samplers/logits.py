"""Logits processing of every discrete sampler: guidance (:class:`Guidance`) followed by the
filtering LlamaGen applies (temperature, then HF-style top-k and top-p)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vargen import checks

from .guidance import CFG_SCHEDULES, Guidance, cfg_labels, full_precision  # noqa: F401  (re-exported)

_TIE_ROOM = 64  # candidates fetched past top-k for ties at the k-th value


@dataclass
class LogitsFilter:
    OPTIONS = ("temperature", "top_k", "top_p")  # its fields; target options as Guidance.OPTIONS

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        self.temperature = checks.number("temperature", self.temperature, minimum=0)
        self.top_k = checks.number("top_k", self.top_k, minimum=0, integer=True)
        self.top_p = checks.number("top_p", self.top_p, above=0, maximum=1)

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature, then top-k and top-p filtering (removed entries set to -inf), in float32
        at least: a bf16 generator's logits would tie and round in its own dtype."""
        logits = full_precision(logits)
        if self.temperature != 1.0:  # x / 1 is x: skip a pass over [B, n, V]
            logits = logits / max(self.temperature, 1e-5)
        if self.top_k > 0:
            vocab = logits.shape[-1]
            k = min(self.top_k, vocab)
            if self.top_p >= 1.0:
                kth = torch.topk(logits, k, dim=-1).values[..., -1:]
                return logits.masked_fill(logits < kth, float("-inf"))
            # top-p over the k candidates only (the rest are -inf already): VAR's top-k 900 of
            # 4096 no longer sorts the vocabulary. Ties at the k-th value stay in, so the
            # candidate list widens to the most ties of a row: one top-k with room for a few
            # (float32 logits from a bf16 network tie at the k-th value by up to ~13 in VAR-d16),
            # a second over the whole row only when a row fills that room.
            values, ids = torch.topk(logits, min(k + _TIE_ROOM, vocab), dim=-1)  # descending
            kth = values[..., k - 1:k]
            ties = (values >= kth).sum(-1)
            kept = int(ties.max()) if ties.numel() else k  # no rows: nothing to widen
            if kept == values.shape[-1] < vocab:  # the room is full: count the ties over the row
                kept = int((logits >= kth).sum(-1).max())
                values, ids = torch.topk(logits, kept, dim=-1)
            values, ids = values[..., :kept], ids[..., :kept]
            values = values.masked_fill(values < kth, float("-inf"))
        elif self.top_p < 1.0:
            values, ids = torch.sort(logits, descending=True, dim=-1)
        else:
            return logits
        # top-p on the descending candidates: the smallest prefix whose probability reaches top_p
        # (the token that crosses it is kept, and always the first)
        remove = values.softmax(-1).cumsum(-1) > self.top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        return torch.full_like(logits, float("-inf")).scatter_(-1, ids, values.masked_fill(remove, float("-inf")))


@dataclass
class LogitsProcessor(LogitsFilter, Guidance):
    """Guidance options (``cfg_*``) and filter options (``temperature``, ``top_k``, ``top_p``)."""

    OPTIONS = Guidance.OPTIONS + LogitsFilter.OPTIONS

    def __post_init__(self):
        Guidance.__post_init__(self)
        LogitsFilter.__post_init__(self)

    def probs(self, logits: torch.Tensor, done=0, total: int = 1) -> torch.Tensor:
        """Guided, filtered sampling distribution ``[B, ..., V]``."""
        return self.filter(self.combine(logits, done, total)).softmax(-1)
