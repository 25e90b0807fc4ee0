"""Per-sample randomness: sample ``i`` of a run draws all its noise from a generator seeded by
``(seed, i)``, so an image does not depend on batch size, device count or resume point.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence, Union

import torch

from vargen import checks

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, index: int) -> int:
    """SplitMix64 of (seed, index): distinct, well-mixed 63-bit seeds for every pair."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class SampleRNG:
    """One ``torch.Generator`` per sample; draws are stacked along a leading batch dimension.

    Each sample's stream advances only with its own draws, so a sample consumes the same random
    numbers whether it is generated alone or in a batch.
    """

    def __init__(self, seed: int, indices: Union[int, Sequence[int], torch.Tensor],
                 device: Union[str, torch.device] = "cpu"):
        if isinstance(indices, int):
            indices = range(indices)
        self.seed = checks.seed(seed)
        self.indices: List[int] = [int(i) for i in indices]
        self.device = torch.device(device)
        self.generators = []
        for i in self.indices:
            g = torch.Generator(device=self.device)
            g.manual_seed(sample_seed(seed, i))
            self.generators.append(g)

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], device: Union[str, torch.device] = "cpu") -> "SampleRNG":
        """One generator per sample seeded with ``seeds[i]`` itself (seeds drawn from a caller's
        per-sample ``torch.Generator`` list, diffusers-style)."""
        rng = cls(0, [], device)
        rng.seed, rng.indices = None, list(range(len(seeds)))
        rng.generators = [torch.Generator(device=rng.device).manual_seed(int(s)) for s in seeds]
        return rng

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, rows: Iterable[int]) -> "SampleRNG":
        """A view sharing the generators of ``rows`` (used by per-sample loops)."""
        view = SampleRNG.__new__(SampleRNG)
        rows = list(rows)
        view.seed, view.device = self.seed, self.device
        view.indices = [self.indices[r] for r in rows]
        view.generators = [self.generators[r] for r in rows]
        return view

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) of shape ``[B, *shape]``."""
        return torch.stack([torch.rand(shape, generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal of shape ``[B, *shape]``."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return torch.stack([torch.randint(high, shape, generator=g, device=self.device)
                            for g in self.generators])


def sample_from_probs(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling, vectorised: ``probs [..., V]``, ``uniform [...]`` -> ids ``[...]``.

    Equivalent in distribution to ``torch.multinomial`` but driven by the caller's per-sample
    uniforms, so no Python loop over tokens is needed.
    """
    cdf = probs.cumsum(-1, dtype=torch.float64)  # each term cast to float64 first, as .double().cumsum
    target = uniform.double().unsqueeze(-1) * cdf[..., -1:]
    ids = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return ids.clamp_(max=probs.shape[-1] - 1)
