"""Rotary position embeddings on interleaved (even, odd) channel pairs.

Tables have shape ``[positions, head_dim // 2, 2]`` holding (cos, sin). The 2D table is
LlamaGen's ``precompute_freqs_cis_2d`` exactly: half the pairs rotate with the row index, half
with the column index, and the ``cls_token_num`` condition rows are zeros (so the condition
token's q and k are zero vectors — a quirk the released checkpoints were trained with). The same
layout is EVA-02's ``VisionRotaryEmbeddingFast`` used by xAR.
"""
from __future__ import annotations

import torch


def _axis_freqs(n_pairs: int, dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2)[:n_pairs].float() / dim))


def rope_1d(length: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 0) -> torch.Tensor:
    freqs = torch.outer(torch.arange(length).float(), _axis_freqs(head_dim // 2, head_dim, base))
    table = torch.stack([freqs.cos(), freqs.sin()], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, head_dim // 2, 2), table])


def rope_2d(grid_size: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 0) -> torch.Tensor:
    """``[cls + grid_size**2, head_dim // 2, 2]`` in raster order (row-major)."""
    half = head_dim // 2
    freqs = torch.outer(torch.arange(grid_size).float(), _axis_freqs(half // 2, half, base))
    grid = torch.cat([freqs[:, None, :].expand(-1, grid_size, -1),
                      freqs[None, :, :].expand(grid_size, -1, -1)], dim=-1)
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def rope_3d(shape: tuple, head_dim: int, base: float = 10000.0, cls_token_num: int = 0) -> torch.Tensor:
    """``[cls + T*H*W, head_dim // 2, 2]`` for a (T, H, W) grid: pairs split 1/4 time, 3/8 each space axis."""
    t, h, w = shape
    pairs = head_dim // 2
    n_t = pairs // 4
    n_s = (pairs - n_t) // 2
    n_t = pairs - 2 * n_s
    axes = []
    for length, n in ((t, n_t), (h, n_s), (w, n_s)):
        axes.append(torch.outer(torch.arange(length).float(), _axis_freqs(n, 2 * n, base)))
    grid = torch.cat([axes[0][:, None, None].expand(t, h, w, -1),
                      axes[1][None, :, None].expand(t, h, w, -1),
                      axes[2][None, None, :].expand(t, h, w, -1)], dim=-1)
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 2)
    return torch.cat([torch.zeros(cls_token_num, pairs, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, S, H, D]`` by ``table [S, D/2, 2]`` (or per-row ``[B, S, D/2, 2]``) in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    table = table.reshape(-1, pairs.size(1), 1, pairs.size(3), 2)
    cos, sin = table[..., 0], table[..., 1]
    out = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin,
                       pairs[..., 1] * cos + pairs[..., 0] * sin], dim=-1)
    return out.flatten(3).type_as(x)
