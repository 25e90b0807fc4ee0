"""NAR's next-neighbour decoding: one forward pass per Manhattan diagonal (plane for video).

Paper: "Neighboring Autoregressive Modeling for Efficient Visual Generation" (arXiv 2503.10696);
official loops: ``NAR-images/autoregressive/models/generate.py`` and ``NAR-videos/ar/generate.py``
of https://github.com/ThisisBillhe/NAR.

Step 0 feeds the condition and emits the origin token; step c feeds every token of diagonal
c - 1 as one block (at its raster positions, all of it visible to itself) and emits diagonal c.
That is 2n - 1 passes for an n x n grid and T + H + W - 2 for a T x H x W video grid.

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
from .logits import cfg_labels

# choose(logits [B, M, V] guided, step index) -> ids [B, M]
Chooser = Callable[[torch.Tensor, int], torch.Tensor]


class NeighborSampler(DiscreteSampler):
    name = "neighbor"

    @torch.no_grad()
    def __call__(self, model, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        """Sample ``[B, *model.token_shape]`` ids for class ``labels [B]``."""
        labels = self.check_labels(model, labels, rng)

        def choose(logits: torch.Tensor, step: int) -> torch.Tensor:
            probs = self.logits.filter(logits).softmax(-1)
            uniform = rng.rand(logits.shape[1]).to(probs.device)  # [B, M]
            return sample_from_probs(probs, uniform)

        tokens = self.run(model, labels, choose)
        return tokens.view(-1, *model.token_shape)

    @torch.no_grad()
    def teacher_forced_logits(self, model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Guided logits ``[B, N, V]`` (raster order) the cached loop produces when it is fed
        ``tokens`` instead of samples; for checking the loop against a full masked forward."""
        tokens = model.check_tokens(tokens)
        out = torch.empty(*tokens.shape, model.vocab_size, device=tokens.device)
        schedule = model.neighbor_schedule()

        def choose(logits: torch.Tensor, step: int) -> torch.Tensor:
            targets = schedule[step].targets.to(tokens.device)
            out[:, targets] = logits
            return tokens[:, targets]

        self.run(model, torch.as_tensor(labels).long().to(tokens.device), choose)
        return out

    def run(self, model, labels: torch.Tensor, choose: Chooser) -> torch.Tensor:
        """The diagonal loop; ``choose`` turns each step's guided logits into ids. ``[B, N]``."""
        device = next(model.parameters()).device
        labels = labels.to(device)
        schedule = [tuple(t if t is None else t.to(device) for t in step)
                    for step in model.neighbor_schedule()]
        n = sum(step[1].numel() for step in schedule)
        heads = torch.arange(model.num_heads, device=device)
        cfg = self.logits.uses_cfg
        cond = cfg_labels(labels, model.null_class) if cfg else labels
        tokens = torch.empty(labels.shape[0], n, dtype=torch.long, device=device)
        model.setup_cache(cond.shape[0])
        try:
            done = 0
            for i, (fed, targets, src, weight) in enumerate(schedule):
                if fed is None:
                    feats = model.prefill_features(cond)  # [B', 1, K, dim]
                else:
                    block = tokens[:, fed]
                    feats = model.decode_features(block.repeat(2, 1) if cfg else block, fed)
                feats = self._guide(feats, done, n)  # [B, T, K, dim]
                mixed = feats[:, src, heads] * weight[None, :, :, None].to(feats.dtype)
                logits = model.neighbor_logits(mixed)  # [B, M, V]
                tokens[:, targets] = choose(logits, i)
                done += targets.numel()
        finally:
            model.clear_cache()
        self.stats = {"forward_passes": len(schedule)}
        return tokens

    def _guide(self, feats: torch.Tensor, done: int, total: int) -> torch.Tensor:
        """CFG on features: ``[2B, ...]`` -> ``[B, ...]`` (identity without CFG)."""
        if not self.logits.uses_cfg:
            return feats
        cond, uncond = feats.chunk(2, dim=0)
        scale = self.logits.guidance(done, total)
        return cond if scale == 1.0 else torch.lerp(uncond, cond, scale)
