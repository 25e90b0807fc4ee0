"""MAR's KL-16 VAE: the continuous tokenizer of MAR and xAR (an LDM KL autoencoder).

Li et al., "Autoregressive Image Generation without Vector Quantization" (NeurIPS 2024), official
code github.com/LTH14/mar, ``models/vae.py`` (adopted from LDM's KL-VAE, Rombach et al. 2022).

vargen's own module (not diffusers' ``AutoencoderKL``, which cannot hold attention inside the
encoder's down blocks without a custom block layout), built from :mod:`vargen.tokenizers.conv`
in the LDM key layout, so ``state_dict`` keys equal the official checkpoint's:

- encoder: ch 128, ch_mult (1, 1, 2, 2, 4), 2 res blocks per level, 2 AttnBlocks in ``down.4``
  (LDM ``attn_resolutions=(16,)`` at resolution 256) plus mid attention, ``conv_out`` -> 2 x 16
  channels (``double_z``);
- ``quant_conv`` 32 -> 32 gives the moments of a diagonal Gaussian (logvar clamped to [-30, 20]);
- decoder: ``post_quant_conv`` 16 -> 16, 3 res blocks per level, mid attention and **no attention
  in the up path** (as released: MAR issue #3, "we forgot to include it").

Latents are multiplied by ``scale_factor`` 0.2325 (MAR normalises the latent std to about 1)
on ``encode`` and divided by it on ``decode``; 256 px images give ``[B, 16, 16, 16]``.

Weights: the official ``kl16.ckpt`` (``["model"]``, ~254 MB) is distributed through Dropbox by
MAR's ``util/download.py``, not through the Hub, so ``mar-kl16`` registers no downloadable weights.
Download it yourself and load it with ``vargen.create_model("mar-kl16", pretrained="kl16.ckpt")``;
:func:`convert_mar_kl16` drops training-loss keys (the official loader uses ``strict=False``).
Community Hub conversions exist (``xwen99/mar-vae-kl16``, ``jadechoghari/mar``) but are not
verified here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from vargen.registry import register_model
from vargen.tokenizers.base import Tokenizer
from vargen.tokenizers.conv import LDM_LAYOUT, Decoder, Encoder, check_channels

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
    scale_factor: float = 0.2325
    reconstruction_loss: str = "l1"  # "l1" (LDM) or "l2"
    kl_weight: float = 1e-6  # LDM kl-f16 config


KL16 = KLConfig()
# 32x32 MNIST -> [16, 4, 4] latents, like llamagen-vq-tiny's 4x4 ids.
KL_TINY = KLConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, encoder_attn_levels=(3,))


class DiagonalGaussian:
    """Posterior ``N(mean, exp(logvar))`` from moments ``[B, 2C, h, w]`` (LDM's distribution)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                            dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over ``[C, h, w]``: ``[B]``."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class KLTokenizer(Tokenizer):
    """Images ``[B, 3, H, W]`` in [-1, 1] <-> scaled latents ``[B, 16, H/16, W/16]``."""

    config_class = KLConfig
    is_discrete = False

    def __init__(self, config: KLConfig):
        super().__init__(config)
        c = config
        check_channels(c.ch, c.ch_mult)
        levels = range(len(c.ch_mult))
        bad = [i for i in (*c.encoder_attn_levels, *c.decoder_attn_levels) if i not in levels]
        if bad:
            raise ValueError(f"attention levels must be in {list(levels)}, got {bad}")
        if c.reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss must be 'l1' or 'l2', got {c.reconstruction_loss!r}")
        e = c.embed_dim
        self.encoder = Encoder(LDM_LAYOUT, 3, c.ch, c.ch_mult, c.num_res_blocks,
                               c.encoder_attn_levels, 2 * e, c.dropout)
        self.decoder = Decoder(LDM_LAYOUT, e, c.ch, c.ch_mult, c.num_res_blocks + 1,
                               c.decoder_attn_levels, 3, c.dropout)
        self.quant_conv = nn.Conv2d(2 * e, 2 * e, 1)
        self.post_quant_conv = nn.Conv2d(e, e, 1)
        self.downsample = 2 ** (len(c.ch_mult) - 1)

    @property
    def latent_channels(self) -> int:
        return self.config.embed_dim

    def posterior(self, images: torch.Tensor) -> DiagonalGaussian:
        """The unscaled posterior over latents ``[B, 16, h, w]``."""
        return DiagonalGaussian(self.quant_conv(self.encoder(self.check_images(images))))

    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` -> ``scale_factor`` x latents ``[B, 16, H/ds, W/ds]``.

        The posterior mean by default; ``sample=True`` draws from the posterior as MAR's
        training does (``generator`` makes it reproducible).
        """
        posterior = self.posterior(images)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.config.scale_factor

    def _decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[B, 16, h, w]`` -> pixels ``[B, 3, h*ds, w*ds]`` (not clamped)."""
        if not torch.is_floating_point(latents):
            raise TypeError(f"latents must be a float tensor, got {latents.dtype}")
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, h, w], "
                             f"got {tuple(latents.shape)}")
        return self._decode_unscaled(latents.to(self.weight_dtype) / self.config.scale_factor)

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
    """Official ``kl16.ckpt["model"]`` -> vargen: drop training-loss / discriminator weights.

    Everything else keeps its name; the strict load that follows reports any other mismatch.
    """
    return {k: v for k, v in state_dict.items()
            if not k.startswith(("loss.", "discriminator."))}


register_model("mar-kl16", KLTokenizer, KL16, converter=convert_mar_kl16)
register_model("mar-kl-tiny", KLTokenizer, KL_TINY, converter=convert_mar_kl16)
