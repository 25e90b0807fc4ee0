"""A timm-style model registry that keeps architecture apart from weights.

Every entry names a network class, a dataclass config preset, and optionally a :class:`Weights`
record saying where official or shipped weights live (Hub repo + file + sha256 + converter) and
which metrics their source reports. ``create_model(name, pretrained=...)`` builds the network
and loads weights strictly through :mod:`vargen.hub`.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch.nn as nn

from vargen.training.recipes import DEFAULT as DEFAULT_RECIPE, Recipe

StateDict = Dict[str, Any]


@dataclass(frozen=True)
class Weights:
    """Where the weights of a registry entry come from.

    Exactly one of ``hub_repo`` (a Hugging Face repo id, with ``filename``) or ``local`` (a
    folder inside the installed ``vargen.weights`` package) is set. Official pickle checkpoints
    go through ``converter`` (official state dict -> vargen state dict).
    """

    hub_repo: Optional[str] = None
    filename: Optional[str] = None
    local: Optional[str] = None
    sha256: Optional[str] = None
    converter: Optional[Callable[[StateDict], StateDict]] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        if (self.hub_repo is None) == (self.local is None):
            raise ValueError("Weights needs exactly one of hub_repo (with filename) or local")
        if self.hub_repo is not None and not self.filename:
            raise ValueError(f"Weights for {self.hub_repo} needs a filename")

    @property
    def location(self) -> str:
        return f"weights/{self.local}" if self.local else f"{self.hub_repo}/{self.filename}"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_cls: type
    config: Any
    weights: Optional[Weights] = None
    converter: Optional[Callable[[StateDict], StateDict]] = None
    recipe: Optional[Recipe] = None  # optimiser defaults for ``vargen train``

    def __post_init__(self):
        if self.recipe is None:  # the family's default, else vargen's
            object.__setattr__(self, "recipe", getattr(self.model_cls, "default_recipe", DEFAULT_RECIPE))

    @property
    def kind(self) -> str:
        return getattr(self.model_cls, "kind", "generator")

    @property
    def trains_on(self) -> str:
        """The data ``vargen train`` feeds the model: ``"images"`` or ``"tokens"``."""
        return getattr(self.model_cls, "trains_on", "images")


_REGISTRY: Dict[str, ModelEntry] = {}


def register_model(name: str, model_cls: type, config: Any, weights: Optional[Weights] = None,
                   converter: Optional[Callable[[StateDict], StateDict]] = None,
                   recipe: Optional[Recipe] = None) -> ModelEntry:
    """Register ``name``; ``converter`` maps an official checkpoint's keys to vargen's;
    ``recipe`` (a :class:`vargen.training.recipes.Recipe`) fills the optimiser options a
    ``vargen train`` run leaves unset (default: the class's ``default_recipe``, else
    ``recipes.DEFAULT``)."""
    if name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"model names are lowercase and dashed, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of {name!r} must be a dataclass instance, got {type(config)}")
    if weights is not None and converter is not None and weights.converter is None:
        weights = dataclasses.replace(weights, converter=converter)
    entry = ModelEntry(name, model_cls, config, weights, converter, recipe)
    _REGISTRY[name] = entry
    return entry


def _ensure_builtin_models() -> None:
    # Importing the model packages runs their register_model calls.
    import vargen.models  # noqa: F401
    import vargen.tokenizers  # noqa: F401
    import vargen.classifier  # noqa: F401


def list_models(pattern: str = "*", kind: Optional[str] = None, pretrained: bool = False) -> List[str]:
    """Registered names matching a shell-style ``pattern`` (``"nar*"``), sorted."""
    _ensure_builtin_models()
    names = [n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern)
             and (kind is None or e.kind == kind) and (not pretrained or e.weights is not None)]
    return sorted(names)


def get_entry(name: str) -> ModelEntry:
    _ensure_builtin_models()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} See vargen.list_models() for all "
                       f"{len(_REGISTRY)} names.")
    return _REGISTRY[name]


def model_class_named(class_name: Optional[str], kind: Optional[str] = None, where: str = "") -> type:
    """The registered class called ``class_name`` (a saved folder's ``_class_name``)."""
    classes = {get_entry(n).model_cls.__name__: get_entry(n).model_cls for n in list_models(kind=kind)}
    if class_name not in classes:
        what = f"a registered {kind}" if kind else "a registered model"
        raise ValueError(f"{where or 'the folder'} does not hold {what} (config.json class "
                         f"{class_name!r}; known: {sorted(classes)})")
    return classes[class_name]


def model_config(name: str, **overrides: Any) -> Any:
    """The entry's config preset with ``overrides`` applied (unknown fields are an error)."""
    config = get_entry(name).config
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{name}: unknown config field(s) {unknown}; "
                        f"{type(config).__name__} has {sorted(known)}")
    return dataclasses.replace(config, **overrides)


def create_model(name: str, pretrained: Union[bool, str, Path] = False, **overrides: Any) -> nn.Module:
    """Build a registered network, optionally with weights.

    ``pretrained`` is ``False`` (random init), ``True`` (the entry's registered weights), or a
    path / Hub repo id: a folder or repo saved by ``save_pretrained``, a ``.safetensors`` file,
    or an official ``.pt``/``.pth``/``.ckpt`` checkpoint (read with the entry's converter).
    """
    from vargen import hub

    entry = get_entry(name)
    config = model_config(name, **overrides)
    if pretrained is False or pretrained is None:
        return entry.model_cls(config)
    if pretrained is True:
        if entry.weights is None:
            raise ValueError(f"{name!r} has no registered weights; pass pretrained=PATH_OR_REPO "
                             f"or see vargen.list_models(pretrained=True)")
        return hub.load_registered(entry, config)
    return hub.load_from(entry.model_cls, config, pretrained, converter=entry.converter,
                         strict_config=not overrides)
