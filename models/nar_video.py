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
mixing and decoding hooks are :class:`vargen.models.neighbors.NeighborHeads`.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn

from vargen import recipes
from vargen.nn import RMSNorm
from vargen.nn.llama import LlamaConfig, LlamaTrunk
from vargen.registry import Weights, register_model

from .base import Generator
from .neighbors import NeighborHeads, Offsets, decode_steps

NARVideoConfig = LlamaConfig  # LARP_AR's ModelArgs: latent_shape (T, H, W), absolute positions
# LARP_AR on UCF-101: 101 classes, LARP's 8192 codes as a 4 x 16 x 16 grid, "llama-abs-*" positions.
LARP_AR = dict(num_classes=101, vocab_size=8192, latent_shape=(4, 16, 16), position_embedding="absolute")


class NARVideo(NeighborHeads, Generator):
    """Llama trunk + extra blocks n_layer, n_layer + 1 + heads R (w), D (h), B (t)."""

    config_class = LlamaConfig
    default_sampler = "neighbor"
    neighbor_offsets: Offsets = ((0, 0, 1), (0, 1, 0), (1, 0, 0))  # right (w), down (h), back (t)

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        c = config
        if c.latent_shape is None or len(c.latent_shape) != 3 or min(c.latent_shape) < 1:
            raise ValueError(f"latent_shape must be (T, H, W) >= 1, got {c.latent_shape}")
        if c.cls_token_num != 1:  # the official mask makes only sequence index 0 visible to all
            raise ValueError(f"NAR video has one condition token, got cls_token_num={c.cls_token_num}")
        decode_steps(c.token_grid, c.decode_order)  # an unknown order fails here, naming the choices
        # attn_num_down = attn_num_back = 1 upstream: two extra blocks, rates over all of them.
        rates = torch.linspace(0, c.drop_path_rate, c.n_layer + 2, device="cpu").tolist()
        self.trunk = LlamaTrunk(self, c, c.token_grid, rates)
        for tag in "RBD":
            setattr(self, f"norm_{tag}", RMSNorm(c.dim, c.norm_eps))
            setattr(self, f"output_{tag}", nn.Linear(c.dim, c.vocab_size, bias=False))
        self.trunk.init_positions()
        # upstream zero-inits all three output layers
        self.trunk.init_weights(zero=[self.output_R, self.output_B, self.output_D])

    def head_modules(self) -> List[Tuple[nn.Module, nn.Linear]]:
        return [(self.norm_R, self.output_R), (self.norm_D, self.output_D), (self.norm_B, self.output_B)]


# No released NAR video weights were found in any index; the presets carry architecture only.
# UCF-101 pipelines (NAR Table 2): LARP's 1024 tokens in NAR's 4x16x16 order, T+H+W-2 = 34 passes,
# cfg 1.25 (paper and the NAR-videos README; top-k/top-p off, temperature 1):
# load_pipeline("nar-video-l", generator_weights=...).
_UCF = dict(tokenizer="larp-l-long", cfg_scale=1.25)
register_model("nar-video-l", NARVideo, LlamaConfig(n_layer=24, n_head=16, dim=1024, **LARP_AR),  # llama-abs-L
               recipe=recipes.LARP_AR, pipeline=_UCF)
register_model("nar-video-lp", NARVideo, LlamaConfig(n_layer=30, n_head=20, dim=1280, **LARP_AR),  # llama-abs-LP
               recipe=recipes.LARP_AR, pipeline=_UCF)
register_model("nar-video-tiny", NARVideo, LlamaConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, latent_shape=(2, 3, 4),
    position_embedding="absolute", token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0),
    recipe=recipes.LARP_AR)
# Shipped: Moving-MNIST on video-vq-mnist's 4 x 8 x 8 ids; the raster baseline (raster-video-mnist)
# runs the same six blocks per token (4 trunk + NAR's 2 head blocks). No dropout (cheaper on a CPU,
# better at this scale), LARP_AR's optimiser recipe, 2600 steps, cfg 3.0. ``nar-video-mnist``
# decodes frame by frame (60 passes; 87% of clips right at top-k 2), ``nar-video-mnist-diagonal``
# in the paper's planes (18 passes; 74% at top-k 4, its best): docs/video.md has the ablations.
MOVING_MNIST = dict(dim=128, n_head=4, multiple_of=64, vocab_size=256, num_classes=10, latent_shape=(4, 8, 8),
                    position_embedding="absolute", token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
register_model("nar-video-mnist", NARVideo, LlamaConfig(n_layer=4, decode_order="frame", **MOVING_MNIST),
               weights=Weights.shipped("nar-video-mnist", "3e7b0c83184aee8f616b035c3aa7c1f33ec2b41936508aa06490ed08f9779ed5"),
               recipe=recipes.LARP_AR, pipeline=dict(tokenizer="video-vq-mnist", cfg_scale=3.0, top_k=2))
register_model("nar-video-mnist-diagonal", NARVideo, LlamaConfig(n_layer=4, **MOVING_MNIST),
               weights=Weights.shipped("nar-video-mnist-diagonal",
                                       "8980eac1e171044d3f5ef01b5fc329ab7cbda8e46273fa69ed66ffcea7a333d6"),
               recipe=recipes.LARP_AR, pipeline=dict(tokenizer="video-vq-mnist", cfg_scale=3.0, top_k=4))
