"""Optional VQVAE training terms (off by default): an LPIPS-style perceptual distance on VGG16
features and a PatchGAN hinge loss, as LlamaGen's ``tokenizer/tokenizer_image/vq_loss.py`` adds
them (``LPIPS``, ``NLayerDiscriminator`` from taming-transformers).

``Perceptual("imagenet")`` loads torchvision's VGG16 ImageNet weights (where the user has them;
no download happens offline); ``"random"`` builds the same network with random weights (tests
exercise the plumbing with it). The distance is LPIPS without its learned per-channel linear
heads: channel-normalised features of the five VGG stages, squared differences averaged.

The GAN term fits vargen's single optimiser: :func:`gan_losses` returns the generator's hinge
loss computed through a *detached copy* of the discriminator's parameters (so it moves only the
autoencoder) and the discriminator's hinge loss on detached reconstructions (so it moves only
the discriminator); their sum is one backward pass.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_VGG_STAGES = (4, 9, 16, 23, 30)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16.features
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class Perceptual(nn.Module):
    """Frozen VGG16 feature distance between images in [-1, 1]."""

    def __init__(self, backbone: str = "random"):
        super().__init__()
        from torchvision.models import VGG16_Weights, vgg16
        if backbone not in ("random", "imagenet"):
            raise ValueError(f"perceptual_backbone must be 'random' or 'imagenet', got {backbone!r}")
        weights = VGG16_Weights.IMAGENET1K_V1 if backbone == "imagenet" else None
        self.features = vgg16(weights=weights).features[:_VGG_STAGES[-1]].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def _stages(self, x: torch.Tensor):
        x = ((x + 1) / 2 - self.mean.to(x)) / self.std.to(x)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i + 1 in _VGG_STAGES:
                yield x

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.features.to(recon.device)
        total = recon.new_zeros(())
        for a, b in zip(self._stages(recon), self._stages(target)):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + (a - b).square().sum(1).mean()
        return total


class PatchDiscriminator(nn.Module):
    """taming's ``NLayerDiscriminator`` (PatchGAN): conv 4x4 stride 2 stacks, BatchNorm."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def gan_losses(disc: nn.Module, recon: torch.Tensor, real: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(generator hinge loss, discriminator hinge loss)``; see the module docstring."""
    from torch.func import functional_call
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    buffers = {k: v for k, v in disc.named_buffers()}
    g_loss = -functional_call(disc, {**frozen, **buffers}, (recon,)).mean()
    d_real = disc(real.detach())
    d_fake = disc(recon.detach())
    d_loss = 0.5 * (F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean())
    return g_loss, d_loss
