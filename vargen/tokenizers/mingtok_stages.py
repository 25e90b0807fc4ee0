"""MingTok's network: its config and the three stages it chains.

The low-level encoder (bidirectional ViT, cls token last, learned position table resized for other
grids), the causal semantic decoder (with the KV cache a continuous-token generator steps through)
and the pixel decoder, all built from one DINOv2-style pre-norm block. :mod:`vargen.tokenizers.mingtok`
assembles them into the tokenizer (encode / decode, the training objective), converts the released
checkpoint and registers the models; its docstring gives the paper and the official code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp, PatchEmbed, SwiGLUPacked

from vargen.nn import Attention


@dataclass
class MingTokConfig:
    """``mingtok/config/config_mingtok.json``; the official builders fix heads = width // 64."""

    image_size: int = 512        # size the position embedding is learned at
    patch_size: int = 32         # encoder patch = semantic token (one 32-d latent each)
    encoder_dim: int = 768
    encoder_depth: int = 12
    latent_dim: int = 32
    semantic_dim: int = 1024
    semantic_depth: int = 24
    pixel_dim: int = 1024
    pixel_depth: int = 24
    pixel_patch_size: int = 16
    head_dim: int = 64
    latent_mean: float = 1.46817409   # config "mean"
    latent_scale: float = 8.09449291  # config "scaling_factor"
    # Training only (the release has no training code; see MingTok.training_loss).
    mask_ratio: float = 0.0      # share of encoder patches replaced by a learned mask token
    mask_prob: float = 0.0       # share of training images that are masked
    semantic_target: Optional[str] = None  # frozen registered model whose features supervise
    semantic_target_dim: int = 0
    semantic_weight: float = 1.0


MINGTOK_VISION = MingTokConfig()
# 32 px -> 8x8 latents of 4 channels, a 16x16 pixel-decoder grid (tests, small experiments).
MINGTOK_TINY = MingTokConfig(image_size=32, patch_size=4, encoder_dim=64, encoder_depth=2,
                             latent_dim=4, semantic_dim=64, semantic_depth=2, pixel_dim=64,
                             pixel_depth=2, pixel_patch_size=2, head_dim=32)


def swiglu_ffn(dim: int) -> nn.Module:
    """DINOv2's ``SwiGLUFFNFused`` at mlp_ratio 4: hidden ``(int(8 dim / 3) + 7) // 8 * 8``."""
    hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
    return SwiGLUPacked(dim, 2 * hidden)


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``+ mlp(norm2(x))``."""

    def __init__(self, dim: int, head_dim: int, mlp: nn.Module, causal: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, dim // head_dim, qkv_bias=True, out_bias=True, causal=causal)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LowLevelEncoder(nn.Module):
    """Images ``[B, 3, H, W]`` -> raw latents ``[B, h*w + 1, latent_dim]`` (cls last)."""

    def __init__(self, c: MingTokConfig):
        super().__init__()
        self.patch_size, self.latent_dim = c.patch_size, c.latent_dim
        self.grid = c.image_size // c.patch_size
        self.patch_embed = PatchEmbed(c.image_size, c.patch_size, 3, c.encoder_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.encoder_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2 + 1, c.encoder_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.encoder_dim)) if c.mask_ratio > 0 else None
        self.blocks = nn.ModuleList(Block(c.encoder_dim, c.head_dim, swiglu_ffn(c.encoder_dim), causal=False)
                                    for _ in range(c.encoder_depth))
        self.out_norm = nn.LayerNorm(c.encoder_dim, eps=1e-6)
        self.out_act = nn.GELU()
        self.out_proj = nn.Linear(c.encoder_dim, c.latent_dim)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """``[1, h*w + 1, dim]``: the learned table, bicubic-resized for another grid as DINOv2
        (scale factors ``(h + 0.1) / M``, ``(w + 0.1) / M``), the cls row kept last."""
        m = self.grid
        if (h, w) == (m, m):
            return self.pos_embed
        table = self.pos_embed.float()
        patches = rearrange(table[:, :-1], "1 (m n) d -> 1 d m n", m=m)
        patches = F.interpolate(patches, scale_factor=((h + 0.1) / m, (w + 0.1) / m), mode="bicubic",
                                antialias=False)
        patches = rearrange(patches, "1 d h w -> 1 (h w) d")
        return torch.cat([patches, table[:, -1:]], dim=1).to(self.pos_embed.dtype)

    def forward(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # images: [B, 3, H, W]; mask: bool [B, h*w], True = replaced by the mask token
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = self.patch_embed(images)                                    # [B, h*w, dim]
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], dim=1)
        x = x + self.position_embedding(h, w)                           # [B, h*w + 1, dim]
        for block in self.blocks:
            x = block(x)
        shortcut = rearrange(x, "b n (c g) -> b n c g", c=self.latent_dim).mean(-1)
        return self.out_proj(self.out_act(self.out_norm(x))) + shortcut  # [B, h*w + 1, latent_dim]


class SemanticDecoder(nn.Module):
    """Normalised latents ``[B, n, latent_dim]`` -> semantic features ``[B, n, dim]``, causally.

    Without a cache a call is one causal pass over its ``n`` tokens. After
    ``setup_cache(batch, max_len)`` every call appends its tokens after the cached ones (one or
    several at a time) and returns their features, equal to the full causal pass; ``clear_cache()``
    ends incremental decoding. This is the step a continuous-token generator runs on each newly
    sampled latent.
    """

    def __init__(self, c: MingTokConfig):
        super().__init__()
        self.latent_dim, self.dim = c.latent_dim, c.semantic_dim
        self.latent_mean, self.latent_scale = c.latent_mean, c.latent_scale
        self.in_proj = nn.Linear(c.latent_dim, c.semantic_dim)
        self.blocks = nn.ModuleList(Block(c.semantic_dim, c.head_dim, swiglu_ffn(c.semantic_dim), causal=True)
                                    for _ in range(c.semantic_depth))
        self.norm = nn.LayerNorm(c.semantic_dim, eps=1e-6)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # latents: [B, n, latent_dim], normalised as MingTok.encode returns them
        if latents.dim() != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"semantic decoder takes latents [B, n, {self.latent_dim}], got {tuple(latents.shape)}")
        return self.forward_raw(latents * self.latent_scale + self.latent_mean)

    def forward_raw(self, z: torch.Tensor) -> torch.Tensor:
        # z: [B, n, latent_dim] as the encoder writes it (before normalisation)
        shortcut = z.repeat_interleave(self.dim // self.latent_dim, dim=-1)   # [B, n, dim]
        x = self.in_proj(z) + shortcut
        for block in self.blocks:
            x = block(x)
        return self.norm(x)                                                    # [B, n, dim]

    def setup_cache(self, batch_size: int, max_len: int, device: Optional[torch.device] = None,
                    dtype: Optional[torch.dtype] = None) -> None:
        """Start incremental decoding of up to ``max_len`` tokens per sequence."""
        weight = self.in_proj.weight
        for block in self.blocks:
            block.attn.setup_cache(batch_size, max_len, device or weight.device, dtype or weight.dtype)

    def clear_cache(self) -> None:
        for block in self.blocks:
            block.attn.cache = None

    @property
    def cache_length(self) -> Optional[int]:
        """Tokens decoded since ``setup_cache`` (None without a cache)."""
        cache = self.blocks[0].attn.cache if len(self.blocks) else None
        return None if cache is None else cache.length


class PixelDecoder(nn.Module):
    """Tokens ``[B, L, dim]`` (bidirectional, no position embedding) -> patches ``[B, L, p*p*3]``."""

    def __init__(self, c: MingTokConfig):
        super().__init__()
        self.patch_size = c.pixel_patch_size
        self.blocks = nn.ModuleList(Block(c.pixel_dim, c.head_dim, Mlp(c.pixel_dim, 4 * c.pixel_dim), causal=False)
                                    for _ in range(c.pixel_depth))
        self.norm = nn.LayerNorm(c.pixel_dim, eps=1e-6)
        self.head = nn.Linear(c.pixel_dim, c.pixel_patch_size ** 2 * 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
