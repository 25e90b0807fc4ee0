"""The sampler skeleton: one call signature for all models, the shared steps written once.

``sampler(model, labels, rng) -> tokens`` where ``tokens`` is ``[B, *token_grid]`` ids (discrete
generators) or ``[B, C, *token_grid]`` latents (continuous ones), and ``sampler.stats``
afterwards holds at least ``forward_passes`` (generator calls, a CFG-doubled batch counting
once). ``__call__`` checks that the model has the sampler's ``capability`` and that the labels
and generators fit, moves the labels to the model's device, runs :meth:`Sampler.sample` without
gradients, and clears the model's KV cache however sampling ends.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional

import torch

from vargen import checks
from vargen.seeding import SampleRNG

from .capabilities import Conditional, require
from .logits import LogitsProcessor


class Sampler:
    name = "base"
    capability: type = Conditional  # the protocol (samplers/capabilities.py) this sampler drives

    def __init__(self) -> None:
        self.stats: Dict[str, Any] = {}

    @torch.no_grad()
    def __call__(self, model: Any, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        labels = self.check_labels(model, labels, rng).to(model.device)
        try:
            return self.sample(model, labels, rng)
        finally:
            model.clear_cache()

    def sample(self, model: Any, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        """The loop: ``labels [B]`` (checked, on the model's device) -> tokens; sets ``stats``."""
        raise NotImplementedError

    @classmethod
    def option_names(cls) -> List[str]:
        """Keyword options the constructor takes, following ``**options`` up to the parents."""
        names: List[str] = []
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]
            names += [p.name for p in params if p.kind is not p.VAR_KEYWORD and p.name not in names]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    def check_labels(self, model: Any, labels: torch.Tensor, rng: SampleRNG,
                     capability: Optional[type] = None) -> torch.Tensor:
        """Check that this sampler can drive ``model`` and that ``labels``/``rng`` fit; ``[B]`` long."""
        require(model, capability or self.capability, self.name)
        # Never truncate float ids or flatten a 2-D batch: either is a caller's mistake.
        labels = checks.class_labels(labels, name="class_labels")
        model.check_labels(labels, allow_null=False)
        if len(rng) != labels.shape[0]:
            raise ValueError(f"{len(rng)} per-sample generators for {labels.shape[0]} labels")
        return labels.long()


class DiscreteSampler(Sampler):
    """A sampler over token ids: holds the shared logits processing (CFG, temperature, top-k/p)."""

    def __init__(self, cfg_scale: float = 1.0, cfg_schedule: str = "constant", cfg_interval: int = -1,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        super().__init__()
        self.logits = LogitsProcessor(cfg_scale, cfg_schedule, cfg_interval, temperature, top_k, top_p)
