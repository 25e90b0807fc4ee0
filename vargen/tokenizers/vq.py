"""LlamaGen's VQ image tokenizer (VQ-16 and VQ-8).

Sun et al., "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation" (2024),
official code github.com/FoundationVision/LlamaGen, ``tokenizer/tokenizer_image/vq_model.py``.

A taming-style conv encoder/decoder built from diffusers' VAE blocks (:mod:`vargen.tokenizers.conv`)
with attention at the lowest-resolution level of both, ``quant_conv`` z_channels -> 8, and a
16384 x 8 codebook looked up by cosine similarity (z and codes are l2-normalised, so the
squared-distance argmin picks the most similar code). The quantizer is vargen's: diffusers'
``VectorQuantizer`` does not normalise z, so it would train differently.

``state_dict`` keys are those of diffusers' ``VQModel`` (``encoder.down_blocks.*``,
``quantize.embedding.weight``, ...) plus the ``quantize.codebook_used`` buffer (the last 65536 code
ids seen in training, kept for the usage statistic). Official checkpoints (``vq_ds16_c2i.pt``,
``vq_ds8_c2i.pt`` on the Hub repo ``FoundationVision/LlamaGen``) store LlamaGen's key tree under
``["model"]``; :func:`convert_llamagen_vq` renames it, so load them with
``vargen.create_model("llamagen-vq16", pretrained=True)`` or ``pretrained="vq_ds16_c2i.pt"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vargen.registry import Weights, register_model
from vargen.tokenizers.base import Tokenizer
from vargen.tokenizers.conv import (LLAMAGEN_LAYOUT, build_decoder, build_encoder, check_channels,
                                    official_to_diffusers)

# The official VectorQuantizer keeps a fixed-length window of recent code ids.
CODEBOOK_USAGE_WINDOW = 65536


@dataclass
class VQConfig:
    """LlamaGen ``ModelArgs`` plus the encoder/decoder widths the official code hard-codes."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True  # adds the ``quantize.codebook_used`` buffer
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    entropy_temperature: float = 0.01
    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)  # VQ-16; (1, 2, 2, 4) is VQ-8
    z_channels: int = 256
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level
    dropout: float = 0.0


VQ16 = VQConfig()
VQ8 = VQConfig(ch_mult=(1, 2, 2, 4))
# 32x32 MNIST -> 4x4 ids out of 64; GroupNorm(32) needs widths that are multiples of 32.
VQ_TINY = VQConfig(codebook_size=64, ch=32, ch_mult=(1, 1, 2, 2), z_channels=32, num_res_blocks=1)


def entropy_loss(affinity: torch.Tensor, temperature: float) -> torch.Tensor:
    """MaskGIT entropy regulariser: confident per-token picks, diverse codes over the batch."""
    logits = affinity / temperature  # [N, V]
    probs = logits.softmax(-1)
    sample_entropy = -(probs * F.log_softmax(logits + 1e-5, -1)).sum(-1).mean()
    avg_probs = probs.mean(0)
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with an (optionally) l2-normalised codebook."""

    def __init__(self, config: VQConfig):
        super().__init__()
        n, dim = config.codebook_size, config.codebook_embed_dim
        self.l2_norm = config.codebook_l2_norm
        self.embedding = nn.Embedding(n, dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / n, 1.0 / n)
            if self.l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if config.codebook_show_usage:
            self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:  # [V, D]
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``z [B, D, h, w]`` -> ``(z [N, D], codes [N, D], ids [B, h, w], -distances [N, V])``.

        ``z`` and ``codes`` are l2-normalised when the codebook is; N = B*h*w in raster order.
        """
        b, _, h, w = z.shape
        flat = rearrange(z, "b d h w -> (b h w) d")
        # The lookup runs in fp32 even under autocast, so ids do not depend on the precision.
        with torch.autocast(z.device.type, enabled=False):
            flat, codebook = flat.float(), self.codebook().float()
            if self.l2_norm:
                flat = F.normalize(flat, dim=-1)
            # ||z - e||^2, expanded as the official code does (same argmin on ties)
            dist = (flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
                    - 2 * flat @ codebook.t())
        ids = dist.argmin(1)
        return flat, codebook[ids], ids.view(b, h, w), -dist

    def record_usage(self, ids: torch.Tensor) -> Optional[float]:
        """Push ``ids`` into the usage window; the fraction of the codebook seen in it."""
        if not hasattr(self, "codebook_used"):
            return None
        ids = ids.flatten()[-CODEBOOK_USAGE_WINDOW:].to(self.codebook_used.dtype)
        self.codebook_used.copy_(torch.cat([self.codebook_used[len(ids):], ids]))
        return self.codebook_used.unique().numel() / self.embedding.num_embeddings


class VQTokenizer(Tokenizer):
    """Images ``[B, 3, H, W]`` in [-1, 1] <-> code ids ``[B, H/ds, W/ds]`` (ds = 16 or 8)."""

    config_class = VQConfig
    is_discrete = True

    def __init__(self, config: VQConfig):
        super().__init__(config)
        c = config
        check_channels(c.ch, c.ch_mult)
        lowest = (len(c.ch_mult) - 1,)  # LlamaGen puts attention only at the lowest resolution
        self.encoder = build_encoder(c.ch, c.ch_mult, c.num_res_blocks, lowest, c.z_channels,
                                     double_z=False, dropout=c.dropout)
        self.decoder = build_decoder(c.z_channels, c.ch, c.ch_mult, c.num_res_blocks, lowest,
                                     dropout=c.dropout)
        self.quantize = VectorQuantizer(c)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.codebook_embed_dim, c.z_channels, 1)
        self.downsample = 2 ** (len(c.ch_mult) - 1)

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"code ids must be an integer tensor, got {ids.dtype}")
        if ids.dim() != 3:
            raise ValueError(f"code ids must be [B, h, w], got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"code ids must lie in [0, {self.vocab_size}), got range "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.long()

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(self.check_images(images)))  # [B, D, h, w]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` in [-1, 1] -> ids ``[B, H/ds, W/ds]`` (long)."""
        return self.quantize(self._latents(images))[2]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors ``[B, D, h, w]`` -> pixels ``[B, 3, h*ds, w*ds]``."""
        return self.decoder(self.post_quant_conv(codes))

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w]`` -> pixels ``[B, 3, h*ds, w*ds]`` (about [-1, 1]; not clamped)."""
        codes = self.quantize.codebook()[self.check_ids(ids)]  # [B, h, w, D]
        return self.decode_codes(rearrange(codes, "b h w d -> b d h w"))

    def _reconstruct(self, images: torch.Tensor):
        """Straight-through reconstruction and the quantiser's intermediate values."""
        z = self._latents(images)
        b, _, h, w = z.shape
        z_flat, codes, ids, affinity = self.quantize(z)
        quantized = z_flat + (codes - z_flat).detach()  # straight-through, [N, D]
        recon = self.decode_codes(rearrange(quantized, "(b h w) d -> b d h w", b=b, h=h, w=w))
        return recon, z_flat, codes, ids, affinity

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels -> reconstruction through the quantiser (straight-through gradients)."""
        return self._reconstruct(images)[0]

    def loss(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``(loss, logs)``: l2 reconstruction + codebook + beta * commitment (+ entropy).

        As in LlamaGen's ``vq_train.py`` without its perceptual (LPIPS) and adversarial
        (PatchGAN) terms, which are not included here. Gradients reach the encoder through the
        straight-through estimator. In training mode the ids are pushed into
        ``quantize.codebook_used`` and ``logs["codebook_usage"]`` is the fraction of codes in it.
        """
        c = self.config
        recon, z_flat, codes, ids, affinity = self._reconstruct(images)
        rec_loss = F.mse_loss(recon, images)
        codebook_loss = F.mse_loss(codes, z_flat.detach())
        commit_loss = c.commit_loss_beta * F.mse_loss(z_flat, codes.detach())
        total = rec_loss + codebook_loss + commit_loss
        logs: Dict[str, float] = {"rec_loss": rec_loss.item(), "codebook_loss": codebook_loss.item(),
                                  "commit_loss": commit_loss.item()}
        if c.entropy_loss_ratio > 0:
            ent = c.entropy_loss_ratio * entropy_loss(affinity, c.entropy_temperature)
            total = total + ent
            logs["entropy_loss"] = ent.item()
        if self.training:
            with torch.no_grad():
                usage = self.quantize.record_usage(ids)
            if usage is not None:
                logs["codebook_usage"] = usage
        logs["loss"] = total.item()
        return total, logs


def convert_llamagen_vq(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official ``vq_ds*_c2i.pt["model"]`` -> vargen: LlamaGen's conv stack renamed to diffusers'
    blocks; the codebook and its usage buffer keep their names (the lookup normalises)."""
    return official_to_diffusers(state_dict, LLAMAGEN_LAYOUT)


_LLAMAGEN_SOURCE = "https://github.com/FoundationVision/LlamaGen"
register_model("llamagen-vq16", VQTokenizer, VQ16, converter=convert_llamagen_vq, weights=Weights(
    hub_repo="FoundationVision/LlamaGen", filename="vq_ds16_c2i.pt",
    metrics={"imagenet256_rfid": 2.19}, source=_LLAMAGEN_SOURCE))
register_model("llamagen-vq8", VQTokenizer, VQ8, converter=convert_llamagen_vq, weights=Weights(
    hub_repo="FoundationVision/LlamaGen", filename="vq_ds8_c2i.pt",
    metrics={"imagenet256_rfid": 0.59}, source=_LLAMAGEN_SOURCE))
register_model("llamagen-vq-tiny", VQTokenizer, VQ_TINY, converter=convert_llamagen_vq)
# Shipped: 32x32 MNIST digits -> 8x8 ids out of 256 (llamagen-mnist, nar-mnist; demos/train_mnist_zoo.sh).
register_model("vq-mnist", VQTokenizer, VQConfig(
    codebook_size=256, codebook_embed_dim=8, ch=32, ch_mult=(1, 2, 2), z_channels=64, num_res_blocks=1),
    weights=Weights.shipped("vq-mnist", "94f28125351d5a2344e97e42f591f6d81982962aa09b3f18faf98467ce2686d8"))
