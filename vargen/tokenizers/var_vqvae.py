"""VAR's multi-scale residual VQVAE (``vae_ch160v4096z32``), the tokenizer of the VAR family.

Tian et al., "Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale
Prediction" (NeurIPS 2024), official code github.com/FoundationVision/VAR (``models/vqvae.py``,
``models/basic_vae.py``, ``models/quant.py``); weights ``vae_ch160v4096z32.pth`` on the Hub repo
``FoundationVision/var``.

The encoder / decoder are LDM's vq-f16 stack (ch 160, ch_mult (1, 1, 2, 2, 4), 2 res blocks,
attention after every res block of the lowest-resolution level and in the middle), built from
diffusers' blocks (:mod:`vargen.tokenizers.conv`); ``quant_conv`` / ``post_quant_conv`` are 3x3
convs Cvae -> Cvae; the quantizer is :class:`~vargen.tokenizers.var_quant.MultiScaleQuantizer`
(V = 4096, Cvae = 32, patch_nums 1..16 at 256 px).

Tokens: ``encode`` gives the ids of every scale concatenated, ``[B, L]`` with
``L = sum(pn^2)`` (680 at 256 px), small scale first; :meth:`VARVQVAE.encode_scales` gives the
list. ``decode`` takes those ids, or f_hat ``[B, Cvae, pn_last, pn_last]`` (a float tensor, what
the sampler's ``more_smooth`` produces). Training (:meth:`VARVQVAE.loss`, what the release does
not ship): l1 + l2 reconstruction, the quantizer's commitment / codebook loss, usage from
``ema_vocab_hit_SV``, and optional LPIPS-style perceptual and PatchGAN terms
(:mod:`vargen.tokenizers.var_losses`, off by default).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen.registry import Weights, register_model
from vargen.tokenizers.base import Tokenizer
from vargen.tokenizers.conv import LDM_LAYOUT, build_decoder, build_encoder, check_channels, official_to_diffusers
from vargen.tokenizers.var_quant import MultiScaleQuantizer

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass
class VARVQConfig:
    """``VQVAE(...)`` arguments, with the ddconfig the official builder hard-codes."""

    vocab_size: int = 4096
    z_channels: int = 32  # Cvae: the encoder's output and the code width
    ch: int = 160
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    patch_nums: Tuple[int, ...] = PATCH_NUMS_256
    codebook_init: float = 0.0  # the released ``eini`` (0: N(0, 1); -1: uniform +-1/V, taming's)
    # Training only (vargen's; the release ships no VQVAE training): loss weights and options.
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    perceptual_weight: float = 0.0  # LPIPS-style VGG16 feature distance; 0: off
    perceptual_backbone: str = "random"  # "random" (plumbing only) or "imagenet" (torchvision's VGG16 weights)
    disc_weight: float = 0.0  # PatchGAN hinge loss; 0: off (no discriminator is built)
    disc_layers: int = 3


class VARVQVAE(Tokenizer):
    """Images ``[B, 3, H, W]`` in [-1, 1] <-> multi-scale ids ``[B, L]`` (or f_hat)."""

    config_class = VARVQConfig
    is_discrete = True

    def __init__(self, config: VARVQConfig):
        super().__init__(config)
        c = config
        check_channels(c.ch, c.ch_mult)
        lowest = (len(c.ch_mult) - 1,)
        self.encoder = build_encoder(c.ch, c.ch_mult, c.num_res_blocks, lowest, c.z_channels,
                                     double_z=False, dropout=c.dropout)
        self.decoder = build_decoder(c.z_channels, c.ch, c.ch_mult, c.num_res_blocks, lowest,
                                     dropout=c.dropout)
        self.quantize = MultiScaleQuantizer(c.vocab_size, c.z_channels, c.patch_nums, c.using_znorm,
                                            c.beta, c.quant_resi, c.share_quant_resi, c.codebook_init)
        ks = c.quant_conv_ks
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, ks, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, ks, padding=ks // 2)
        self.downsample = 2 ** (len(c.ch_mult) - 1)
        if c.perceptual_weight > 0 or c.disc_weight > 0:
            from vargen.tokenizers.var_losses import PatchDiscriminator, Perceptual
            if c.perceptual_weight > 0:
                object.__setattr__(self, "perceptual", Perceptual(c.perceptual_backbone))  # frozen, not saved
            if c.disc_weight > 0:
                self.discriminator = PatchDiscriminator(n_layers=c.disc_layers)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def patch_nums(self) -> Tuple[int, ...]:
        return self.quantize.patch_nums

    @property
    def sequence_length(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def token_grid(self, image_size: Union[int, Tuple[int, int]]) -> Tuple[int]:
        """``(L,)``: the ids of all scales concatenated (the image side must be pn_last * ds)."""
        h, w = super().token_grid(image_size)
        if (h, w) != (self.patch_nums[-1],) * 2:
            side = self.patch_nums[-1] * self.downsample
            raise ValueError(f"{type(self).__name__} with patch_nums {self.patch_nums} takes "
                             f"{side}x{side} images, got {h * self.downsample}x{w * self.downsample}")
        return (self.sequence_length,)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels -> ``f [B, Cvae, pn_last, pn_last]`` (before quantization)."""
        x = self.check_images(images)
        self.token_grid(tuple(x.shape[-2:]))
        return self.quant_conv(self.encoder(x))

    def encode_scales(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Pixels -> ids per scale ``[B, pn*pn]`` (``img_to_idxBl``)."""
        return self.quantize.encode(self.features(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` in [-1, 1] -> ids ``[B, L]`` (long), small scale first."""
        return torch.cat(self.encode_scales(images), dim=1)

    def check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"code ids must be an integer tensor, got {ids.dtype}")
        if ids.dim() != 2 or ids.shape[1] != self.sequence_length:
            raise ValueError(f"multi-scale ids must be [B, {self.sequence_length}] (patch_nums "
                             f"{self.patch_nums}), got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"code ids must lie in [0, {self.vocab_size}), got range "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.long()

    def ids_to_fhat(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, L]`` -> f_hat ``[B, Cvae, pn_last, pn_last]``."""
        return self.quantize.embed(self.quantize.split(self.check_ids(ids)))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat -> pixels ``[B, 3, H, W]`` (about [-1, 1]; not clamped)."""
        w = self.post_quant_conv.weight
        return self.decoder(self.post_quant_conv(f_hat.to(w.dtype)))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, L]`` or f_hat ``[B, Cvae, h, w]`` (float) -> pixels."""
        if torch.is_floating_point(tokens):
            self.check_latents(tokens)
            size = self.patch_nums[-1]
            if tokens.dim() != 4 or tuple(tokens.shape[1:]) != (self.config.z_channels, size, size):
                raise ValueError(f"f_hat must be [B, {self.config.z_channels}, {size}, {size}], "
                                 f"got {tuple(tokens.shape)}")
            return self.fhat_to_img(tokens)
        return self.fhat_to_img(self.ids_to_fhat(tokens))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels -> reconstruction through the quantizer (straight-through gradients)."""
        return self.fhat_to_img(self.quantize(self.features(images))[0])

    def loss(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``(loss, logs)``: l1 + l2 reconstruction + the quantizer's vq loss, plus the optional
        perceptual and PatchGAN terms. In training mode ``logs["codebook_usage"]`` is the mean
        percentage of codes per scale over the released hit margin (``ema_vocab_hit_SV``)."""
        c = self.config
        f = self.features(images)
        f_hat, vq_loss, ids = self.quantize(f)
        recon = self.fhat_to_img(f_hat)
        images = images.to(recon.dtype)
        l1, l2 = F.l1_loss(recon, images), F.mse_loss(recon, images)
        total = c.l1_weight * l1 + c.l2_weight * l2 + vq_loss
        logs: Dict[str, float] = {"l1": l1.item(), "l2": l2.item(), "vq_loss": vq_loss.item()}
        if c.perceptual_weight > 0:
            p = self.perceptual(recon, images)
            total = total + c.perceptual_weight * p
            logs["perceptual"] = p.item()
        if c.disc_weight > 0:
            from vargen.tokenizers.var_losses import gan_losses
            g_loss, d_loss = gan_losses(self.discriminator, recon, images)
            total = total + c.disc_weight * g_loss + d_loss
            logs.update(gan_g=g_loss.item(), gan_d=d_loss.item())
        if self.training:
            usage = self.quantize.usage(f.shape[0] * f.shape[2] * f.shape[3])
            logs["codebook_usage"] = sum(usage) / len(usage) / 100
        logs["loss"] = total.item()
        return total, logs


def _split_qkv(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The released AttnBlock's fused 1x1 ``qkv`` conv -> LDM's ``q``, ``k``, ``v``."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"(.+)\.qkv\.(weight|bias)", key)
        if m and key.startswith(("encoder.", "decoder.")):
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{m.group(1)}.{name}.{m.group(2)}"] = part.clone()
        else:
            out[key] = value
    return out


def convert_var_vqvae(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Released ``vae_ch160v4096z32.pth`` (a plain state dict, LDM key names) -> vargen: the
    fused attention ``qkv`` split, the conv stack renamed to diffusers' blocks; the quantizer's
    keys (``quantize.embedding``, ``quantize.quant_resi.qresi_ls.*``, ``ema_vocab_hit_SV``) and
    the quant convs keep their names; the strict load that follows names anything else."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return official_to_diffusers(_split_qkv(state), LDM_LAYOUT)


_SRC = "https://github.com/FoundationVision/VAR"
register_model("var-vqvae", VARVQVAE, VARVQConfig(), converter=convert_var_vqvae, weights=Weights(
    hub_repo="FoundationVision/var", filename="vae_ch160v4096z32.pth", source=_SRC))
register_model("var-vqvae-512", VARVQVAE, VARVQConfig(patch_nums=PATCH_NUMS_512), converter=convert_var_vqvae,
               weights=Weights(hub_repo="FoundationVision/var", filename="vae_ch160v4096z32.pth", source=_SRC))
# 8x8 images -> f 4x4; four scales so that each of the four phis is used (test_models reaches them all).
register_model("var-vqvae-tiny", VARVQVAE, VARVQConfig(
    vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 3, 4)),
    converter=convert_var_vqvae)
# Shipped: 32x32 digits -> f 8x8 -> ids at scales 1,2,3,4,6,8 (130 ids, 6 passes; var-mnist). Cosine
# lookup (the released option using_znorm): with L2 from N(0, 1) codes, 8% of codes were in use after
# 100 steps; with it, 38% after 50 (and rising).
register_model("var-vqvae-mnist", VARVQVAE, VARVQConfig(
    vocab_size=256, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, patch_nums=(1, 2, 3, 4, 6, 8),
    using_znorm=True), converter=convert_var_vqvae,
    weights=Weights.shipped("var-vqvae-mnist", "4677dee329df028e07ee6d50c64b2c62bab28e47e1d5a2ac460c789d78c457f9"))
