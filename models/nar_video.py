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
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from vargen.nn import LabelEmbedder, RMSNorm, swiglu_hidden_dim
from vargen.nn.transformer import TransformerBlock
from .base import Generator
from vargen.registry import register_model
from vargen.training.recipes import LARP_AR

from .nar import NeighborHeads, Offsets


@dataclass
class NARVideoConfig:
    dim: int = 1024
    n_layer: int = 24
    n_head: int = 16
    n_kv_head: Optional[int] = None
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 101  # UCF-101
    class_dropout_prob: float = 0.1
    vocab_size: int = 8192  # LARP codebook
    latent_shape: Tuple[int, int, int] = (4, 16, 16)  # LARP's 1024 tokens as T x H x W

    @property
    def cls_token_num(self) -> int:
        return 1  # the official mask makes only sequence index 0 visible to every token

    @property
    def block_size(self) -> int:
        t, h, w = self.latent_shape
        return t * h * w


class NARVideo(NeighborHeads, Generator):
    config_class = NARVideoConfig
    default_sampler = "neighbor"
    samplers = ("neighbor",)
    is_discrete = True
    neighbor_offsets: Offsets = ((0, 0, 1), (0, 1, 0), (1, 0, 0))  # right (w), down (h), back (t)

    def __init__(self, config: NARVideoConfig):
        super().__init__(config)
        c = config
        if len(c.latent_shape) != 3 or min(c.latent_shape) < 1:
            raise ValueError(f"latent_shape must be (T, H, W) >= 1, got {c.latent_shape}")
        self.cls_embedding = LabelEmbedder(c.num_classes, c.dim, c.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.tok_dropout = nn.Dropout(c.token_dropout_p)
        ffn_hidden = swiglu_hidden_dim(c.dim, c.multiple_of, c.ffn_dim_multiplier)
        n_blocks = c.n_layer + 2  # attn_num_down = attn_num_back = 1 upstream
        self.layers = nn.ModuleList([
            TransformerBlock(c.dim, c.n_head, ffn_hidden, c.n_kv_head, c.norm_eps, c.attn_dropout_p,
                             c.resid_dropout_p, c.ffn_dropout_p, dp)
            for dp in torch.linspace(0, c.drop_path_rate, n_blocks, device="cpu").tolist()])
        for tag in "RBD":
            setattr(self, f"norm_{tag}", RMSNorm(c.dim, c.norm_eps))
            setattr(self, f"output_{tag}", nn.Linear(c.dim, c.vocab_size, bias=False))
        self.abs_pe = nn.Parameter(torch.randn(1, 1 + c.block_size, c.dim) * 0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=c.initializer_range)
        for tag in "RBD":  # upstream zero-inits all three output layers
            nn.init.zeros_(getattr(self, f"output_{tag}").weight)

    # ----------------------------------------------------------------------------- helpers
    @property
    def token_shape(self) -> tuple:
        """Shape of one sample's tokens: ``(T, H, W)`` ids."""
        return tuple(self.config.latent_shape)

    grid_shape = token_shape

    def head_modules(self) -> List[Tuple[nn.Module, nn.Linear]]:
        return [(self.norm_R, self.output_R), (self.norm_D, self.output_D), (self.norm_B, self.output_B)]

    def _embed_block(self, tokens: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                     positions: torch.Tensor) -> Tuple[torch.Tensor, None]:
        """Embeddings of ``[cls] + tokens`` plus ``abs_pe`` at sequence ``positions``; no RoPE."""
        parts = []
        if labels is not None:
            parts.append(self.cls_embedding(labels)[:, None])
        if tokens is not None:
            parts.append(self.tok_embeddings(tokens))
        h = self.tok_dropout(torch.cat(parts, dim=1))
        return h + self.abs_pe[:, positions], None

    # ----------------------------------------------------------------------------- cache
    def attention_layers(self) -> list:
        return [block.attention for block in self.layers]

    @property
    def max_cache_len(self) -> int:
        return 1 + self.config.block_size


# No released NAR video weights were found in any index; the presets carry architecture only.
register_model("nar-video-l", NARVideo, NARVideoConfig(n_layer=24, n_head=16, dim=1024), recipe=LARP_AR)   # llama-abs-L
register_model("nar-video-lp", NARVideo, NARVideoConfig(n_layer=30, n_head=20, dim=1280), recipe=LARP_AR)  # llama-abs-LP
register_model("nar-video-tiny", NARVideo, NARVideoConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, latent_shape=(2, 3, 4),
    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0), recipe=LARP_AR)
