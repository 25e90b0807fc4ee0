"""Plain raster decoding: one token per forward pass with a KV cache (LlamaGen's ``generate``).

1 prefill + (N - 1) decodes = N forward passes for N codes.
"""
from __future__ import annotations

import math

import torch

from vargen.seeding import SampleRNG, sample_from_probs

from .base import DiscreteSampler
from .capabilities import RasterDecoding


class RasterSampler(DiscreteSampler):
    name = "raster"
    capability = RasterDecoding

    def sample(self, model: RasterDecoding, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        n = math.prod(model.token_grid)
        cond = self.logits.labels(labels, model.null_class)
        model.setup_cache(cond.shape[0])
        tokens = torch.empty(labels.shape[0], n, dtype=torch.long, device=labels.device)
        logits = model.prefill(cond)  # [B', V]
        for i in range(n):
            probs = self.logits.probs(logits, i, n)
            tokens[:, i] = sample_from_probs(probs, rng.rand(1)[:, 0].to(probs.device))
            if i + 1 < n:
                pos = torch.tensor([i], device=labels.device)
                logits = model.decode(self.logits.double(tokens[:, i:i + 1]), pos)[:, -1]
        self.stats = {"forward_passes": n}
        return tokens.view(-1, *model.token_grid)
