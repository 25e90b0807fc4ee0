"""Generators. Importing this package registers every model family."""
from . import llamagen  # noqa: F401
from .llamagen import LlamaGen, LlamaGenConfig
from . import xar  # noqa: F401
from .xar import XAR, XARConfig
from . import nar  # noqa: F401
from .nar import NAR, NARConfig
from . import nar_video  # noqa: F401
from .nar_video import NARVideo, NARVideoConfig
from . import cont_ar  # noqa: F401
from .cont_ar import ContAR, ContARConfig
from . import mnist  # noqa: F401  (shipped MNIST models; after the families)
from . import pipelines  # noqa: F401

__all__ = ["LlamaGen", "LlamaGenConfig", "XAR", "XARConfig", "NAR", "NARConfig", "NARVideo", "NARVideoConfig",
           "ContAR", "ContARConfig"]
