"""The sampler skeleton: one call signature for all models, the shared steps written once.

``sampler(model, labels, rng) -> tokens`` where ``tokens`` is ``[B, *token_grid]`` ids (discrete
generators) or ``[B, C, *token_grid]`` latents (continuous ones), and ``sampler.stats``
afterwards holds at least ``forward_passes`` (generator calls, a CFG-doubled batch counting
once). ``__call__`` checks that the model has the sampler's ``capability`` and that the labels
and generators fit, moves the labels to the model's device, runs :meth:`Sampler.sample` without
gradients, and clears the model's KV cache however sampling ends.

Labels are checked once per sampling call, where they are (:func:`check_class_labels`: on the
host for Python ints or a CPU tensor, so no device sync). A pipeline checks a whole call before
any batch runs and hands each batch in with ``labels_checked=True``; a direct call is checked here.

Each sampler class declares its options: :meth:`Sampler.option_names` (what its constructor
takes) and :meth:`Sampler.distribution_options` (those that define the distribution it samples,
which a pipeline's defaults carry to another sampler: :meth:`Sampler.carried_options`).
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple

import torch

from vargen import checks
from vargen.seeding import SampleRNG

from .capabilities import Conditional, require
from .guidance import Guidance
from .logits import LogitsFilter, LogitsProcessor

# Option names that define the target distribution wherever a sampler takes them: guidance and
# temperature / filtering (what Guidance and LogitsFilter read), never steps, windows or methods.
TARGET_OPTIONS: Tuple[str, ...] = Guidance.OPTIONS + LogitsFilter.OPTIONS


def check_class_labels(model: Any, labels: Any, *, name: str = "class_labels",
                       scalar: bool = False) -> torch.Tensor:
    """The one label check of a sampling call: integer ids of shape ``[B]`` (float ids are never
    truncated nor a 2-D batch flattened; one id stands for ``[id]`` if ``scalar``) within
    ``model``'s classes (``model.check_labels``, no null class); ``[B]`` long. The ids are read
    where they are: Python ints or a CPU tensor cost no device sync."""
    labels = checks.class_labels(labels, name=name, scalar=scalar)
    model.check_labels(labels, allow_null=False)
    return labels


def check_labels(model: Any, labels: Any) -> torch.Tensor:
    """A direct sampler call's conditions: class ids (:func:`check_class_labels`), or for a
    text-conditioned model its caption features ``[B, L, D]`` (``model.check_labels``)."""
    if getattr(model, "is_text_conditioned", False) and torch.is_tensor(labels) and labels.is_floating_point():
        model.check_labels(labels)
        return labels
    return check_class_labels(model, labels)


class Sampler:
    name = "base"
    capability: type = Conditional  # the protocol (samplers/capabilities.py) this sampler drives
    # The options that define the distribution this sampler draws from, as opposed to how it
    # draws it; None: those of its options named in TARGET_OPTIONS (distribution_options).
    target_options: Optional[Tuple[str, ...]] = None

    def __init__(self) -> None:
        self.stats: Dict[str, Any] = {}

    @torch.no_grad()
    def __call__(self, model: Any, labels: torch.Tensor, rng: SampleRNG, *,
                 labels_checked: bool = False) -> torch.Tensor:
        """Tokens for class ``labels [B]`` (a text model: caption features ``[B, L, D]``), sample
        ``i`` drawn from ``rng``'s generator ``i``.

        ``labels_checked=True``: ``labels`` is a long ``[B]`` tensor that already passed
        :func:`check_class_labels` for ``model`` (a pipeline checks all labels of a call once, on
        the host, before its first batch); they are not read again.
        """
        require(model, self.capability, self.name)
        if not labels_checked:
            labels = check_labels(model, labels)
        if len(rng) != labels.shape[0]:
            raise ValueError(f"{len(rng)} per-sample generators for {labels.shape[0]} labels")
        labels = labels.to(model.device)
        try:
            return self.sample(model, labels, rng)
        finally:
            model.clear_cache()

    def sample(self, model: Any, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        """The loop: ``labels [B]`` (checked, on the model's device) -> tokens; sets ``stats``."""
        raise NotImplementedError

    @classmethod
    def option_names(cls) -> List[str]:
        """The options this sampler accepts: the keywords its constructor takes, following
        ``**options`` up to the parents (declare an option by naming it there)."""
        names: List[str] = []
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]
            names += [p.name for p in params if p.kind is not p.VAR_KEYWORD and p.name not in names]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    @classmethod
    def distribution_options(cls) -> List[str]:
        """The accepted options that define the distribution this sampler draws from (guidance,
        temperature, top-k / top-p), as opposed to how it draws it (steps, window, method):
        ``target_options`` where the class declares them, else its options named in
        ``TARGET_OPTIONS``."""
        declared = TARGET_OPTIONS if cls.target_options is None else cls.target_options
        accepted = cls.option_names()
        return [name for name in declared if name in accepted]

    @classmethod
    def carried_options(cls, defaults: Dict[str, Any], source: Optional[type] = None) -> Dict[str, Any]:
        """Of ``defaults`` (a pipeline's options for sampler class ``source``), those this sampler
        takes over when it is chosen instead: the options both classes declare as defining the
        target distribution (:meth:`distribution_options`); how ``source`` samples stays behind."""
        shared = set(cls.distribution_options())
        if source is not None:
            shared &= set(source.distribution_options())
        return {k: v for k, v in defaults.items() if k in shared}


class DiscreteSampler(Sampler):
    """A sampler over token ids: holds the shared logits processing (CFG, temperature, top-k/p)."""

    target_options = LogitsProcessor.OPTIONS

    def __init__(self, cfg_scale: float = 1.0, cfg_schedule: str = "constant", cfg_interval: int = -1,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, cfg_power: float = 1.0):
        super().__init__()
        self.logits = LogitsProcessor(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, cfg_interval=cfg_interval,
                                      cfg_power=cfg_power, temperature=temperature, top_k=top_k, top_p=top_p)
