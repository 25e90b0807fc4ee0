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

from vargen import recipes
from vargen.nn.llama import LlamaConfig
from vargen.registry import Weights, register_model

from .llamagen import LlamaGen, convert_llamagen_checkpoint

RasterVideoConfig = LlamaConfig  # LARP_AR's ModelArgs: latent_shape (T, H, W), absolute positions


class RasterVideo(LlamaGen):
    """LlamaGen's trunk and head over a ``(T, H, W)`` grid in raster order."""

    def __init__(self, config: LlamaConfig):
        if config.latent_shape is None or len(config.latent_shape) != 3 or min(config.latent_shape) < 1:
            raise ValueError(f"latent_shape must be (T, H, W) >= 1, got {config.latent_shape}")
        if config.position_embedding != "absolute":  # rope_2d is a 2-D table
            raise ValueError("a video raster model uses absolute positions, got "
                             f"position_embedding={config.position_embedding!r}")
        super().__init__(config)


register_model("raster-video-tiny", RasterVideo, LlamaConfig(
    dim=64, n_layer=4, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, latent_shape=(2, 3, 4),
    position_embedding="absolute", token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0),
    converter=convert_llamagen_checkpoint, recipe=recipes.LARP_AR)
# Shipped: the NAR-video-mnist trunk decoding video-vq-mnist's 256 ids in raster order (256 passes).
# Same sizes as nar-video-mnist (tests/test_video_generators.py checks that the trunks agree).
register_model("raster-video-mnist", RasterVideo, LlamaConfig(
    dim=128, n_layer=6, n_head=4, multiple_of=64, vocab_size=256, num_classes=10, latent_shape=(4, 8, 8),
    position_embedding="absolute", token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0),
               weights=Weights.shipped("raster-video-mnist", "41beef644cfee4c6698e91639cd305e1c91e4be0b848429b87bc752e083371d3"),
               recipe=recipes.LARP_AR, pipeline=dict(tokenizer="video-vq-mnist", cfg_scale=3.0, top_k=4))
