"""MAR's KL-16 VAE: the continuous tokenizer of MAR and xAR (an LDM KL autoencoder).

Li et al., "Autoregressive Image Generation without Vector Quantization" (NeurIPS 2024), official
code github.com/LTH14/mar, ``models/vae.py`` (adopted from LDM's KL-VAE, Rombach et al. 2022).

The network is exactly a diffusers ``AutoencoderKL``: built from diffusers' ``Encoder`` /
``Decoder`` (:mod:`vargen.tokenizers.conv`) plus ``quant_conv`` / ``post_quant_conv``, so its
``state_dict`` keys are ``AutoencoderKL``'s and the posterior is diffusers'
``DiagonalGaussianDistribution`` (logvar clamped to [-30, 20]). KL-16:

- encoder: ch 128, ch_mult (1, 1, 2, 2, 4), 2 res blocks per level, attention after both res blocks
  of level 4 (LDM ``attn_resolutions=(16,)`` at resolution 256: ``AttnDownEncoderBlock2D``) plus mid
  attention, ``conv_out`` -> 2 x 16 channels (``double_z``);
- ``quant_conv`` 32 -> 32 gives the moments of a diagonal Gaussian;
- decoder: ``post_quant_conv`` 16 -> 16, 3 res blocks per level, mid attention and **no attention
  in the up path** (as released: MAR issue #3, "we forgot to include it").

Latents follow diffusers' convention: ``encode`` returns ``(z - shift_factor) * scale_factor`` and
``decode`` inverts it. MAR uses scale 0.2325 (it normalises the latent std to about 1) and no
shift; 256 px images give ``[B, 16, 16, 16]``. Any diffusers-format ``AutoencoderKL`` from the Hub
loads into this class through :mod:`vargen.tokenizers.diffusers_vae`.

Weights: the official ``kl16.ckpt`` (``["model"]``, ~254 MB, LDM key names) is distributed through
Dropbox by MAR's ``util/download.py``, not through the Hub, so ``mar-kl16`` registers no
downloadable weights. Download it yourself and load it with
``vargen.create_model("mar-kl16", pretrained="kl16.ckpt")``: :func:`convert_mar_kl16` drops the
training-loss keys (the official loader uses ``strict=False``) and renames LDM's keys to
diffusers'. The diffusers-format conversion on the Hub is registered as
``mar-vae-kl16-diffusers``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from vargen.registry import Weights, register_model
from vargen.tokenizers.base import Tokenizer
from vargen.tokenizers.conv import (LDM_LAYOUT, build_decoder, build_encoder, check_attn_levels,
                                    check_channels, official_to_diffusers)

MAR_KL16_URL = ("https://www.dropbox.com/scl/fi/hhmuvaiacrarfg28qxhwz/kl16.ckpt"
                "?rlkey=l44xipsezc8atcffdp4q7mwmh&dl=0")


@dataclass
class KLConfig:
    """MAR ``AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))`` and LDM's kl-f16 loss weights.

    Attention positions are level indices (0 = full resolution) rather than LDM's resolutions,
    so the architecture does not depend on the input size.
    """

    embed_dim: int = 16  # latent channels
    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level
    encoder_attn_levels: Tuple[int, ...] = (4,)
    decoder_attn_levels: Tuple[int, ...] = ()
    dropout: float = 0.0
    scale_factor: float = 0.2325  # diffusers' scaling_factor
    shift_factor: float = 0.0  # diffusers' shift_factor (SD3 / FLUX VAEs); MAR has none
    reconstruction_loss: str = "l1"  # "l1" (LDM) or "l2"
    kl_weight: float = 1e-6  # LDM kl-f16 config


KL16 = KLConfig()
# 32x32 MNIST -> [16, 4, 4] latents, like llamagen-vq-tiny's 4x4 ids.
KL_TINY = KLConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, encoder_attn_levels=(3,))


class KLTokenizer(Tokenizer):
    """Images ``[B, 3, H, W]`` in [-1, 1] <-> scaled latents ``[B, 16, H/16, W/16]``."""

    config_class = KLConfig
    is_discrete = False

    def __init__(self, config: KLConfig):
        super().__init__(config)
        c = config
        check_channels(c.ch, c.ch_mult)
        check_attn_levels(len(c.ch_mult), c.encoder_attn_levels, c.decoder_attn_levels)
        if c.reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'l2', got {c.reconstruction_loss!r}")
        e = c.embed_dim
        self.encoder = build_encoder(c.ch, c.ch_mult, c.num_res_blocks, c.encoder_attn_levels, e,
                                     double_z=True, dropout=c.dropout)
        self.decoder = build_decoder(e, c.ch, c.ch_mult, c.num_res_blocks, c.decoder_attn_levels,
                                     dropout=c.dropout)
        self.quant_conv = nn.Conv2d(2 * e, 2 * e, 1)
        self.post_quant_conv = nn.Conv2d(e, e, 1)
        self.downsample = 2 ** (len(c.ch_mult) - 1)

    @property
    def latent_channels(self) -> int:
        return self.config.embed_dim

    def posterior(self, images: torch.Tensor):
        """The unscaled posterior over latents ``[B, 16, h, w]`` (diffusers'
        ``DiagonalGaussianDistribution``: ``.mean``, ``.mode()``, ``.sample(generator)``, ``.kl()``)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(self.check_images(images))))

    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` -> ``(z - shift_factor) * scale_factor``, ``[B, 16, H/ds, W/ds]``.

        The posterior mean by default; ``sample=True`` draws from the posterior as MAR's
        training does (``generator`` makes it reproducible).
        """
        posterior = self.posterior(images)
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self.config.shift_factor) * self.config.scale_factor

    def _decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, 16, h, w]`` -> pixels ``[B, 3, h*ds, w*ds]`` (not clamped)."""
        self.check_latents(latents)
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, h, w], "
                             f"got {tuple(latents.shape)}")
        c = self.config
        return self._decode_unscaled(latents.to(self.weight_dtype) / c.scale_factor + c.shift_factor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the posterior mean."""
        return self._decode_unscaled(self.posterior(images).mode())

    def loss(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``(loss, logs)``: reconstruction + ``kl_weight`` * KL, on a posterior sample.

        Normalised as LDM's ``LPIPSWithDiscriminator``: both terms are summed over each image
        and averaged over the batch (its learned ``logvar`` is fixed at 0 here). LDM's
        perceptual (LPIPS) and adversarial (PatchGAN) terms are not included.
        """
        c = self.config
        posterior = self.posterior(images)
        recon = self._decode_unscaled(posterior.sample(generator))
        diff = recon - images
        per_pixel = diff.abs() if c.reconstruction_loss == "l1" else diff.pow(2)
        b = images.shape[0]
        rec_loss = per_pixel.sum() / b
        kl = posterior.kl().mean()
        total = rec_loss + c.kl_weight * kl
        logs = {"loss": total.item(), "rec_loss": rec_loss.item(),
                f"{c.reconstruction_loss}_per_pixel": per_pixel.mean().item(), "kl": kl.item()}
        return total, logs


def convert_mar_kl16(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official ``kl16.ckpt["model"]`` -> vargen: drop training-loss / discriminator weights and
    rename LDM's encoder/decoder keys to diffusers' (``AutoencoderKL``'s key tree).

    The strict load that follows reports any other mismatch.
    """
    kept = {k: v for k, v in state_dict.items() if not k.startswith(("loss.", "discriminator."))}
    return official_to_diffusers(kept, LDM_LAYOUT)


register_model("mar-kl16", KLTokenizer, KL16, converter=convert_mar_kl16)
register_model("mar-kl-tiny", KLTokenizer, KL_TINY, converter=convert_mar_kl16)
# Shipped: 32x32 MNIST digits -> 8x8x4 latents (xar-mnist, cont-ar-mnist). scale_factor = 1 / std
# of the train-split latents (MAR: "normalize the std to 1").
register_model("kl-mnist", KLTokenizer, KLConfig(
    embed_dim=4, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, encoder_attn_levels=(2,), scale_factor=0.394),
    weights=Weights.shipped("kl-mnist", "267fc12dc0fe493383059743f6a00b03a791f387eb32a5f260fc2224449214c1"))
