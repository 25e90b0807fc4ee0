"""Logits processing of every discrete sampler: guidance (:class:`Guidance`) followed by the
filtering LlamaGen applies (temperature, then HF-style top-k and top-p)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vargen import checks

from .guidance import CFG_SCHEDULES, Guidance, cfg_labels, full_precision  # noqa: F401  (re-exported)


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
            k = min(self.top_k, logits.shape[-1])
            kth = torch.topk(logits, k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            remove = cum > self.top_p
            remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses top_p
            remove[..., 0] = False
            logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
        return logits


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
