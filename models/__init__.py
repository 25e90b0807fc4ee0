"""Generators. Importing this package registers every model family."""
from . import llamagen  # noqa: F401
from .llamagen import LlamaGen, LlamaGenConfig

__all__ = ["LlamaGen", "LlamaGenConfig"]
