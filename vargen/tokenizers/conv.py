"""Convolutional encoder / decoder shared by the VQ and KL image tokenizers.

Both official tokenizers vargen reproduces descend from the taming-transformers / latent-diffusion
autoencoder (Esser et al., "Taming Transformers", CVPR 2021; Rombach et al., "High-Resolution Image
Synthesis with Latent Diffusion Models", CVPR 2022):

- LlamaGen's VQ (github.com/FoundationVision/LlamaGen, ``tokenizer/tokenizer_image/vq_model.py``),
- MAR's KL-16 VAE (github.com/LTH14/mar, ``models/vae.py``, adopted from LDM).

The two official files are near-copies of one network; they differ only in container names and
in where attention sits. Here the blocks exist once and a :class:`ConvLayout` names the containers,
so each tokenizer's ``state_dict`` keys equal its official checkpoint's keys:

=================  ==============================  =====================================
                   LlamaGen (``LLAMAGEN_LAYOUT``)  LDM / MAR (``LDM_LAYOUT``)
=================  ==============================  =====================================
encoder levels     ``encoder.conv_blocks.{i}``      ``encoder.down.{i}``
decoder levels     ``decoder.conv_blocks.{k}``,     ``decoder.up.{i}``, indexed by level
                   lowest resolution first          (``up.0`` is the full-resolution one)
res blocks         ``.res.{j}``                     ``.block.{j}``
middle             ``mid.{0,1,2}``                  ``mid.{block_1,attn_1,block_2}``
=================  ==============================  =====================================

Shared pieces: GroupNorm(32, eps 1e-6), swish, ResnetBlock (1x1 ``nin_shortcut`` when the width
changes), single-head AttnBlock with 1x1-conv q/k/v/proj_out, stride-2 conv downsampling with
(0, 1, 0, 1) padding, nearest-neighbour x2 upsampling followed by a 3x3 conv.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice plus a residual (1x1 ``nin_shortcut`` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                             if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Cin, H, W] -> [B, Cout, H, W]
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections (taming layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> same
        b, c, h, w = x.shape
        y = self.norm(x)
        # [B, C, H, W] -> [B, 1, HW, C]: one head of width C, scale C^-1/2 as in the official code
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv; the official code pads right/bottom only, so the grid halves exactly."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, H/2, W/2]
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, 2H, 2W]
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass(frozen=True)
class ConvLayout:
    """Container names of an official key tree (see the module docstring)."""

    encoder_levels: str
    decoder_levels: str
    blocks: str
    mid: Tuple[str, str, str]
    decoder_low_res_first: bool  # True: decoder list in run order; False: indexed by level


LLAMAGEN_LAYOUT = ConvLayout("conv_blocks", "conv_blocks", "res", ("0", "1", "2"), True)
LDM_LAYOUT = ConvLayout("down", "up", "block", ("block_1", "attn_1", "block_2"), False)


class Level(nn.Module):
    """One resolution: res blocks (each followed by attention when ``attn``), then resampling."""

    def __init__(self, blocks_name: str, in_channels: int, out_channels: int, num_blocks: int,
                 attn: bool, dropout: float, resample: Optional[str]):
        super().__init__()
        self._blocks_name = blocks_name
        blocks = []
        for _ in range(num_blocks):
            blocks.append(ResnetBlock(in_channels, out_channels, dropout))
            in_channels = out_channels
        self.add_module(blocks_name, nn.ModuleList(blocks))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks) if attn)
        self._resample_name = resample
        if resample == "downsample":
            self.downsample = Downsample(out_channels)
        elif resample == "upsample":
            self.upsample = Upsample(out_channels)

    @property
    def blocks(self) -> nn.ModuleList:
        return getattr(self, self._blocks_name)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if self._resample_name is not None:
            h = getattr(self, self._resample_name)(h)
        return h


class MidBlock(nn.Module):
    """ResnetBlock, AttnBlock, ResnetBlock under the layout's three names."""

    def __init__(self, names: Tuple[str, str, str], channels: int, dropout: float):
        super().__init__()
        self.add_module(names[0], ResnetBlock(channels, channels, dropout))
        self.add_module(names[1], AttnBlock(channels))
        self.add_module(names[2], ResnetBlock(channels, channels, dropout))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            h = module(h)
        return h


class Encoder(nn.Module):
    """Pixels ``[B, in, H, W]`` -> features ``[B, out, H/2^(L-1), W/2^(L-1)]`` for L = len(ch_mult).

    ``attn_levels`` lists the level indices (0 = full resolution) whose res blocks are each
    followed by an AttnBlock.
    """

    def __init__(self, layout: ConvLayout, in_channels: int, ch: int, ch_mult: Sequence[int],
                 num_res_blocks: int, attn_levels: Iterable[int], out_channels: int,
                 dropout: float = 0.0):
        super().__init__()
        attn_levels = set(attn_levels)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels: List[Level] = []
        block_in = ch
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            levels.append(Level(layout.blocks, block_in, ch * mult, num_res_blocks,
                                i in attn_levels, dropout, None if last else "downsample"))
            block_in = ch * mult
        self._levels_name = layout.encoder_levels
        self.add_module(layout.encoder_levels, nn.ModuleList(levels))
        self.mid = MidBlock(layout.mid, block_in, dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in getattr(self, self._levels_name):
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents ``[B, in, h, w]`` -> pixels ``[B, out, h*2^(L-1), w*2^(L-1)]``.

    ``num_res_blocks`` is per level (both official decoders use 3); ``attn_levels`` as in
    :class:`Encoder`, with 0 the full-resolution level.
    """

    def __init__(self, layout: ConvLayout, in_channels: int, ch: int, ch_mult: Sequence[int],
                 num_res_blocks: int, attn_levels: Iterable[int], out_channels: int,
                 dropout: float = 0.0):
        super().__init__()
        attn_levels = set(attn_levels)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(in_channels, block_in, 3, padding=1)
        self.mid = MidBlock(layout.mid, block_in, dropout)
        run_order = list(reversed(range(len(ch_mult))))  # lowest resolution first
        built = {}
        for i in run_order:
            built[i] = Level(layout.blocks, block_in, ch * ch_mult[i], num_res_blocks,
                             i in attn_levels, dropout, "upsample" if i != 0 else None)
            block_in = ch * ch_mult[i]
        index_order = run_order if layout.decoder_low_res_first else sorted(built)
        self._levels_name = layout.decoder_levels
        self._run = [index_order.index(i) for i in run_order]  # container positions, run order
        self.add_module(layout.decoder_levels, nn.ModuleList(built[i] for i in index_order))
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        levels = getattr(self, self._levels_name)
        for position in self._run:
            h = levels[position](h)
        return self.conv_out(F.silu(self.norm_out(h)))


def check_channels(ch: int, ch_mult: tuple) -> None:
    """Every level's width must suit GroupNorm(32), as in the official tokenizers."""
    if not ch_mult or any(ch * m % 32 for m in ch_mult):
        raise ValueError(f"ch * ch_mult must be non-empty multiples of 32 (GroupNorm(32)), "
                         f"got ch={ch}, ch_mult={ch_mult}")
