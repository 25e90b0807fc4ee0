"""Sampling loops. Each is a class with one call signature: ``sampler(model, labels, rng)``.

    raster    one token per forward pass with a KV cache (LlamaGen)
    sjd       speculative Jacobi decoding, lossless (any raster model)
    gsd       grouped speculative decoding (any raster model)
    neighbor  NAR's diagonal-by-diagonal decoding (2n-1 passes)
    flow      Euler-Maruyama SDE / Euler / Heun over continuous entities (xAR)
    token-flow  raster decoding with a per-token flow head (Ming-UniVision)

Each declares the model capability it drives (:mod:`vargen.samplers.capabilities`), checked
when it meets a model; the shared steps are :class:`Sampler`'s ``__call__``, guidance is
:class:`Guidance`. A new sampler is a new file (its protocol, a ``Sampler`` subclass with a
``sample`` method) plus one ``register_sampler`` line here; no model file changes.
"""
from typing import Dict, Type

from .base import Sampler
from .flow import FlowSampler
from .guidance import Guidance, cfg_labels
from .logits import LogitsFilter, LogitsProcessor
from .mar import MARSampler
from .neighbor import NeighborSampler
from .next_scale import NextScaleSampler
from .raster import RasterSampler
from .speculative import GSDSampler, SJDSampler
from .token_flow import TokenFlowSampler

SAMPLERS: Dict[str, Type[Sampler]] = {}


def register_sampler(cls: Type[Sampler]) -> Type[Sampler]:
    """Add a sampler under ``cls.name``. Its options are its constructor's named parameters,
    followed through ``**options`` into the parents' (:meth:`Sampler.option_names`): declare a new
    option by name, not by popping it from ``**options``, or :func:`create_sampler` refuses it."""
    SAMPLERS[cls.name] = cls
    return cls


for _cls in (RasterSampler, SJDSampler, GSDSampler, NeighborSampler, FlowSampler, TokenFlowSampler):
    register_sampler(_cls)
register_sampler(NextScaleSampler)  # VAR's next-scale prediction
register_sampler(MARSampler)  # MAR's masked random-order decoding with a diffusion head


def create_sampler(name: str, **options) -> Sampler:
    if name not in SAMPLERS:
        raise KeyError(f"unknown sampler {name!r}; available: {sorted(SAMPLERS)}")
    accepted = SAMPLERS[name].option_names()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"the {name!r} sampler has no option {', '.join(unknown)}; "
                        f"its options: {', '.join(accepted)}")
    return SAMPLERS[name](**options)


__all__ = ["Sampler", "Guidance", "LogitsFilter", "LogitsProcessor", "cfg_labels", "RasterSampler", "SJDSampler", "GSDSampler",
           "NeighborSampler", "FlowSampler", "TokenFlowSampler",
           "SAMPLERS", "register_sampler", "create_sampler"]
