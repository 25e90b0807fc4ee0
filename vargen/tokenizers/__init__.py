"""Tokenizers: discrete VQ and continuous KL. A family registers its models when its module is
imported (on first use, through the registry or an attribute of this package)."""
from vargen.lazy import lazy_exports

_EXPORTS = {
    ".base": ("Tokenizer",),
    ".kl": ("KLConfig", "KLTokenizer", "convert_mar_kl16"),
    ".vq": ("VQConfig", "VQTokenizer", "convert_llamagen_vq"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
