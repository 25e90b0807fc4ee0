"""vargen: a model zoo for autoregressive visual generation.

    >>> import vargen
    >>> vargen.list_models("nar*")
    >>> pipe = vargen.load_pipeline("nar-mnist")
    >>> images = pipe.generate([0, 1, 2], seed=0)   # [3, 3, 32, 32] in [-1, 1]
"""
from .lazy import lazy_exports
from .registry import Weights, create_model, get_entry, list_models, model_config, register_model

__getattr__ = lazy_exports(__name__, {".seeding": ("SampleRNG", "sample_seed")})  # torch on use

__version__ = "0.1.0"

__all__ = ["Weights", "create_model", "get_entry", "list_models", "model_config", "register_model",
           "SampleRNG", "sample_seed", "load_pipeline", "list_pipelines"]


def load_pipeline(name: str, **kwargs):
    from .pipeline import load_pipeline as _load
    return _load(name, **kwargs)


def list_pipelines(pattern: str = "*"):
    from .registry import list_pipelines as _list
    return _list(pattern)
