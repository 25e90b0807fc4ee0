"""Classifier-free guidance, one component for the discrete and the flow samplers: the scale
schedule (constant, linear, or RAR's pow-cosine ``1 + (s - 1)(1 - cos(pi (i/n)^cfg_power)) / 2``
over AR steps; LlamaGen's ``cfg_interval``), batch doubling
``[cond; uncond]`` with the null class in the second half, and the cond/uncond combination.

Each family keeps its official rounding (a test of golden tokens holds them): LlamaGen's
``uncond + (cond - uncond) * s`` on logits (and on float64 velocities for xAR, where the same
expression is the official drift guidance), ``torch.lerp(uncond, cond, s)`` for NAR's features.
Guidance runs in float32 at least (float64 stays float64): a bf16 or fp16 generator's outputs are
upcast before cond and uncond are subtracted, where low precision would cancel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from vargen import checks

CFG_SCHEDULES = ("constant", "linear", "pow-cosine")
RULES = ("blend", "lerp")


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or as it is when already float32 / float64 (sampling math never runs in
    a half-precision generator's dtype)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@dataclass
class Guidance:
    # The options this component reads (its fields): they shape the distribution sampled, so a
    # sampler taking them declares them as target options (``Sampler.distribution_options``).
    OPTIONS = ("cfg_scale", "cfg_schedule", "cfg_interval", "cfg_power")

    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    cfg_interval: int = -1  # LlamaGen: tokens 0..cfg_interval+1 are guided, later ones not (-1: all)
    cfg_power: float = 1.0  # the pow-cosine schedule's exponent (RAR's guidance_scale_pow)

    def __post_init__(self):
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {self.cfg_schedule!r}")
        self.cfg_scale = checks.number("cfg_scale", self.cfg_scale, minimum=0)
        self.cfg_interval = checks.number("cfg_interval", self.cfg_interval, minimum=-1, integer=True)
        self.cfg_power = checks.number("cfg_power", self.cfg_power, minimum=0)

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
        if self.cfg_schedule == "pow-cosine":
            # RAR's generate (after MDT): token ``done`` of ``total``; 0 at the first, cfg_power 0 = constant
            ramp = (1 - math.cos(math.pi * (done / total) ** self.cfg_power)) / 2
            return 1.0 + (self.cfg_scale - 1.0) * ramp
        return self.cfg_scale

    def labels(self, labels: torch.Tensor, null_class: Union[int, torch.Tensor, None]) -> torch.Tensor:
        """The batch the generator runs on: ``[B, ...]``, or ``[2B, ...]`` with the null condition
        appended (:func:`cfg_labels`)."""
        return cfg_labels(labels, null_class) if self.uses_cfg else labels

    def double(self, x: torch.Tensor) -> torch.Tensor:
        """Rows fed to the generator: ``x`` twice along the batch under CFG."""
        return x.repeat(2, *([1] * (x.dim() - 1))) if self.uses_cfg else x

    @staticmethod
    def mix(out: torch.Tensor, scale, rule: str = "blend") -> torch.Tensor:
        """``[2B, ...]`` -> ``[B, ...]``: cond and uncond halves combined at ``scale``."""
        cond, uncond = full_precision(out).chunk(2, dim=0)
        if rule == "lerp":
            return torch.lerp(uncond, cond, scale)
        return uncond + (cond - uncond) * scale

    def combine(self, out: torch.Tensor, done=0, total: int = 1, rule: str = "blend") -> torch.Tensor:
        """Guided ``[B, ...]`` from ``[2B, ...]`` at step ``done`` of ``total`` (identity without
        CFG; the cond half where the scale is 1).

        ``done`` is an int, or a tensor ``[B, ...]`` (out's shape without the last dim) when rows
        are at different steps, as in the windows of speculative samplers. Float32 at least.
        """
        out = full_precision(out)
        if not self.uses_cfg:
            return out
        cond = out.chunk(2, dim=0)[0]
        if torch.is_tensor(done):
            scale = torch.tensor([self.guidance(d, total) for d in done.flatten().tolist()],
                                 dtype=cond.dtype, device=cond.device).view(*done.shape, 1)
            return torch.where(scale == 1.0, cond, self.mix(out, scale, rule))
        scale = self.guidance(done, total)
        return cond if scale == 1.0 else self.mix(out, scale, rule)


def cfg_labels(labels: torch.Tensor, null_class: Union[int, torch.Tensor, None]) -> torch.Tensor:
    """``[B, ...]`` -> ``[2B, ...]``: the conditions followed by the null one.

    Class ids ``[B]`` get the null class id; caption features ``[B, L, D]`` get the null caption
    ``null_class [L, D]`` (a text model's ``uncond_embedding``), keeping each caption's padding
    (its zero rows): the release masks the unconditional half with the conditional half's mask.
    A null per row ``[B, L, D]`` (negative prompts) is taken as it is, with its own padding.
    """
    if null_class is None:
        raise ValueError("classifier-free guidance (cfg_scale != 1) needs a null class, but this "
                         "generator has none: its cls_embedding.embedding_table holds only the "
                         "class rows (trained with class_dropout_prob=0, as the official "
                         "LabelEmbedder builds it); sample with cfg_scale=1")
    if torch.is_tensor(null_class):
        null = null_class.to(device=labels.device, dtype=labels.dtype).expand_as(labels)
        if null_class.dim() == labels.dim():
            return torch.cat([labels, null])
        return torch.cat([labels, torch.where(labels.ne(0).any(-1, keepdim=True), null, 0)])
    return torch.cat([labels, torch.full_like(labels, null_class)])
