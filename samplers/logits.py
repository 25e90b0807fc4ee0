"""Logits processing shared by every discrete sampler: CFG (constant / linear schedule, LlamaGen's
``cfg_interval``), temperature, top-k, top-p (HF-style filtering, as LlamaGen).

With CFG the generator runs on a doubled batch ``[cond; uncond]`` (null class in the second
half) and the logits are combined as ``uncond + (cond - uncond) * scale``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CFG_SCHEDULES = ("constant", "linear")


@dataclass
class LogitsProcessor:
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_interval: int = -1  # LlamaGen: tokens 0..cfg_interval+1 are guided, later ones not (-1: all)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {self.cfg_schedule!r}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.temperature < 0:
            raise ValueError("top_k and temperature must be >= 0")

    @property
    def uses_cfg(self) -> bool:
        """Whether the generator must run on a doubled [cond; uncond] batch."""
        return self.cfg_scale != 1.0

    def guidance(self, done: int, total: int) -> float:
        """CFG scale for the token (or AR step) with index ``done`` of ``total``."""
        if 0 <= self.cfg_interval and done > self.cfg_interval + 1:
            # LlamaGen's generate: the prefill's token and decode steps i <= cfg_interval are guided.
            return 1.0
        if self.cfg_schedule == "linear" and total > 1:
            return 1.0 + (self.cfg_scale - 1.0) * done / max(total - 1, 1)
        return self.cfg_scale

    def combine(self, logits: torch.Tensor, done=0, total: int = 1) -> torch.Tensor:
        """``[2B, ...]`` -> ``[B, ...]`` guided logits (identity without CFG).

        ``done`` is an int, or a tensor ``[B, ...]`` (logits' shape without V) when rows are at
        different steps, as in the windows of speculative samplers.
        """
        if not self.uses_cfg:
            return logits
        cond, uncond = logits.chunk(2, dim=0)
        if torch.is_tensor(done):
            scale = torch.tensor([self.guidance(d, total) for d in done.flatten().tolist()],
                                 dtype=cond.dtype, device=cond.device).view(*done.shape, 1)
            return torch.where(scale == 1.0, cond, uncond + (cond - uncond) * scale)
        scale = self.guidance(done, total)
        return cond if scale == 1.0 else uncond + (cond - uncond) * scale

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature, then top-k and top-p filtering (removed entries set to -inf)."""
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

    def probs(self, logits: torch.Tensor, done: int = 0, total: int = 1) -> torch.Tensor:
        """Guided, filtered sampling distribution ``[B, ..., V]``."""
        return self.filter(self.combine(logits, done, total)).softmax(-1)


def cfg_labels(labels: torch.Tensor, null_class: int) -> torch.Tensor:
    """``[B]`` -> ``[2B]``: conditional labels followed by the null class."""
    return torch.cat([labels, torch.full_like(labels, null_class)])
