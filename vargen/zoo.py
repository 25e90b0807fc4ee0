"""The lazy registration table: every registered name, the module that registers it, its kind,
where its weights are and whether a pipeline of that name comes with it. ``list_models``,
``list_pipelines`` and ``vargen list`` read this table and import nothing; ``create_model(name)``
and ``load_pipeline(name)`` import the name's module (and its tokenizer's), whose
``register_model`` calls then hold the truth (``tests/test_imports.py`` checks that they agree
with this table). Ground floor: plain data.

Adding a model: call ``register_model(...)`` in its module (with ``pipeline=dict(...)`` for a
pipeline of the same name) and add one line here,
``"name": Z("module.path", "kind", "weights location", pipeline=True)``.
"""
from __future__ import annotations

from typing import Dict, NamedTuple


class ZooEntry(NamedTuple):
    module: str        # the module whose register_model call registers the name
    kind: str          # "generator", "tokenizer" or "classifier"
    weights: str = ""  # where its registered weights are ("" = none registered)
    pipeline: bool = False  # the registration also registers a pipeline of the same name


Z = ZooEntry

_LG = "vargen.models.llamagen"
_NAR = "vargen.models.nar"
_XAR = "vargen.models.xar"
_CAR = "vargen.models.cont_ar"
_MAR = "vargen.models.mar"
_VAE = "vargen.tokenizers.diffusers_vae"
_RAR = "vargen.models.rar"
_LG_HUB = "FoundationVision/LlamaGen/"

MODELS: Dict[str, ZooEntry] = {
    "llamagen-b": Z(_LG, "generator", _LG_HUB + "c2i_B_256.pt", pipeline=True),
    "llamagen-l": Z(_LG, "generator", _LG_HUB + "c2i_L_256.pt", pipeline=True),
    "llamagen-xl": Z(_LG, "generator", _LG_HUB + "c2i_XL_384.pt", pipeline=True),
    "llamagen-xxl": Z(_LG, "generator", _LG_HUB + "c2i_XXL_384.pt", pipeline=True),
    "llamagen-3b": Z(_LG, "generator", _LG_HUB + "c2i_3B_384.pt", pipeline=True),
    "llamagen-tiny": Z(_LG, "generator"),
    "llamagen-t2i-xl": Z(_LG, "generator", "peizesun/llamagen_t2i/t2i_XL_stage1_256.pt", pipeline=True),
    "llamagen-t2i-xl-512": Z(_LG, "generator", "peizesun/llamagen_t2i/t2i_XL_stage2_512.pt", pipeline=True),
    "llamagen-t2i-tiny": Z(_LG, "generator"),
    "nar-b": Z(_NAR, "generator", "chenfeng1271/NAR-imagenet-256-B/last_version.pt", pipeline=True),
    "nar-m": Z(_NAR, "generator", pipeline=True),
    "nar-l": Z(_NAR, "generator", pipeline=True),
    "nar-xl": Z(_NAR, "generator", "yefly/NAR-imagenet-256-XL/last_version.pt", pipeline=True),
    "nar-xxl": Z(_NAR, "generator", pipeline=True),
    "nar-tiny": Z(_NAR, "generator"),
    "nar-t2i-xl": Z(_NAR, "generator", "yefly/NAR-XL-t2i-stage2/last_version.pt", pipeline=True),
    "nar-t2i-tiny": Z(_NAR, "generator"),
    "nar-video-l": Z("vargen.models.nar_video", "generator", pipeline=True),
    "nar-video-lp": Z("vargen.models.nar_video", "generator", pipeline=True),
    "nar-video-tiny": Z("vargen.models.nar_video", "generator"),
    "raster-video-tiny": Z("vargen.models.raster_video", "generator"),
    "xar-b": Z(_XAR, "generator", "OliverRen/xAR/xAR-B.pth", pipeline=True),
    "xar-l": Z(_XAR, "generator", "OliverRen/xAR/xAR-L.pth", pipeline=True),
    "xar-h": Z(_XAR, "generator", "OliverRen/xAR/xAR-H.pth", pipeline=True),
    "xar-tiny": Z(_XAR, "generator"),
    "llamagen-vq16": Z("vargen.tokenizers.vq", "tokenizer", _LG_HUB + "vq_ds16_c2i.pt"),
    "llamagen-vq8": Z("vargen.tokenizers.vq", "tokenizer", _LG_HUB + "vq_ds8_c2i.pt"),
    "llamagen-vq-tiny": Z("vargen.tokenizers.vq", "tokenizer"),
    "mar-kl16": Z("vargen.tokenizers.kl", "tokenizer"),
    "mar-kl-tiny": Z("vargen.tokenizers.kl", "tokenizer"),
    "mingtok-vision": Z("vargen.tokenizers.mingtok", "tokenizer", "inclusionAI/MingTok-Vision/model.safetensors"),
    "mingtok-tiny": Z("vargen.tokenizers.mingtok", "tokenizer"),
    "larp-l-long": Z("vargen.tokenizers.larp", "tokenizer", "hywang66/LARP-L-long-tokenizer/model.safetensors"),
    "larp-tiny": Z("vargen.tokenizers.larp", "tokenizer"),
    "video-vq-tiny": Z("vargen.tokenizers.video_vq", "tokenizer"),
    "sd-vae-ft-ema": Z(_VAE, "tokenizer", "stabilityai/sd-vae-ft-ema/diffusion_pytorch_model.bin"),
    "sd-vae-ft-mse": Z(_VAE, "tokenizer", "stabilityai/sd-vae-ft-mse/diffusion_pytorch_model.bin"),
    "mar-vae-kl16-diffusers": Z(_VAE, "tokenizer", "xwen99/mar-vae-kl16/diffusion_pytorch_model.safetensors"),
    "cont-ar-tiny": Z(_CAR, "generator"),
    "cont-ar-b": Z(_CAR, "generator"),
    "cont-ar-b-mingtok": Z(_CAR, "generator"),
    "mar-b": Z(_MAR, "generator", "LTH14/mar/mar_base/checkpoint-last.pth", pipeline=True),
    "mar-l": Z(_MAR, "generator", "LTH14/mar/mar_large/checkpoint-last.pth", pipeline=True),
    "mar-h": Z(_MAR, "generator", "LTH14/mar/mar_huge/checkpoint-last.pth", pipeline=True),
    "mar-tiny": Z(_MAR, "generator"),
    "digit-classifier": Z("vargen.classifier", "classifier", "weights/digit-classifier"),
    "digit-classifier-tiny": Z("vargen.classifier", "classifier"),
    "vq-mnist": Z("vargen.tokenizers.vq", "tokenizer", "weights/vq-mnist"),
    "llamagen-vq16-t2i": Z("vargen.tokenizers.vq_t2i", "tokenizer", "peizesun/llamagen_t2i/vq_ds16_t2i.pt"),
    "kl-mnist": Z("vargen.tokenizers.kl", "tokenizer", "weights/kl-mnist"),
    "llamagen-mnist": Z(_LG, "generator", "weights/llamagen-mnist", pipeline=True),
    "t2i-mnist": Z(_LG, "generator", "weights/t2i-mnist", pipeline=True),
    "nar-mnist": Z(_NAR, "generator", "weights/nar-mnist", pipeline=True),
    "xar-mnist": Z(_XAR, "generator", "weights/xar-mnist", pipeline=True),
    "mingtok-mnist": Z("vargen.tokenizers.mingtok", "tokenizer", "weights/mingtok-mnist"),
    "video-vq-mnist": Z("vargen.tokenizers.video_vq", "tokenizer", "weights/video-vq-mnist"),
    "mar-mnist": Z(_MAR, "generator", "weights/mar-mnist", pipeline=True),
    "cont-ar-mnist": Z(_CAR, "generator", "weights/cont-ar-mnist", pipeline=True),
    "cont-ar-mingtok-mnist": Z(_CAR, "generator", "weights/cont-ar-mingtok-mnist", pipeline=True),
    "nar-video-mnist": Z("vargen.models.nar_video", "generator", "weights/nar-video-mnist", pipeline=True),
    "nar-video-mnist-diagonal": Z("vargen.models.nar_video", "generator", "weights/nar-video-mnist-diagonal",
                                  pipeline=True),
    "raster-video-mnist": Z("vargen.models.raster_video", "generator", "weights/raster-video-mnist", pipeline=True),
    "var-vqvae": Z("vargen.tokenizers.var_vqvae", "tokenizer", "FoundationVision/var/vae_ch160v4096z32.pth"),
    "var-vqvae-512": Z("vargen.tokenizers.var_vqvae", "tokenizer", "FoundationVision/var/vae_ch160v4096z32.pth"),
    "var-vqvae-tiny": Z("vargen.tokenizers.var_vqvae", "tokenizer"),
    "var-d16": Z("vargen.models.var", "generator", "FoundationVision/var/var_d16.pth", pipeline=True),
    "var-d20": Z("vargen.models.var", "generator", "FoundationVision/var/var_d20.pth", pipeline=True),
    "var-d24": Z("vargen.models.var", "generator", "FoundationVision/var/var_d24.pth", pipeline=True),
    "var-d30": Z("vargen.models.var", "generator", "FoundationVision/var/var_d30.pth", pipeline=True),
    "var-d36": Z("vargen.models.var", "generator", "FoundationVision/var/var_d36.pth"),
    "var-tiny": Z("vargen.models.var", "generator"),
    "var-vqvae-mnist": Z("vargen.tokenizers.var_vqvae", "tokenizer", "weights/var-vqvae-mnist"),
    "var-mnist": Z("vargen.models.var", "generator", "weights/var-mnist", pipeline=True),
    "rar-b": Z(_RAR, "generator", "yucornetto/RAR/rar_b.bin", pipeline=True),
    "rar-l": Z(_RAR, "generator", "yucornetto/RAR/rar_l.bin", pipeline=True),
    "rar-xl": Z(_RAR, "generator", "yucornetto/RAR/rar_xl.bin", pipeline=True),
    "rar-xxl": Z(_RAR, "generator", "yucornetto/RAR/rar_xxl.bin", pipeline=True),
    "rar-tiny": Z(_RAR, "generator"),
    "rar-mnist": Z(_RAR, "generator", "weights/rar-mnist", pipeline=True),
    "maskgit-vqgan": Z("vargen.tokenizers.maskgit_vqgan", "tokenizer", "fun-research/TiTok/maskgit-vqgan-imagenet-f16-256.bin"),
    "maskgit-vqgan-tiny": Z("vargen.tokenizers.maskgit_vqgan", "tokenizer"),
}

