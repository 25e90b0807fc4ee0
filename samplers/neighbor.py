"""NAR's next-neighbour decoding: one forward pass per Manhattan diagonal (plane for video).

Paper: "Neighboring Autoregressive Modeling for Efficient Visual Generation" (arXiv 2503.10696);
official loops: ``NAR-images/autoregressive/models/generate.py`` and ``NAR-videos/ar/generate.py``
of https://github.com/ThisisBillhe/NAR.

Step 0 feeds the condition and emits the origin token; step c feeds every token of diagonal
c - 1 as one block (at its raster positions, all of it visible to itself) and emits diagonal c.
That is 2n - 1 passes for an n x n grid and T + H + W - 2 for a T x H x W video grid (or
T * (H + W - 1) in the video model's ``decode_order="frame"``, whose time head reads a token a
frame back: the loop keeps every fed input's guided features, a small fraction of the KV cache).

Each emitted token averages the logits of the heads that reach it (right / below, plus time for
video). Heads and CFG are both linear in the normalised features, so this loop combines
``uncond + s * (cond - uncond)`` and the head average on the features and projects once per
target token, on B rows: the same logits as the official order (average, then CFG on logits)
for a fraction of the 16384-way matmuls. Sampling is vectorised: one uniform per emitted token
per sample from that sample's generator, in raster order within a diagonal.
"""
from __future__ import annotations

from typing import Callable

import torch

from vargen.seeding import SampleRNG, sample_from_probs

from .base import DiscreteSampler
from .capabilities import NeighborDecoding

# choose(logits [B, M, V] guided, step index) -> ids [B, M]
Chooser = Callable[[torch.Tensor, int], torch.Tensor]


class NeighborSampler(DiscreteSampler):
    name = "neighbor"
    capability = NeighborDecoding

    def sample(self, model: NeighborDecoding, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        """Sample ``[B, *model.token_grid]`` ids for class ``labels [B]``."""
        def choose(logits: torch.Tensor, step: int) -> torch.Tensor:
            probs = self.logits.filter(logits).softmax(-1)
            uniform = rng.rand(logits.shape[1]).to(probs.device)  # [B, M]
            return sample_from_probs(probs, uniform)

        tokens = self.run(model, labels, choose)
        return tokens.view(-1, *model.token_grid)

    @torch.no_grad()
    def teacher_forced_logits(self, model: NeighborDecoding, tokens: torch.Tensor,
                              labels: torch.Tensor) -> torch.Tensor:
        """Guided logits ``[B, N, V]`` (raster order) the cached loop produces when it is fed
        ``tokens`` instead of samples; for checking the loop against a full masked forward."""
        tokens = model.check_tokens(tokens)
        out = torch.empty(*tokens.shape, model.vocab_size, device=tokens.device)
        schedule = model.neighbor_schedule()

        def choose(logits: torch.Tensor, step: int) -> torch.Tensor:
            targets = schedule[step].targets.to(tokens.device)
            out[:, targets] = logits
            return tokens[:, targets]

        try:
            labels = torch.as_tensor(labels)  # class ids, or a text model's caption features
            self.run(model, (labels if labels.is_floating_point() else labels.long()).to(tokens.device), choose)
        finally:
            model.clear_cache()
        return out

    def run(self, model: NeighborDecoding, labels: torch.Tensor, choose: Chooser) -> torch.Tensor:
        """The diagonal loop; ``choose`` turns each step's guided logits into ids. ``[B, N]``."""
        device = model.device
        labels = labels.to(device)
        schedule = [tuple(t if t is None else t.to(device) for t in step)
                    for step in model.neighbor_schedule()]
        n = sum(step[1].numel() for step in schedule)
        heads = torch.arange(model.num_heads, device=device)
        cond = self.logits.labels(labels, model.null_class)
        tokens = torch.empty(labels.shape[0], n, dtype=torch.long, device=device)
        model.setup_cache(cond.shape[0])
        history = None  # guided per-head features of every fed input, by sequence index [B, 1 + N, K, dim]
        done = 0
        for i, (fed, targets, src, weight) in enumerate(schedule):
            if fed is None:
                feats = model.prefill_features(cond)  # [B', 1, K, dim]
            else:
                feats = model.decode_features(self.logits.double(tokens[:, fed]), fed)
            # CFG on the features: [2B, ...] -> [B, ...] (NAR's lerp)
            feats = self.logits.combine(feats, done, n, rule="lerp")  # [B, T, K, dim]
            if history is None:
                history = feats.new_zeros(feats.shape[0], 1 + n, *feats.shape[2:])
            rows = torch.zeros(1, dtype=torch.long, device=device) if fed is None else 1 + fed
            history[:, rows] = feats
            mixed = history[:, src, heads] * weight[None, :, :, None].to(feats.dtype)
            logits = model.neighbor_logits(mixed)  # [B, M, V]
            tokens[:, targets] = choose(logits, i)
            done += targets.numel()
        self.stats = {"forward_passes": len(schedule)}
        return tokens
