"""NAR for class-conditional video: next-neighbour prediction over a T x H x W token grid.

Paper: "Neighboring Autoregressive Modeling for Efficient Visual Generation" (arXiv 2503.10696).
Official code: https://github.com/ThisisBillhe/NAR (``NAR-videos/models/larp_ar.py``, class
``LARP_AR``, configs ``llama-abs-*``; loop ``NAR-videos/ar/generate.py``).

Llama blocks (RMSNorm, SwiGLU, no RoPE) with a learned absolute position embedding ``abs_pe
[1, 1 + T*H*W, dim]`` added after the token dropout. Three heads read stacked blocks: the trunk
output (after block ``n_layer - 1``) -> ``norm_R`` / ``output_R`` predicts w + 1, block
``n_layer`` -> ``norm_D`` / ``output_D`` predicts h + 1, block ``n_layer + 1`` -> ``norm_B`` /
``output_B`` predicts t + 1 ("back"). Every token averages whichever heads reach it; attention is
bidirectional inside a plane t + h + w = c and causal across planes, so decoding takes
T + H + W - 2 passes (34 for LARP's 4 x 16 x 16 grid of 8192 codes). The training forward,
mixing and decoding hooks are :class:`vargen.models.nar.NeighborHeads`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn as nn

from vargen.nn import RMSNorm
from vargen.registry import register_model
from vargen.training.recipes import LARP_AR

from .llama import CodeEmbedding, LlamaConfig, LlamaTrunk
from .nar import NeighborHeads, Offsets


@dataclass
class NARVideoConfig(LlamaConfig):
    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    num_classes: int = 101  # UCF-101
    vocab_size: int = 8192  # LARP codebook
    position_embedding: str = "absolute"  # LARP_AR's "llama-abs-*"; no RoPE
    latent_shape: Tuple[int, int, int] = (4, 16, 16)  # LARP's 1024 tokens as T x H x W

    @property
    def token_grid(self) -> Tuple[int, int, int]:
        return tuple(self.latent_shape)


class NARVideo(CodeEmbedding, NeighborHeads, LlamaTrunk):
    """Llama trunk + extra blocks n_layer, n_layer + 1 + heads R (w), D (h), B (t)."""

    config_class = NARVideoConfig
    default_sampler = "neighbor"
    neighbor_offsets: Offsets = ((0, 0, 1), (0, 1, 0), (1, 0, 0))  # right (w), down (h), back (t)

    def __init__(self, config: NARVideoConfig):
        c = config
        if len(c.latent_shape) != 3 or min(c.latent_shape) < 1:
            raise ValueError(f"latent_shape must be (T, H, W) >= 1, got {c.latent_shape}")
        if c.cls_token_num != 1:  # the official mask makes only sequence index 0 visible to all
            raise ValueError(f"NAR video has one condition token, got cls_token_num={c.cls_token_num}")
        # attn_num_down = attn_num_back = 1 upstream: two extra blocks, rates over all of them.
        super().__init__(config, torch.linspace(0, c.drop_path_rate, c.n_layer + 2, device="cpu").tolist())
        for tag in "RBD":
            setattr(self, f"norm_{tag}", RMSNorm(c.dim, c.norm_eps))
            setattr(self, f"output_{tag}", nn.Linear(c.dim, c.vocab_size, bias=False))
        self.init_positions()
        # upstream zero-inits all three output layers
        self.initialize_weights(zero=[self.output_R, self.output_B, self.output_D])

    def head_modules(self) -> List[Tuple[nn.Module, nn.Linear]]:
        return [(self.norm_R, self.output_R), (self.norm_D, self.output_D), (self.norm_B, self.output_B)]


# No released NAR video weights were found in any index; the presets carry architecture only.
register_model("nar-video-l", NARVideo, NARVideoConfig(n_layer=24, n_head=16, dim=1024), recipe=LARP_AR)   # llama-abs-L
register_model("nar-video-lp", NARVideo, NARVideoConfig(n_layer=30, n_head=20, dim=1280), recipe=LARP_AR)  # llama-abs-LP
register_model("nar-video-tiny", NARVideo, NARVideoConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, latent_shape=(2, 3, 4),
    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0), recipe=LARP_AR)
