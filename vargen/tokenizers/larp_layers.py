"""LARP's building blocks, as the official ``models/embed.py``, ``models/transformer.py`` and
``models/bottleneck.py`` define them: the frozen MAE-style 1-D and 3-D sin-cos tables, the 3-D patch
embedding, the joint ViT that runs over [context; queries] and returns the queries, the
l2-normalised stochastic quantiser (softmax of cosine similarity / temperature) and the output
layer. Key names are the official ones; :mod:`vargen.tokenizers.larp` assembles them into the
tokenizer, loads the release and registers the models.
"""
from __future__ import annotations

from functools import partial
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.models.vision_transformer import Block


# ----------------------------------------------------------------------------- sin-cos tables
def sincos_1d(dim: int, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """MAE's 1-D table ``[M, dim]``: sines then cosines of ``pos / base ** (2i / dim)`` (float64)."""
    omega = 1.0 / base ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double().reshape(-1, 1) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim: int, frames: int, side: int) -> torch.Tensor:
    """LARP's 3-D table ``[frames * side * side, dim]`` in (t, h, w) order.

    MAE's 2-D table (first half of the channels from the w coordinate, second half from h, as
    its ``meshgrid(w, h)``) plus a full-width 1-D table of the frame index.
    """
    h, w = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    spatial = torch.cat([sincos_1d(dim // 2, w), sincos_1d(dim // 2, h)], dim=1)  # [side^2, dim]
    temporal = sincos_1d(dim, torch.arange(frames))  # [frames, dim]
    return (temporal[:, None] + spatial[None]).reshape(-1, dim).float()


# ----------------------------------------------------------------------------- layers
class PatchEmbed3D(nn.Module):
    """Non-overlapping ``pt x p x p`` patches -> tokens ``[B, t*h*w, dim]`` (t-major)."""

    def __init__(self, in_channels: int, dim: int, temporal_patch: int, patch: int):
        super().__init__()
        size = (temporal_patch, patch, patch)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=size, stride=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b d t h w -> b (t h w) d")


class JointTransformer(nn.Module):
    """timm ViT blocks over ``[context; queries]``; returns the query positions.

    LARP's ``transformer_encoder_parallel``: pre-norm blocks, no qkv bias, MLP ratio 4, GELU.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, norm_eps: float):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio=4, qkv_bias=False, norm_layer=norm)
                                     for _ in range(depth)])

    def forward(self, context: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        h = torch.cat([context, queries], dim=1)  # [B, Nc + Nq, D]
        for block in self.blocks:
            h = block(h)
        return h[:, context.shape[1]:]  # [B, Nq, D]


class CosineQuantizer(nn.Module):
    """LARP's l2-normalised stochastic VQ: ids from ``softmax(cos(z, e) / temperature)``."""

    def __init__(self, codebook_size: int, dim: int, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"stochastic_temperature must be > 0, got {temperature} (the learnable "
                             f"temperature of the official code is not supported)")
        self.inv_temperature = 1.0 / temperature
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.kaiming_uniform_(self.embedding.weight)

    def codebook(self) -> torch.Tensor:  # [V, D], float32
        return F.normalize(self.embedding.weight.float(), dim=-1)

    def probs(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``z [B, N, D]`` -> (l2-normalised z, code probabilities ``[B, N, V]``), in float32."""
        with torch.autocast(z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            cos = torch.einsum("bnd,vd->bnv", z, self.codebook())
            return z, F.softmax(cos * self.inv_temperature, dim=-1)


class OutputLayer(nn.Module):
    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6)  # set explicitly upstream too
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm_final(x))
