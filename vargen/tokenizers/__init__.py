"""Tokenizers: discrete VQ (images and video), continuous KL and MingTok, LARP (video), and any
diffusers AutoencoderKL. A family registers its models when its module is
imported (on first use, through the registry or an attribute of this package)."""
from vargen.lazy import lazy_exports

_EXPORTS = {
    ".base": ("Tokenizer",),
    ".kl": ("KLConfig", "KLTokenizer", "convert_mar_kl16"),
    ".vq": ("VQConfig", "VQTokenizer", "convert_llamagen_vq"),
    ".larp": ("LARPConfig", "LARPTokenizer", "convert_larp"),
    ".mingtok": ("MingTok", "MingTokConfig", "convert_mingtok"),
    ".video_vq": ("VideoVQConfig", "VideoVQTokenizer"),
    ".diffusers_vae": ("load_diffusers_vae", "to_diffusers"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
