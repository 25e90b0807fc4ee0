"""Sampling loops. Each is a class with one call signature: ``sampler(model, labels, rng)``."""
from typing import Dict, Type

from .base import Sampler
from .logits import LogitsProcessor, cfg_labels
from .raster import RasterSampler

SAMPLERS: Dict[str, Type[Sampler]] = {"raster": RasterSampler}


def register_sampler(cls: Type[Sampler]) -> Type[Sampler]:
    SAMPLERS[cls.name] = cls
    return cls


def create_sampler(name: str, **options) -> Sampler:
    if name not in SAMPLERS:
        raise KeyError(f"unknown sampler {name!r}; available: {sorted(SAMPLERS)}")
    return SAMPLERS[name](**options)


__all__ = ["Sampler", "LogitsProcessor", "cfg_labels", "RasterSampler", "SAMPLERS",
           "register_sampler", "create_sampler"]

from .speculative import GSDSampler, SJDSampler  # noqa: E402

register_sampler(SJDSampler)
register_sampler(GSDSampler)
__all__ += ["SJDSampler", "GSDSampler"]

from .neighbor import NeighborSampler  # noqa: E402

register_sampler(NeighborSampler)
__all__ += ["NeighborSampler"]

from .flow import FlowSampler  # noqa: E402

register_sampler(FlowSampler)
__all__ += ["FlowSampler"]
