"""A small 3D-conv VQ video tokenizer: clips ``[B, 3, T, H, W]`` <-> a true ``t x h x w`` grid of ids.

The network follows VideoGPT's VQ-VAE (Yan et al., "VideoGPT: Video Generation using VQ-VAE and
Transformers", 2021; official code github.com/wilson1yan/VideoGPT, ``videogpt/vqvae.py``):
"same"-padded 3D convolutions with kernel 4 and stride 2 halve T, H and W per level, a kernel-3
conv, a stack of bottleneck residual blocks, 1x1x1 ``pre_vq_conv`` / ``post_vq_conv`` around the
quantiser, and the mirror image in the decoder (residual stack, then stride-2 kernel-4
transposed convs). MAGVIT (Yu et al., CVPR 2023) tokenises clips the same way, with a 3D-conv
encoder/decoder onto a ``T/4 x H/ds x W/ds`` grid. Differences from VideoGPT, chosen for a small
model trained on a CPU:

- the quantiser is LlamaGen's l2-normalised codebook (:class:`vargen.tokenizers.vq.VectorQuantizer`,
  codebook + ``beta`` x commitment losses, as the image VQ) instead of VideoGPT's EMA codebook;
- GroupNorm + SiLU in the residual blocks instead of BatchNorm + ReLU (no train/eval gap at the
  small batches a CPU affords) and no axial attention in them;
- plain l2 reconstruction (VideoGPT divides its MSE by the data variance 0.06).

16 x 32 x 32 Moving-MNIST clips -> 4 x 8 x 8 = 256 ids (``video-vq-mnist``), which NAR's video
model decodes in T + H + W - 2 = 18 passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen import checks
from vargen.registry import Weights, register_model
from vargen.tokenizers.base import Tokenizer
from vargen.tokenizers.vq import VectorQuantizer, VQTokenizer


@dataclass
class VideoVQConfig:
    """Field names of the quantiser are :class:`~vargen.tokenizers.vq.VQConfig`'s (it reads them)."""

    codebook_size: int = 256
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    entropy_temperature: float = 0.01
    hidden: int = 64                          # VideoGPT ``n_hiddens``
    num_res_blocks: int = 2                   # VideoGPT ``n_res_layers``, in encoder and decoder
    downsample: Tuple[int, int, int] = (4, 4, 4)  # (T, H, W) input pixels per token, powers of 2
    norm_groups: int = 8


def _check_downsample(downsample: Sequence[int]) -> None:
    if len(downsample) != 3 or any(d < 1 or d & (d - 1) for d in downsample):
        raise ValueError(f"downsample must be three powers of 2 (T, H, W), got {tuple(downsample)}")


def _same_padding(kernel: int, strides: Sequence[int]) -> Tuple[int, ...]:
    """``F.pad`` tuple (W first) making a 3D conv's output size input / stride, as VideoGPT's
    SamePadConv3d: ``kernel - stride`` per dimension in total, the odd pixel in front."""
    pads: Tuple[int, ...] = ()
    for s in reversed(strides):
        total = kernel - s
        pads += (total // 2 + total % 2, total // 2)
    return pads


class SamePadConv3d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: Tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.pad = _same_padding(kernel, stride)
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Cin, T, H, W] -> [B, Cout, T/s, H/s, W/s]
        return self.conv(F.pad(x, self.pad))


class SamePadConvTranspose3d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: Tuple[int, int, int]):
        super().__init__()
        self.pad = _same_padding(kernel, stride)
        self.convt = nn.ConvTranspose3d(cin, cout, kernel, stride=stride, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Cin, t, h, w] -> [B, Cout, t*s, h*s, w*s]
        return self.convt(F.pad(x, self.pad))


class ResBlock3d(nn.Module):
    """VideoGPT's bottleneck residual block: norm-act-conv3 (to C/2), norm-act-conv1 (back to C)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = SamePadConv3d(channels, channels // 2, 3)
        self.norm2 = nn.GroupNorm(groups, channels // 2)
        self.conv2 = SamePadConv3d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, t, h, w] -> same
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


def _level_strides(downsample: Sequence[int]) -> list:
    """Per-level strides: each level halves the dimensions that still need downsampling."""
    times = [int(math.log2(d)) for d in downsample]
    return [tuple(2 if t > level else 1 for t in times) for level in range(max(times))]


class VideoEncoder(nn.Module):
    def __init__(self, c: VideoVQConfig):
        super().__init__()
        strides = _level_strides(c.downsample)
        self.convs = nn.ModuleList(SamePadConv3d(3 if i == 0 else c.hidden, c.hidden, 4, s)
                                   for i, s in enumerate(strides))
        self.conv_last = SamePadConv3d(c.hidden if strides else 3, c.hidden, 3)
        self.res = nn.ModuleList(ResBlock3d(c.hidden, c.norm_groups) for _ in range(c.num_res_blocks))
        self.norm_out = nn.GroupNorm(c.norm_groups, c.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, T, H, W] -> [B, C, t, h, w]
        for conv in self.convs:
            x = F.relu(conv(x))
        x = self.conv_last(x)
        for block in self.res:
            x = block(x)
        return F.silu(self.norm_out(x))


class VideoDecoder(nn.Module):
    def __init__(self, c: VideoVQConfig):
        super().__init__()
        strides = _level_strides(c.downsample)
        self.res = nn.ModuleList(ResBlock3d(c.hidden, c.norm_groups) for _ in range(c.num_res_blocks))
        self.norm_out = nn.GroupNorm(c.norm_groups, c.hidden)
        self.convts = nn.ModuleList(
            SamePadConvTranspose3d(c.hidden, 3 if i == len(strides) - 1 else c.hidden, 4, s)
            for i, s in enumerate(strides))
        self.conv_out = None if strides else SamePadConv3d(c.hidden, 3, 3)  # no upsampling at all

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, t, h, w] -> [B, 3, T, H, W]
        for block in self.res:
            x = block(x)
        x = F.silu(self.norm_out(x))
        for i, convt in enumerate(self.convts):
            x = convt(x)
            if i < len(self.convts) - 1:
                x = F.relu(x)
        return x if self.conv_out is None else self.conv_out(x)


VideoShape = Union[Tuple[int, int, int], Sequence[int], torch.Size]


class VideoVQTokenizer(Tokenizer):
    """Clips ``[B, 3, T, H, W]`` in [-1, 1] <-> ids ``[B, T/dt, H/ds, W/ds]`` (raster t, h, w)."""

    config_class = VideoVQConfig
    is_discrete = True
    # Held-out, in the trained model's card (vargen.training.heldout, vargen.eval.recon).
    card_metrics = ("psnr", "mse", "codes_used", "frame_accuracy")

    def __init__(self, config: VideoVQConfig):
        super().__init__(config)
        c = config
        _check_downsample(c.downsample)
        if c.hidden % 2 or c.hidden % c.norm_groups or (c.hidden // 2) % c.norm_groups:
            raise ValueError(f"hidden ({c.hidden}) and hidden / 2 must be divisible by "
                             f"norm_groups ({c.norm_groups})")
        self.encoder = VideoEncoder(c)
        self.decoder = VideoDecoder(c)
        self.pre_vq_conv = nn.Conv3d(c.hidden, c.codebook_embed_dim, 1)
        self.post_vq_conv = nn.Conv3d(c.codebook_embed_dim, c.hidden, 1)
        self.quantize = VectorQuantizer(c)
        self.temporal_downsample, self.downsample = c.downsample[0], c.downsample[1]

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def token_grid(self, video_shape: VideoShape) -> Tuple[int, int, int]:
        """``(T, H, W)`` (or a full ``[B, C, T, H, W]`` shape) -> the id grid ``(t, h, w)``."""
        shape = tuple(int(s) for s in video_shape)
        if len(shape) not in (3, 5):
            raise ValueError(f"token_grid takes (T, H, W) or a [B, C, T, H, W] shape, got {shape}")
        sizes, ds = shape[-3:], self.config.downsample
        if any(s % d for s, d in zip(sizes, ds)) or min(sizes) < 1:
            raise ValueError(f"{type(self).__name__} needs frames, height and width divisible by "
                             f"{ds}, got T x H x W = {sizes[0]} x {sizes[1]} x {sizes[2]}")
        return tuple(s // d for s, d in zip(sizes, ds))

    def check_videos(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` checked (float ``[B, 3, T, H, W]`` in [-1, 1], no NaN, sizes divisible by the
        downsampling) and cast to the weight dtype."""
        checks.pixels("videos", x)
        if x.dim() != 5 or x.shape[1] != 3:
            hint = " (one clip: add a batch dimension with x[None])" if x.dim() == 4 else ""
            raise ValueError(f"videos must be [B, 3, T, H, W], got {tuple(x.shape)}{hint}")
        self.token_grid(x.shape)
        return x.to(self.weight_dtype)

    def check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(ids) or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"code ids must be an integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
        if ids.dim() != 4:
            raise ValueError(f"code ids must be [B, t, h, w], got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"code ids must lie in [0, {self.vocab_size}), got range "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.long()

    def _quantize(self, z: torch.Tensor):
        """``z [B, D, t, h, w]`` -> the quantiser's ``(z, codes, ids [B, t, h, w], -dist)``; the
        image quantiser runs on the frames of the latent grid folded into the batch."""
        b, d, t, h, w = z.shape
        z_flat, codes, ids, affinity = self.quantize(z.transpose(1, 2).reshape(b * t, d, h, w))
        return z_flat, codes, ids.view(b, t, h, w), affinity  # rows of z_flat in (b, t, h, w) order

    def _latents(self, videos: torch.Tensor) -> torch.Tensor:
        return self.pre_vq_conv(self.encoder(self.check_videos(videos)))  # [B, D, t, h, w]

    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, T, H, W]`` in [-1, 1] -> ids ``[B, T/dt, H/ds, W/ds]`` (long)."""
        return self._quantize(self._latents(videos))[2]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors ``[B, D, t, h, w]`` -> pixels ``[B, 3, T, H, W]``."""
        return self.decoder(self.post_vq_conv(codes))

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, t, h, w]`` -> pixels ``[B, 3, T, H, W]`` (about [-1, 1]; not clamped)."""
        codes = self.quantize.codebook()[self.check_ids(ids)]  # [B, t, h, w, D]
        return self.decode_codes(codes.permute(0, 4, 1, 2, 3).to(self.weight_dtype))

    def _reconstruct(self, videos: torch.Tensor):
        """``(recon, z [N, D], codes [N, D], ids [B, t, h, w], -dist)``, as VQTokenizer's."""
        z = self._latents(videos)
        b, d, t, h, w = z.shape
        z_flat, codes, ids, affinity = self._quantize(z)
        quantized = z_flat + (codes - z_flat).detach()  # straight-through, [N, D]
        recon = self.decode_codes(quantized.view(b, t, h, w, d).permute(0, 4, 1, 2, 3))
        return recon, z_flat, codes, ids, affinity

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """Pixels -> reconstruction through the quantiser (straight-through gradients)."""
        return self._reconstruct(videos)[0]

    def training_loss(self, videos: torch.Tensor, labels: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``(loss, logs)``: the image VQ's objective (l2 reconstruction + codebook + beta *
        commitment, + entropy when configured, codebook usage logged in training mode) on clips;
        ``labels`` are ignored. The objective is :class:`VQTokenizer`'s own code, run on this
        model's ``_reconstruct`` (same outputs, with the time axis folded into the rows)."""
        return VQTokenizer.loss(self, videos)


# Tests: 16 x 16 x 16 clips -> 4 x 4 x 4 ids out of 32.
VIDEO_VQ_TINY = VideoVQConfig(codebook_size=32, codebook_embed_dim=4, hidden=16, num_res_blocks=1,
                              norm_groups=4)
register_model("video-vq-tiny", VideoVQTokenizer, VIDEO_VQ_TINY)
# Shipped: 16 x 32 x 32 Moving-MNIST clips -> 4 x 8 x 8 ids out of 256 (nar-video-mnist, raster-video-mnist).
register_model("video-vq-mnist", VideoVQTokenizer, VideoVQConfig(
    codebook_size=256, codebook_embed_dim=8, hidden=64, num_res_blocks=2),
    weights=Weights.shipped("video-vq-mnist", "d5bb0e35a34cb445fa1fe9cd40550bc0cd35a9b7a3c8b18e97db5bd4250e30b4"))
