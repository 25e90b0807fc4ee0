"""MaskGIT-VQGAN: the discrete image tokenizer of RAR (1024 codes, 16x16 ids at 256 px).

Chang et al., "MaskGIT: Masked Generative Image Transformer" (CVPR 2022) tokenizer, as re-released
in PyTorch by bytedance/1d-tokenizer (``modeling/modules/maskgit_vqgan.py``, built by
``modeling/titok.py: PretrainedTokenizer``; weights ``fun-research/TiTok:
maskgit-vqgan-imagenet-f16-256.bin``), the tokenizer RAR is trained on
(:mod:`vargen.models.rar`). A VQGAN without non-local layers: ``conv_in``, five levels of two
residual blocks (widths 128 x (1, 1, 2, 2, 4)), 2x2 average pooling between levels, two middle
blocks, GroupNorm + swish + 1x1 ``conv_out`` to 256 channels; an un-normalised 1024 x 256
codebook looked up by squared L2 distance; the decoder mirrors it with nearest x2 upsampling +
3x3 conv.

Why not diffusers' blocks (as :mod:`vargen.tokenizers.conv`): three things differ from
``ResnetBlock2D`` / ``Downsample2D``, so those blocks do not hold this architecture. The residual
blocks' 3x3 convs have no bias; where the width changes the 1x1 ``nin_shortcut`` is applied to the
block's OUTPUT and the input is dropped (``h + nin_shortcut(h)``, official behaviour, checked
numerically); downsampling is average pooling, not a strided conv. The official ``Conv2dSame``
equals a plain conv with ``padding = k // 2`` at stride 1 and odd kernels, which is all it is used
with. State-dict keys are the official ones (``encoder.down.{i}.block.{j}.conv1``,
``decoder.up.{i}.upsample_conv``, ``quantize.embedding``, ...), so :func:`convert_maskgit_vqgan`
only checks the tree. The official code works on pixels in [0, 1] and clamps decoded images to
[0, 1]; here pixels are in [-1, 1] as every vargen tokenizer (mapped at the edges).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen.registry import Weights, register_model
from vargen.tokenizers.base import Tokenizer
from vargen.tokenizers.vq import VQTokenizer


@dataclass
class MaskGITVQConfig:
    """The official ``PretrainedTokenizer`` conf (hard-coded there)."""

    codebook_size: int = 1024
    z_channels: int = 256        # = codebook embedding dim
    hidden_channels: int = 128
    channel_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    commitment_cost: float = 0.25


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)  # = Conv2dSame at stride 1


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-6)
        self.conv1 = _conv(cin, cout, 3, bias=False)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(cout, cout, 3, bias=False)
        if cin != cout:  # applied to the block's output (official), so cout -> cout
            self.nin_shortcut = _conv(cout, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + (self.nin_shortcut(h) if hasattr(self, "nin_shortcut") else x)


class _Level(nn.Module):
    def __init__(self, cin: int, cout: int, c: MaskGITVQConfig):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(cin if j == 0 else cout, cout, c.dropout)
                                    for j in range(c.num_res_blocks)])


class Encoder(nn.Module):
    def __init__(self, c: MaskGITVQConfig):
        super().__init__()
        widths = [c.hidden_channels * m for m in c.channel_mult]
        self.conv_in = _conv(3, c.hidden_channels, 3, bias=False)
        self.down = nn.ModuleList([_Level(([c.hidden_channels] + widths)[i], widths[i], c)
                                   for i in range(len(widths))])
        self.mid = nn.ModuleList([ResnetBlock(widths[-1], widths[-1], c.dropout) for _ in range(c.num_res_blocks)])
        self.norm_out = nn.GroupNorm(32, widths[-1], eps=1e-6)
        self.conv_out = _conv(widths[-1], c.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, ch, H, W] (pixels in [0, 1])
        for i, level in enumerate(self.down):
            for block in level.block:
                h = block(h)
            if i != len(self.down) - 1:
                h = F.avg_pool2d(h, kernel_size=2, stride=2)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, z, H/ds, W/ds]


class Decoder(nn.Module):
    def __init__(self, c: MaskGITVQConfig):
        super().__init__()
        widths = [c.hidden_channels * m for m in c.channel_mult]
        self.conv_in = _conv(c.z_channels, widths[-1], 3)
        self.mid = nn.ModuleList([ResnetBlock(widths[-1], widths[-1], c.dropout) for _ in range(c.num_res_blocks)])
        # up.{i} works at level i's width (up.0 = full resolution), entered from level i + 1
        self.up = nn.ModuleList([_Level((widths + [widths[-1]])[i + 1], widths[i], c) for i in range(len(widths))])
        for i in range(1, len(widths)):
            self.up[i].upsample_conv = _conv(widths[i], widths[i], 3)
        self.norm_out = nn.GroupNorm(32, widths[0], eps=1e-6)
        self.conv_out = _conv(widths[0], 3, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for i in reversed(range(len(self.up))):
            for block in self.up[i].block:
                h = block(h)
            if i != 0:
                h = self.up[i].upsample_conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, 3, H, W] in about [0, 1]


class Quantizer(nn.Module):
    def __init__(self, c: MaskGITVQConfig):
        super().__init__()
        self.embedding = nn.Embedding(c.codebook_size, c.z_channels)
        nn.init.uniform_(self.embedding.weight, -1.0 / c.codebook_size, 1.0 / c.codebook_size)

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``z [B, D, h, w]`` -> (nearest codes ``[B, D, h, w]``, ids ``[B, h, w]``)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        book = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.t()  # official expansion
        ids = dist.argmin(1).view(b, h, w)
        return self.embedding(ids).permute(0, 3, 1, 2), ids


class MaskGITVQGAN(Tokenizer):
    """Images ``[B, 3, H, W]`` in [-1, 1] <-> ids ``[B, H/16, W/16]`` out of ``codebook_size``."""

    config_class = MaskGITVQConfig
    is_discrete = True

    def __init__(self, config: MaskGITVQConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = Quantizer(config)
        self.downsample = 2 ** (len(config.channel_mult) - 1)

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    check_ids = VQTokenizer.check_ids  # integer ids [B, h, w] in [0, vocab_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` in [-1, 1] -> ids ``[B, H/16, W/16]`` (long)."""
        return self.quantize(self.encoder((self.check_images(images) + 1) / 2))[1]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w]`` -> pixels ``[B, 3, 16h, 16w]`` in [-1, 1] (clamped, as the official [0, 1])."""
        codes = self.quantize.embedding(self.check_ids(ids)).permute(0, 3, 1, 2)
        return self.decoder(codes).clamp(0, 1) * 2 - 1

    def loss(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """L2 reconstruction + codebook + ``commitment_cost`` x commitment (the quantizer's
        ``return_loss``), straight-through; no perceptual / adversarial terms."""
        z = self.encoder((self.check_images(images) + 1) / 2)
        codes, _ = self.quantize(z)
        vq = F.mse_loss(codes, z.detach()) + self.config.commitment_cost * F.mse_loss(z, codes.detach())
        recon = self.decoder(z + (codes - z).detach()) * 2 - 1
        rec = F.mse_loss(recon, images)
        total = rec + vq
        return total, {"rec_loss": rec.item(), "vq_loss": vq.item()}


def convert_maskgit_vqgan(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official ``maskgit-vqgan-imagenet-f16-256.bin`` (a plain state dict of
    ``PretrainedTokenizer``) -> vargen: the same keys; the strict loader checks the tree."""
    return dict(state_dict)


register_model("maskgit-vqgan", MaskGITVQGAN, MaskGITVQConfig(), converter=convert_maskgit_vqgan,
               weights=Weights(hub_repo="fun-research/TiTok", filename="maskgit-vqgan-imagenet-f16-256.bin",
                               source="https://github.com/bytedance/1d-tokenizer"))
register_model("maskgit-vqgan-tiny", MaskGITVQGAN, MaskGITVQConfig(
    codebook_size=64, z_channels=32, hidden_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1),
    converter=convert_maskgit_vqgan)
