"""Pipelines bundle a tokenizer, a generator and a default sampler under one name.

    >>> pipe = vargen.load_pipeline("nar-mnist")
    >>> images = pipe.generate([3, 1, 4], seed=0)        # [3, 3, 32, 32] in [-1, 1]
    >>> images = pipe.generate([3], seed=0, cfg_scale=3.0)  # sampler options per call

Sample ``i`` of a call draws its noise from ``(seed, sample_offset + i)``, so the same seed
gives the same image at any batch size.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from vargen import checks
from vargen.registry import (PipelineSpec, create_model, get_pipeline_spec, list_pipelines,  # noqa: F401
                             register_pipeline)
from vargen.seeding import SampleRNG


class Pipeline:
    def __init__(self, tokenizer: torch.nn.Module, generator: torch.nn.Module, sampler: str = "raster",
                 sampler_options: Optional[Dict[str, Any]] = None, name: str = ""):
        self.tokenizer = tokenizer.eval()
        self.generator = generator.eval()
        if getattr(generator, "uses_tokenizer", False):  # inputs embedded by the tokenizer (cont-AR + MingTok)
            generator.attach_tokenizer(self.tokenizer)
        self.default_sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.name = name
        self.last_stats: Dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: Union[str, torch.device]) -> "Pipeline":
        self.tokenizer.to(device)
        self.generator.to(device)
        return self

    def make_sampler(self, sampler: Any = None, **options: Any):
        from vargen.samplers import Sampler, create_sampler
        if isinstance(sampler, Sampler):
            if options:
                raise ValueError("pass options either to the Sampler instance or to generate, not both")
            return sampler
        name = sampler or self.default_sampler
        defaults = self.sampler_options
        if name != self.default_sampler:
            # Another sampler keeps the pipeline's target distribution (CFG, temperature, top-k/p).
            from dataclasses import fields
            from vargen.samplers import LogitsProcessor
            shared = {f.name for f in fields(LogitsProcessor)}
            defaults = {k: v for k, v in defaults.items() if k in shared}
        return create_sampler(name, **{**defaults, **options})

    @torch.no_grad()
    def generate(self, class_labels: Union[Sequence[int], torch.Tensor], seed: int = 0,
                 sample_offset: int = 0, sampler: Any = None, batch_size: int = 64,
                 progress: bool = False, **sampling_options: Any) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] for ``class_labels`` (a sequence or 1-D tensor of ints)."""
        labels = checks.class_labels(class_labels, name="class_labels", scalar=True)  # the range: the sampler's check
        if labels.numel() == 0:
            raise ValueError("class_labels is empty: pass at least one class id")
        seed = checks.seed(seed)
        sample_offset = checks.number("sample_offset", sample_offset, minimum=0, integer=True)
        batch_size = checks.number("batch_size", batch_size, minimum=1, integer=True)
        sampler = self.make_sampler(sampler, **sampling_options)
        out, passes = [], 0
        bar = tqdm(total=len(labels), desc=f"sampling {self.name}", unit="img", disable=not progress)
        for start in range(0, len(labels), batch_size):
            chunk = labels[start:start + batch_size].to(self.device)
            rng = SampleRNG(seed, range(sample_offset + start, sample_offset + start + len(chunk)),
                            device=self.device)
            tokens = sampler(self.generator, chunk, rng)
            passes += sampler.stats.get("forward_passes", 0)
            out.append(self.tokenizer.decode(tokens).clamp(-1, 1).float().cpu())
            bar.update(len(chunk))
        bar.close()
        self.last_stats = {**sampler.stats, "forward_passes_total": passes}
        return torch.cat(out)


def load_pipeline(name: str, pretrained: bool = True, device: Union[str, torch.device] = "cpu",
                  tokenizer_weights: Any = None, generator_weights: Any = None) -> Pipeline:
    """Build pipeline ``name``: registered weights by default (``pretrained=False``: random
    init), or explicit ``*_weights`` (a folder, Hub repo id or official checkpoint file)."""
    device = checks.device(device, "device")  # before any weights are read
    spec = get_pipeline_spec(name)
    tokenizer = create_model(spec.tokenizer, pretrained=tokenizer_weights or pretrained)
    generator = create_model(spec.generator, pretrained=generator_weights or pretrained)
    return Pipeline(tokenizer, generator, spec.sampler, spec.sampler_options, name).to(device)
