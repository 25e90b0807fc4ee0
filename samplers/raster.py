"""Plain raster decoding: one token per forward pass with a KV cache (LlamaGen's ``generate``).

1 prefill + (N - 1) decodes = N forward passes for N codes.
"""
from __future__ import annotations

import torch

from vargen.seeding import SampleRNG, sample_from_probs

from .base import DiscreteSampler
from .logits import cfg_labels


class RasterSampler(DiscreteSampler):
    name = "raster"

    @torch.no_grad()
    def __call__(self, model, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        labels = self.check_labels(model, labels, rng).to(model.output.weight.device)
        h, w = model.grid_shape
        n = h * w
        cond = cfg_labels(labels, model.null_class) if self.logits.uses_cfg else labels
        model.setup_cache(cond.shape[0])
        tokens = torch.empty(labels.shape[0], n, dtype=torch.long, device=labels.device)
        try:
            logits = model.prefill(cond)  # [B', V]
            for i in range(n):
                probs = self.logits.probs(logits, i, n)
                tokens[:, i] = sample_from_probs(probs, rng.rand(1)[:, 0].to(probs.device))
                if i + 1 < n:
                    step_tokens = tokens[:, i:i + 1]
                    if self.logits.uses_cfg:
                        step_tokens = step_tokens.repeat(2, 1)
                    pos = torch.tensor([i], device=labels.device)
                    logits = model.decode(step_tokens, pos)[:, -1]
        finally:
            model.clear_cache()
        self.stats = {"forward_passes": n}
        return tokens.view(-1, h, w)
