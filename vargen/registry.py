"""A timm-style model registry that keeps architecture apart from weights.

Every entry names a network class, a dataclass config preset, a training :class:`Recipe`, and a
:class:`Weights` record: where official or shipped weights live (Hub repo + file + sha256), how
an official checkpoint of the architecture is read (``converter``, ``prefer_ema``) and which
metrics its source reports. ``create_model(name, pretrained=...)`` builds the network and loads
weights strictly through :mod:`vargen.hub`.

A generator's registration may carry its pipeline (``pipeline=dict(tokenizer=..., sampler=...,
**sampler_options)``): a pipeline of the same name, so the spec sits with the model it runs.

Registration is lazy: :mod:`vargen.zoo` names the module that registers each name, and that
module is imported when one of its models or pipelines is looked up. Listing names imports
neither torch nor any model family; this module imports only the table and the recipes.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from vargen.recipes import DEFAULT as DEFAULT_RECIPE, Recipe
from vargen.zoo import MODELS

StateDict = Dict[str, Any]


@dataclass(frozen=True)
class Weights:
    """Where the weights of a registry entry come from, and how its official files are read.

    At most one of ``hub_repo`` (a Hugging Face repo id, with ``filename``) or ``local`` (a
    folder inside the installed ``vargen.weights`` package) is set; with neither, the record
    only says how official checkpoints of the architecture load (``pretrained=PATH``). Official
    pickle checkpoints go through ``converter`` (official state dict -> vargen state dict);
    ``prefer_ema`` takes their EMA weights first (MAR-family training checkpoints, whose
    evaluation runs ``model_ema``).
    """

    hub_repo: Optional[str] = None
    filename: Optional[str] = None
    local: Optional[str] = None
    sha256: Optional[str] = None
    converter: Optional[Callable[[StateDict], StateDict]] = None
    prefer_ema: bool = False
    official_safetensors: bool = False  # the official release is safetensors in its own key tree
    metrics: Dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        if self.hub_repo is not None and self.local is not None:
            raise ValueError("Weights takes one of hub_repo (with filename) or local, not both")
        if self.hub_repo is not None and not self.filename:
            raise ValueError(f"Weights for {self.hub_repo} needs a filename")

    @classmethod
    def shipped(cls, name: str, sha256: str, **fields: Any) -> "Weights":
        """A model shipped in ``weights/NAME`` (its model card: ``weights/NAME/README.md``)."""
        return cls(local=name, sha256=sha256, source=f"weights/{name}/README.md", **fields)

    @property
    def has_file(self) -> bool:
        return self.hub_repo is not None or self.local is not None

    @property
    def location(self) -> str:
        """``weights/NAME`` (shipped), ``REPO/FILE`` (Hub), or ``""`` (no registered file)."""
        if self.local:
            return f"weights/{self.local}"
        return f"{self.hub_repo}/{self.filename}" if self.hub_repo else ""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_cls: type
    config: Any
    weights: Weights = Weights()
    recipe: Recipe = DEFAULT_RECIPE  # optimiser defaults for ``vargen train``

    @property
    def kind(self) -> str:
        return getattr(self.model_cls, "kind", "generator")

    @property
    def trains_on(self) -> str:
        """The data ``vargen train`` feeds the model: ``"images"`` or ``"tokens"``."""
        return getattr(self.model_cls, "trains_on", "images")

    @property
    def pretrained(self) -> bool:
        """Whether a weights file is registered (``create_model(name, pretrained=True)``)."""
        return self.weights.has_file


_REGISTRY: Dict[str, ModelEntry] = {}


def register_model(name: str, model_cls: type, config: Any, weights: Optional[Weights] = None,
                   converter: Optional[Callable[[StateDict], StateDict]] = None,
                   recipe: Optional[Recipe] = None,
                   pipeline: Optional[Dict[str, Any]] = None) -> ModelEntry:
    """Register ``name`` (call it in the family's module; add the name to :mod:`vargen.zoo`).

    ``weights`` says where its weights are and how official checkpoints load; ``converter`` is
    shorthand for ``Weights(converter=...)``. ``recipe`` fills the optimiser options a
    ``vargen train`` run leaves unset (default: the class's ``default_recipe``, else
    ``recipes.DEFAULT``). ``pipeline`` (generators) registers the pipeline ``name``:
    ``dict(tokenizer=NAME, sampler=NAME, **sampler_options)``, the sampler defaulting to the
    class's ``default_sampler`` (text-to-image: ``text_encoder=REPO_OR_FOLDER`` too).
    """
    _check_name(name, "model")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config of {name!r} must be a dataclass instance, got {type(config)}")
    weights = weights or Weights()
    if converter is not None:
        if weights.converter not in (None, converter):
            raise ValueError(f"{name!r}: two converters given (weights.converter and converter)")
        weights = dataclasses.replace(weights, converter=converter)
    recipe = recipe or getattr(model_cls, "default_recipe", DEFAULT_RECIPE)
    entry = ModelEntry(name, model_cls, config, weights, recipe)
    if pipeline is not None:
        options = dict(pipeline)
        tokenizer = options.pop("tokenizer", None)
        if not tokenizer:
            raise ValueError(f"{name!r}: pipeline=dict(tokenizer=NAME, ...) needs the tokenizer's name")
        sampler = options.pop("sampler", getattr(model_cls, "default_sampler", "raster"))
        text_encoder = options.pop("text_encoder", None)
        _PIPELINES[name] = PipelineSpec(name, tokenizer, name, sampler, options, text_encoder)
    _REGISTRY[name] = entry
    return entry


def _check_name(name: str, what: str) -> None:
    if name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"{what} names are lowercase and dashed, got {name!r}")


def list_models(pattern: str = "*", kind: Optional[str] = None, pretrained: bool = False) -> List[str]:
    """Registered names matching a shell-style ``pattern`` (``"nar*"``), sorted; imports nothing."""
    names = set(MODELS) | set(_REGISTRY)

    def keep(n: str) -> bool:
        n_kind, location = model_summary(n)
        return (fnmatch.fnmatch(n, pattern) and (kind is None or n_kind == kind)
                and (not pretrained or bool(location)))
    return sorted(n for n in names if keep(n))


def model_summary(name: str) -> tuple:
    """``(kind, weights location or "")`` of ``name`` without importing its module."""
    e = _REGISTRY.get(name)
    if e is not None:
        return e.kind, e.weights.location
    if name not in MODELS:
        get_entry(name)  # the unknown-name error
    return MODELS[name].kind, MODELS[name].weights


def get_entry(name: str) -> ModelEntry:
    """The entry of ``name``, importing the module that registers it on first use."""
    if name not in _REGISTRY and name in MODELS:
        importlib.import_module(MODELS[name].module)
        if name not in _REGISTRY:
            raise RuntimeError(f"vargen.zoo says {MODELS[name].module} registers {name!r}, but "
                               f"importing it did not")
    if name not in _REGISTRY:
        known = list_models()
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} See vargen.list_models() for all "
                       f"{len(known)} names.")
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


def create_model(name: str, pretrained: Union[bool, str, Path] = False, **overrides: Any):
    """Build a registered network, optionally with weights.

    ``pretrained`` is ``False`` (random init), ``True`` (the entry's registered weights), or a
    path / Hub repo id: a folder or repo saved by ``save_pretrained``, a ``.safetensors`` file,
    or an official ``.pt``/``.pth``/``.ckpt`` checkpoint (read as the entry's ``Weights`` say).
    """
    from vargen import hub

    entry = get_entry(name)
    config = model_config(name, **overrides)
    if pretrained is False or pretrained is None:
        return entry.model_cls(config)
    if pretrained is True:
        if not entry.pretrained:
            raise ValueError(f"{name!r} has no registered weights; pass pretrained=PATH_OR_REPO "
                             f"or see vargen.list_models(pretrained=True)")
        return hub.load_registered(entry, config)
    return hub.load_from(entry.model_cls, config, pretrained, converter=entry.weights.converter,
                         prefer_ema=entry.weights.prefer_ema,
                         official_safetensors=entry.weights.official_safetensors,
                         strict_config=not overrides)


def load_tokenizer(spec: Union[str, Path], device: Any = None):
    """A tokenizer, in eval mode, from a ``save_pretrained`` folder or a registered name with
    weights (what ``vargen train --tokenizer``, ``vargen recon`` and a generator that embeds
    through its tokenizer take)."""
    import os
    from vargen.hub import saved_class_name
    spec = str(spec)
    if os.path.isdir(spec):
        model = model_class_named(saved_class_name(spec), kind="tokenizer", where=spec).from_pretrained(spec)
    else:
        entry = get_entry(spec)
        if entry.kind != "tokenizer":
            raise ValueError(f"tokenizer {spec!r} is a registered {entry.kind}, not a tokenizer")
        if not entry.pretrained:
            raise ValueError(f"tokenizer {spec!r} has no registered weights: train it first "
                             f"(vargen train --model {spec} ...) and pass its OUT/final folder")
        model = create_model(spec, pretrained=True)
    return model.to(device).eval() if device is not None else model.eval()


# ----------------------------------------------------------------------------- pipelines
@dataclass(frozen=True)
class PipelineSpec:
    name: str
    tokenizer: str
    generator: str
    sampler: str = "raster"
    sampler_options: Dict[str, Any] = field(default_factory=dict)
    text_encoder: Optional[str] = None  # text-to-image: a Hub repo id or folder (vargen.text)


_PIPELINES: Dict[str, PipelineSpec] = {}


def list_pipelines(pattern: str = "*") -> List[str]:
    """Pipeline names matching ``pattern``, sorted; from the zoo table, importing nothing."""
    names = {n for n, z in MODELS.items() if z.pipeline} | set(_PIPELINES)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def get_pipeline_spec(name: str) -> PipelineSpec:
    """The spec of pipeline ``name``, importing the one module that registers it."""
    if name not in _PIPELINES and name in MODELS and MODELS[name].pipeline:
        get_entry(name)
        if name not in _PIPELINES:
            raise RuntimeError(f"vargen.zoo says {MODELS[name].module} registers the pipeline "
                               f"{name!r}, but its register_model call has no pipeline=")
    if name not in _PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; available: {list_pipelines()}")
    return _PIPELINES[name]
