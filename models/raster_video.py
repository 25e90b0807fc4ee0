"""Raster-order video AR: the NAR-video trunk decoding a T x H x W grid one token at a time.

The baseline NAR's video experiments compare against (NAR arXiv 2503.10696, Table 2, "AR"
rows; official code https://github.com/ThisisBillhe/NAR, ``NAR-videos/models/larp_ar.py`` with
the neighbour heads off): the same Llama blocks and learned absolute position embedding
``abs_pe [1, 1 + T*H*W, dim]`` as :class:`vargen.models.nar_video.NARVideo`, one next-token head
(``norm`` / ``output``) and a causal mask over the grid flattened in (t, h, w) order, so decoding
takes T*H*W passes. It is LlamaGen's network on a 3-D grid with absolute positions; every raster
sampler (raster, SJD, GSD) drives it unchanged.

For a like-for-like comparison give it ``n_layer`` = NAR-video's ``n_layer + 2``: NAR's two extra
head blocks run on every token, so both networks then cost the same per token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from vargen.registry import register_model
from vargen.training.recipes import LARP_AR

from .llamagen import LlamaGen, LlamaGenConfig, convert_llamagen_checkpoint


@dataclass
class RasterVideoConfig(LlamaGenConfig):
    num_classes: int = 101  # UCF-101
    vocab_size: int = 8192  # LARP codebook
    position_embedding: str = "absolute"  # LARP_AR's "llama-abs-*"
    latent_shape: Tuple[int, int, int] = (4, 16, 16)

    @property
    def token_grid(self) -> Tuple[int, int, int]:
        return tuple(self.latent_shape)


class RasterVideo(LlamaGen):
    """LlamaGen's trunk and head over a ``(T, H, W)`` grid in raster order."""

    config_class = RasterVideoConfig

    def __init__(self, config: RasterVideoConfig):
        if len(config.latent_shape) != 3 or min(config.latent_shape) < 1:
            raise ValueError(f"latent_shape must be (T, H, W) >= 1, got {config.latent_shape}")
        if config.position_embedding != "absolute":  # rope_2d is a 2-D table
            raise ValueError("a video raster model uses absolute positions, got "
                             f"position_embedding={config.position_embedding!r}")
        super().__init__(config)


register_model("raster-video-tiny", RasterVideo, RasterVideoConfig(
    dim=64, n_layer=4, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, latent_shape=(2, 3, 4),
    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0), converter=convert_llamagen_checkpoint,
    recipe=LARP_AR)
