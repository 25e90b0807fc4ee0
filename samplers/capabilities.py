"""What samplers need from a model: typed protocols, checked when a sampler meets a model.

Each sampler names the capability it drives (``Sampler.capability``); :func:`require` checks a
model against it before sampling and names what is missing. A model (any object, a
``vargen.models`` generator or not) has a capability by having its methods and attributes; no
model lists the samplers it supports, so adding a sampler touches no model file. A new sampler
declares its protocol next to it, built from these pieces.

    Conditional       class labels: ``num_classes``, ``null_class`` (CFG), ``device``, ``check_labels``
    Cached            ``setup_cache(batch, max_len)`` / ``clear_cache()`` (the sampler skeleton clears)
    RasterDecoding    next-token logits over a KV cache: ``prefill``, ``decode`` (LlamaGen)
    SpeculativeDecoding  raster decoding with per-row cache truncation (SJD, GSD)
    TokenEmbedding    ``token_embedding() -> [V, D]`` (GSD's token distances)
    NeighborDecoding  per-neighbour features along a diagonal schedule (NAR)
    EntityFlow        a velocity over entities of continuous tokens (xAR)

A sampler with a new kind of model declares its protocol in its own file, built from these
pieces (``TokenFlowDecoding`` in ``token_flow.py``), and marks the methods that run the network
once per step with :func:`forward_pass`: :mod:`vargen.speed` compiles exactly those, so no list
of method names is kept anywhere else.
"""
from __future__ import annotations

import inspect
from typing import Any, Generic, List, Optional, Protocol, Tuple, runtime_checkable

import torch


def forward_pass(method):
    """Mark a protocol method that runs the network once per sampler step (what
    :func:`vargen.speed.compile_steps` compiles; :func:`step_methods` lists them)."""
    method.runs_network = True
    return method


@runtime_checkable
class Conditional(Protocol):
    num_classes: int
    null_class: Optional[int]  # None: no null row, no CFG
    device: torch.device

    def check_labels(self, labels: torch.Tensor, allow_null: bool = False) -> None: ...


@runtime_checkable
class Cached(Protocol):
    def setup_cache(self, batch_size: int, max_len: Optional[int] = None) -> None: ...

    def clear_cache(self) -> None: ...


@runtime_checkable
class RasterDecoding(Conditional, Cached, Protocol):
    token_grid: Tuple[int, ...]

    @forward_pass
    def prefill(self, labels: torch.Tensor) -> torch.Tensor:
        """Feed the condition; next-token logits ``[B, V]``."""

    @forward_pass
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append ``tokens [B, T]`` at raster ``positions``; next-token logits ``[B, T, V]``."""


@runtime_checkable
class SpeculativeDecoding(RasterDecoding, Protocol):
    vocab_size: int
    max_cache_len: int
    cache_length: Optional[int]

    def truncate_cache(self, n: Any) -> None: ...


@runtime_checkable
class TokenEmbedding(Protocol):
    vocab_size: int

    def token_embedding(self) -> torch.Tensor: ...


@runtime_checkable
class NeighborDecoding(Conditional, Cached, Protocol):
    token_grid: Tuple[int, ...]
    vocab_size: int
    num_heads: int

    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def neighbor_schedule(self) -> list: ...

    @forward_pass
    def prefill_features(self, labels: torch.Tensor) -> torch.Tensor: ...

    @forward_pass
    def decode_features(self, tokens: torch.Tensor, positions: torch.Tensor,
                        mask: Optional[torch.Tensor] = None) -> torch.Tensor: ...

    @forward_pass
    def neighbor_logits(self, weighted: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class EntityFlow(Conditional, Cached, Protocol):
    partition: Any
    latent_channels: int

    @forward_pass
    def velocity(self, x: torch.Tensor, t: Any, labels: torch.Tensor, entity: int,
                 context: Optional[torch.Tensor] = None) -> torch.Tensor: ...


def members(capability: type) -> List[str]:
    """The attributes and methods a protocol (with its bases) asks for."""
    names: List[str] = []
    for klass in reversed(capability.__mro__):
        if klass in (object, Protocol, Generic) or not getattr(klass, "_is_protocol", False):
            continue
        own = [*getattr(klass, "__annotations__", {}),
               *(n for n, v in vars(klass).items() if callable(v))]
        names += [n for n in own if not n.startswith("_") and n not in names]
    return names


def step_methods(capability: type) -> List[str]:
    """The :func:`forward_pass` methods of a protocol and its bases."""
    names: List[str] = []
    for klass in reversed(capability.__mro__):
        names += [n for n, v in vars(klass).items() if getattr(v, "runs_network", False) and n not in names]
    return names


def missing(model: Any, capability: type) -> List[str]:
    """Members of ``capability`` that ``model`` lacks (looked up without running properties)."""
    absent = object()
    return [n for n in members(capability) if inspect.getattr_static(model, n, absent) is absent
            and not _module_attribute(model, n)]


def _module_attribute(model: Any, name: str) -> bool:
    # nn.Module keeps submodules, parameters and buffers outside __dict__.
    return any(name in getattr(model, store, {}) for store in ("_modules", "_parameters", "_buffers"))


def require(model: Any, capability: type, sampler: str) -> None:
    """Refuse ``model`` for ``sampler`` unless it has ``capability``, naming what is missing."""
    lacking = missing(model, capability)
    if lacking:
        raise TypeError(f"the {sampler!r} sampler cannot drive {type(model).__name__}: it needs the "
                        f"{capability.__name__} capability, and {type(model).__name__} lacks "
                        f"{', '.join(lacking)}")

