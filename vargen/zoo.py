"""The lazy registration table: every registered name, the module that registers it, its kind
and where its weights are. ``list_models`` and ``vargen list`` read this table and import
nothing; ``create_model(name)`` / ``get_entry(name)`` import the name's module, whose
``register_model`` calls then hold the truth (``tests/test_imports.py`` checks that they agree
with this table).

Adding a model: call ``register_model(...)`` in its module as usual and add one line here,
``"name": ("module.path", "kind", "weights location or ''")``.
"""
from __future__ import annotations

from typing import Dict, Tuple

_LG = "vargen.models.llamagen"
_NAR = "vargen.models.nar"
_XAR = "vargen.models.xar"
_MNIST = "vargen.models.mnist"
_CAR = "vargen.models.cont_ar"
_VAE = "vargen.tokenizers.diffusers_vae"
_LG_HUB = "FoundationVision/LlamaGen/"

# name: (module that registers it, kind, weights location ("" = none registered))
MODELS: Dict[str, Tuple[str, str, str]] = {
    "llamagen-b": (_LG, "generator", _LG_HUB + "c2i_B_256.pt"),
    "llamagen-l": (_LG, "generator", _LG_HUB + "c2i_L_256.pt"),
    "llamagen-xl": (_LG, "generator", _LG_HUB + "c2i_XL_384.pt"),
    "llamagen-xxl": (_LG, "generator", _LG_HUB + "c2i_XXL_384.pt"),
    "llamagen-3b": (_LG, "generator", _LG_HUB + "c2i_3B_384.pt"),
    "llamagen-tiny": (_LG, "generator", ""),
    "nar-b": (_NAR, "generator", "chenfeng1271/NAR-imagenet-256-B/last_version.pt"),
    "nar-m": (_NAR, "generator", ""),
    "nar-l": (_NAR, "generator", ""),
    "nar-xl": (_NAR, "generator", "yefly/NAR-imagenet-256-XL/last_version.pt"),
    "nar-xxl": (_NAR, "generator", ""),
    "nar-tiny": (_NAR, "generator", ""),
    "nar-video-l": ("vargen.models.nar_video", "generator", ""),
    "nar-video-lp": ("vargen.models.nar_video", "generator", ""),
    "nar-video-tiny": ("vargen.models.nar_video", "generator", ""),
    "raster-video-tiny": ("vargen.models.raster_video", "generator", ""),
    "xar-b": (_XAR, "generator", "OliverRen/xAR/xAR-B.pth"),
    "xar-l": (_XAR, "generator", "OliverRen/xAR/xAR-L.pth"),
    "xar-h": (_XAR, "generator", "OliverRen/xAR/xAR-H.pth"),
    "xar-tiny": (_XAR, "generator", ""),
    "llamagen-vq16": ("vargen.tokenizers.vq", "tokenizer", _LG_HUB + "vq_ds16_c2i.pt"),
    "llamagen-vq8": ("vargen.tokenizers.vq", "tokenizer", _LG_HUB + "vq_ds8_c2i.pt"),
    "llamagen-vq-tiny": ("vargen.tokenizers.vq", "tokenizer", ""),
    "mar-kl16": ("vargen.tokenizers.kl", "tokenizer", ""),
    "mar-kl-tiny": ("vargen.tokenizers.kl", "tokenizer", ""),
    "mingtok-vision": ("vargen.tokenizers.mingtok", "tokenizer", "inclusionAI/MingTok-Vision/model.safetensors"),
    "mingtok-tiny": ("vargen.tokenizers.mingtok", "tokenizer", ""),
    "larp-l-long": ("vargen.tokenizers.larp", "tokenizer", "hywang66/LARP-L-long-tokenizer/model.safetensors"),
    "larp-tiny": ("vargen.tokenizers.larp", "tokenizer", ""),
    "video-vq-tiny": ("vargen.tokenizers.video_vq", "tokenizer", ""),
    "sd-vae-ft-ema": (_VAE, "tokenizer", "stabilityai/sd-vae-ft-ema/diffusion_pytorch_model.bin"),
    "sd-vae-ft-mse": (_VAE, "tokenizer", "stabilityai/sd-vae-ft-mse/diffusion_pytorch_model.bin"),
    "mar-vae-kl16-diffusers": (_VAE, "tokenizer", "xwen99/mar-vae-kl16/diffusion_pytorch_model.safetensors"),
    "cont-ar-tiny": (_CAR, "generator", ""),
    "cont-ar-b": (_CAR, "generator", ""),
    "cont-ar-b-mingtok": (_CAR, "generator", ""),
    "digit-classifier": ("vargen.classifier", "classifier", "weights/digit-classifier"),
    "digit-classifier-tiny": ("vargen.classifier", "classifier", ""),
    "vq-mnist": (_MNIST, "tokenizer", "weights/vq-mnist"),
    "kl-mnist": (_MNIST, "tokenizer", "weights/kl-mnist"),
    "llamagen-mnist": (_MNIST, "generator", "weights/llamagen-mnist"),
    "nar-mnist": (_MNIST, "generator", "weights/nar-mnist"),
    "xar-mnist": (_MNIST, "generator", "weights/xar-mnist"),
    "mingtok-mnist": (_MNIST, "tokenizer", "weights/mingtok-mnist"),
    "video-vq-mnist": (_MNIST, "tokenizer", "weights/video-vq-mnist"),
    "cont-ar-mnist": (_MNIST, "generator", "weights/cont-ar-mnist"),
    "cont-ar-mingtok-mnist": (_MNIST, "generator", "weights/cont-ar-mingtok-mnist"),
    "nar-video-mnist": (_MNIST, "generator", "weights/nar-video-mnist"),
    "raster-video-mnist": (_MNIST, "generator", "weights/raster-video-mnist"),
}

# Modules whose register_pipeline calls define the named pipelines (no torch, no family).
PIPELINE_MODULES: Tuple[str, ...] = ("vargen.models.pipelines",)
