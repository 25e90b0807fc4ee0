"""What every sampler shares: one call signature for all models, and forward-pass counting.

``sampler(model, labels, rng) -> tokens`` where ``tokens`` is ``[B, h, w]`` ids (discrete
generators) or ``[B, C, h, w]`` latents (continuous ones), and ``sampler.stats`` afterwards
holds at least ``forward_passes`` (generator calls, a CFG-doubled batch counting once).
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List

import torch

from vargen.seeding import SampleRNG

from .logits import LogitsProcessor


class Sampler:
    name = "base"

    def __init__(self) -> None:
        self.stats: Dict[str, Any] = {}

    def __call__(self, model: torch.nn.Module, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
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

    def check_labels(self, model: torch.nn.Module, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        """Check that this sampler can drive ``model`` and that ``labels``/``rng`` fit; ``[B]`` long."""
        supported = getattr(model, "samplers", None)  # None: a duck-typed model (e.g. in tests)
        if supported is not None and self.name not in supported:
            raise TypeError(f"the {self.name!r} sampler cannot drive {type(model).__name__}; "
                            f"it supports {list(supported)}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
            # Never truncate float ids or flatten a 2-D batch: either is a caller's mistake.
            raise ValueError(f"class_labels must be integer class ids of shape [B], got dtype "
                             f"{labels.dtype} shape {tuple(labels.shape)}")
        model.cls_embedding.check(labels, allow_null=False)
        if len(rng) != labels.shape[0]:
            raise ValueError(f"{len(rng)} per-sample generators for {labels.shape[0]} labels")
        return labels.long()


class DiscreteSampler(Sampler):
    """A sampler over token ids: holds the shared logits processing (CFG, temperature, top-k/p)."""

    def __init__(self, cfg_scale: float = 1.0, cfg_schedule: str = "constant", cfg_interval: int = -1,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        super().__init__()
        self.logits = LogitsProcessor(cfg_scale, cfg_schedule, cfg_interval, temperature, top_k, top_p)
