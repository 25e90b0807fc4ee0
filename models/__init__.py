"""Generators. Each family registers its models when its module is imported; the registry
imports it on first use (``vargen.zoo`` says which module registers which name), and so does
reading an attribute here (``from vargen.models import NAR``)."""
from vargen.lazy import lazy_exports

_EXPORTS = {
    ".llamagen": ("LlamaGen", "LlamaGenConfig"),
    ".xar": ("XAR", "XARConfig"),
    ".nar": ("NAR", "NARConfig"),
    ".nar_video": ("NARVideo", "NARVideoConfig"),
    ".raster_video": ("RasterVideo", "RasterVideoConfig"),
    ".cont_ar": ("ContAR", "ContARConfig"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
