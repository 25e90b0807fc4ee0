"""Pipelines bundle a tokenizer, a generator network and a default sampler under one name.

    >>> pipe = vargen.load_pipeline("nar-mnist")
    >>> images = pipe.generate([3, 1, 4], seed=0)        # [3, 3, 32, 32] in [-1, 1]
    >>> images = pipe.generate([3], seed=0, cfg_scale=3.0)  # sampler options per call
    >>> pipe.transformer                                 # the network (diffusers' name), pipe.tokenizer

Sample ``i`` of a call draws its noise from ``(seed, sample_offset + i)``, so the same seed
gives the same image at any batch size.

``generate`` and diffusers' call convention (``pipelines/dit/pipeline_dit.py``) are one door:
the same arguments, defaults and checks, ``generate`` being ``pipe(..., output_type="pt")``'s
tensor::

    >>> out = pipe([3, 1, 4], guidance_scale=2.0,
    ...            generator=[torch.Generator().manual_seed(i) for i in range(3)])
    >>> out.images                                       # 3 PIL images (``.videos``: video pipelines)
    >>> pipe.save_pretrained("my-pipe")                  # pipeline.json + tokenizer/ + transformer/
    >>> pipe = vargen.load_pipeline("my-pipe", torch_dtype=torch.bfloat16)  # or a Hub repo id
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from vargen import checks
from vargen.hub import atomic_dir, recover_dir, resolve_file
from vargen.registry import (PipelineSpec, create_model, get_pipeline_spec, list_pipelines,  # noqa: F401
                             model_class_named)
from vargen.seeding import SampleRNG

PIPELINE_INDEX = "pipeline.json"  # diffusers' model_index.json: which component is which class
COMPONENTS = ("tokenizer", "transformer")
KINDS = {"tokenizer": "tokenizer", "transformer": "generator"}  # each component's registry kind
OLD_NAMES = {"transformer": "generator"}  # key and folder in pipelines saved before the rename
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
_SEED_HIGH = 2 ** 63 - 1


@dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: a list of PIL images (``"pil"``), ``[N, H, W, C]`` floats in [0, 1] (``"np"``),
    ``[N, C, H, W]`` in [-1, 1] as ``generate`` (``"pt"``) or the sampled tokens (``"latent"``)."""

    images: Union[List[Any], np.ndarray, torch.Tensor]


@dataclass
class VideoPipelineOutput(BaseOutput):
    """``videos``: one list of PIL frames per clip (``"pil"``, as ``diffusers.utils.export_to_video``
    takes), ``[N, T, H, W, C]`` floats in [0, 1] (``"np"``), ``[N, C, T, H, W]`` in [-1, 1] as
    ``generate`` (``"pt"``) or the sampled tokens (``"latent"``)."""

    videos: Union[List[List[Any]], np.ndarray, torch.Tensor]


class Pipeline:
    """``tokenizer`` (pixels <-> tokens), ``transformer`` (the generator network the sampler drives,
    diffusers' name for a DiT's denoiser) and the default ``sampler`` with its options."""

    def __init__(self, tokenizer: torch.nn.Module, transformer: torch.nn.Module, sampler: str = "raster",
                 sampler_options: Optional[Dict[str, Any]] = None, name: str = "",
                 text_encoder: Optional[torch.nn.Module] = None):
        self.tokenizer, self.transformer = tokenizer.eval(), transformer.eval()
        self.text_encoder = text_encoder.eval() if text_encoder is not None else None  # vargen.text
        if getattr(transformer, "uses_tokenizer", False):  # inputs embedded by the tokenizer (cont-AR + MingTok)
            transformer.attach_tokenizer(self.tokenizer)
        self.default_sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.name = name
        self.last_stats: Dict[str, Any] = {}
        self._progress_bar_config: Dict[str, Any] = {}

    @property
    def generator(self):
        raise AttributeError("Pipeline.generator is pipe.transformer now (the network, diffusers' "
                             "name); generator= of pipe(...) is the torch.Generator argument "
                             "(one per sample)")

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def is_video(self) -> bool:
        """Whether the network samples a ``(T, H, W)`` token grid (clips, not images)."""
        return len(self.transformer.token_grid) == 3

    def to(self, *args: Any, device: Union[str, torch.device, None] = None,
           dtype: Optional[torch.dtype] = None) -> "Pipeline":
        """Move and/or cast both models: ``to("cuda")``, ``to(torch.bfloat16)``, or both."""
        for arg in args:
            if arg is None:
                continue
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
        for model in (self.tokenizer, self.transformer):
            model.to(device=device, dtype=dtype)
        if self.text_encoder is not None:  # its own dtype (bf16 on GPU as released; fp16 overflows T5)
            self.text_encoder.to(device=device)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm options of the sampling bar, as diffusers (``disable=True`` switches it off; a
        call's ``progress=`` wins for that call)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, total: int, **overrides: Any) -> tqdm:
        options = {"desc": f"sampling {self.name}".rstrip(), "unit": "clip" if self.is_video else "img",
                   **self._progress_bar_config, **overrides}
        return tqdm(total=total, **options)

    def make_sampler(self, sampler: Any = None, **options: Any):
        """A sampler: ``sampler`` (a name, default the pipeline's, or a ``Sampler`` instance as it
        is) with the pipeline's options under ``options``. Another sampler than the default keeps
        the defaults that both declare as defining the target distribution (CFG, temperature,
        top-k/p: :meth:`Sampler.carried_options`), not the default's sampling settings."""
        from vargen.samplers import SAMPLERS, Sampler, create_sampler
        if isinstance(sampler, Sampler):
            if options:
                raise ValueError("pass options either to the Sampler instance or to generate, not both")
            return sampler
        name = sampler or self.default_sampler
        defaults = self.sampler_options
        if name != self.default_sampler and name in SAMPLERS:  # an unknown name: create_sampler's error
            defaults = SAMPLERS[name].carried_options(defaults, SAMPLERS.get(self.default_sampler))
        return create_sampler(name, **{**defaults, **options})

    @torch.no_grad()
    def generate(self, class_labels: Union[int, Sequence[int], torch.Tensor, str, Sequence[str], None] = None,
                 seed: Optional[int] = None, sample_offset: int = 0, sampler: Any = None, batch_size: int = 64,
                 progress: Optional[bool] = None, **sampler_options: Any) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` (clips ``[B, 3, T, H, W]``) in [-1, 1] for ``class_labels``:
        ``pipe(class_labels, ..., output_type="pt").images``, the same arguments and defaults
        (see :meth:`__call__`; ``generator=``, ``guidance_scale=`` and ``num_inference_steps=`` too)."""
        return self._run(class_labels, "pt", seed, sample_offset, sampler, batch_size, progress,
                         sampler_options)

    @torch.no_grad()
    def __call__(self, class_labels: Union[int, Sequence[int], torch.Tensor, str, Sequence[str], None] = None,
                 num_inference_steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                 generator: Union[torch.Generator, Sequence[torch.Generator], None] = None,
                 seed: Optional[int] = None, output_type: str = "pil", return_dict: bool = True,
                 sampler: Any = None, batch_size: int = 64, *, sample_offset: int = 0,
                 progress: Optional[bool] = None, **sampler_options: Any):
        """diffusers' call (``DiTPipeline.__call__``): ``.images`` (``.videos``) for ``class_labels``, or
        a text-to-image pipeline's ``prompt`` (str or list, or the first argument) and ``negative_prompt``.

        ``guidance_scale`` is the sampler's ``cfg_scale``; ``num_inference_steps`` a flow sampler's
        ``num_steps`` (a discrete sampler has no steps to set). Randomness is per sample: pass
        ``generator`` as a list of ``torch.Generator``, one per label (sample ``i`` depends only on
        ``generator[i]``, at any batch composition), or ``seed`` (sample ``i`` from ``(seed,
        sample_offset + i)``); with neither, a seed is drawn from torch's global RNG
        (``torch.manual_seed`` makes it reproducible). ``output_type``: ``"pil"``, ``"np"`` ([0, 1],
        channels last), ``"pt"`` (exactly ``generate``'s [-1, 1] tensor) or ``"latent"`` (the
        tokens). ``return_dict=False`` gives a one-element tuple. ``progress``: the bar for this
        call (default: :meth:`set_progress_bar_config`'s, on unless disabled). Other keywords are
        sampler options (``top_k=``, ``method=``). Every argument, the class labels (once, on the
        host) included, is checked before the network runs.
        """
        options = dict(sampler_options, generator=generator, guidance_scale=guidance_scale,
                       num_inference_steps=num_inference_steps)
        result = self._run(class_labels, output_type, seed, sample_offset, sampler, batch_size,
                           progress, options)
        if not return_dict:
            return (result,)
        if self.is_video:
            return VideoPipelineOutput(videos=result)
        return ImagePipelineOutput(images=result)

    def _run(self, class_labels: Any, output_type: str, seed: Optional[int], sample_offset: int,
             sampler: Any, batch_size: int, progress: Optional[bool], options: Dict[str, Any]) -> Any:
        """The one path of ``generate`` and ``__call__``: all arguments checked, then the batches
        sampled and decoded; ``options`` holds the sampler options and ``generator``,
        ``guidance_scale``, ``num_inference_steps`` (None: not given)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        from vargen.text import call_conditions  # class ids [B] or the prompts' caption features [B, L, D]
        labels, negatives = call_conditions(self, class_labels, options.pop("prompt", None),
                                            options.pop("negative_prompt", None))
        batch_size = checks.number("batch_size", batch_size, minimum=1, integer=True)
        sample_offset = checks.number("sample_offset", sample_offset, minimum=0, integer=True)
        generator = options.pop("generator", None)
        options = self._sampler_options(sampler, options)
        rng_for = self._rng_source(len(labels), generator, seed, sample_offset)
        sampler = self.make_sampler(sampler, **options)
        decoded = self._sample(labels, rng_for, sampler, batch_size, progress,
                               decode=output_type != "latent", negatives=negatives)
        return decoded if output_type in ("pt", "latent") else _postprocess(decoded, output_type)

    def _labels(self, class_labels: Union[int, Sequence[int], torch.Tensor]) -> torch.Tensor:
        """The call's one label check, on the host: a device tensor is copied once, then read
        there; batches go to the device afterwards, already checked."""
        from vargen.samplers.base import check_class_labels
        if torch.is_tensor(class_labels):
            class_labels = class_labels.cpu()
        labels = check_class_labels(self.transformer, class_labels, scalar=True)
        if labels.numel() == 0:
            raise ValueError("class_labels is empty: pass at least one class id")
        return labels

    def _sample(self, labels: torch.Tensor, rng_for: Callable[[int, int], SampleRNG], sampler: Any,
                batch_size: int, progress: Optional[bool], decode: bool = True,
                negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The batch loop; ``labels`` checked (on the host), ``rng_for(start, n)`` seeds labels
        ``start .. start + n``."""
        from vargen.text import negative_condition
        out, passes = [], 0
        with self.progress_bar(len(labels), **({} if progress is None else {"disable": not progress})) as bar, \
                checks.OutputWatch(self.transformer) as watch:
            for start in range(0, len(labels), batch_size):
                chunk = labels[start:start + batch_size]
                with negative_condition(self.transformer, negatives, slice(start, start + batch_size)):
                    tokens = sampler(self.transformer, chunk, rng_for(start, len(chunk)), labels_checked=True)
                watch.check(tokens, start, len(chunk))
                passes += sampler.stats.get("forward_passes", 0)
                out.append(self.tokenizer.decode(tokens).clamp(-1, 1).float().cpu() if decode
                           else tokens.cpu())
                bar.update(len(chunk))
        self.last_stats = {**sampler.stats, "forward_passes_total": passes}
        return torch.cat(out)

    def _sampler_options(self, sampler: Any, options: Dict[str, Any]) -> Dict[str, Any]:
        """diffusers' argument names -> the sampler's (``num_steps``, ``cfg_scale``), refused by name
        where the sampler (class) does not declare such an option."""
        from vargen.samplers import SAMPLERS, Sampler
        name = getattr(sampler, "name", None) or sampler or self.default_sampler
        cls = type(sampler) if isinstance(sampler, Sampler) else SAMPLERS.get(name)
        accepted = cls.option_names() if cls is not None else []  # an unknown name: make_sampler refuses
        options = dict(options)
        for argument, option in (("num_inference_steps", "num_steps"), ("guidance_scale", "cfg_scale")):
            value = options.pop(argument, None)
            if value is None:
                continue
            if option in options:
                raise ValueError(f"pass {argument} or {option}, not both")
            if option not in accepted:
                takers = sorted(n for n, c in SAMPLERS.items() if option in c.option_names())
                why = ("it is discrete, its forward passes are fixed by the token grid"
                       if option == "num_steps" else f"it has no {option}")
                raise ValueError(f"{argument} does not apply to the {name!r} sampler: {why}; "
                                 f"{argument} sets {option} of the {', '.join(takers)} samplers")
            if option == "num_steps" and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"num_inference_steps must be an int, got {value!r}")
            options[option] = value
        return options

    def _rng_source(self, n: int, generator: Any, seed: Optional[int],
                    sample_offset: int = 0) -> Callable[[int, int], SampleRNG]:
        """``rng_for(start, count)`` for labels ``start..start+count`` of a call of ``n`` labels."""
        if generator is not None and seed is not None:
            raise ValueError("pass generator (a list, one per sample) or seed, not both")
        if generator is None:
            if seed is None:
                seed = int(torch.randint(_SEED_HIGH, (1,)))  # torch's global RNG, like diffusers
            seed = checks.seed(seed)
            return lambda start, count: SampleRNG(
                seed, range(sample_offset + start, sample_offset + start + count), device=self.device)
        if sample_offset:
            raise ValueError("sample_offset numbers the samples of seed=; a generator list seeds "
                             "each sample itself: pass one or the other")
        if isinstance(generator, torch.Generator):
            if n != 1:
                raise ValueError(f"generator: one torch.Generator cannot seed {n} samples one by one; "
                                 f"pass a list with one per sample (generator=[torch.Generator()"
                                 f".manual_seed(s) for s in range({n})]) or seed=int")
            generator = [generator]
        if not (isinstance(generator, (list, tuple))
                and all(isinstance(g, torch.Generator) for g in generator)):
            raise TypeError(f"generator must be a torch.Generator or a list of them, got "
                            f"{type(generator).__name__}")
        if len(generator) != n:
            raise ValueError(f"generator: a list of {len(generator)} torch.Generators for {n} class "
                             f"labels; pass exactly one per sample")
        # One seed per sample, drawn from its own generator: sample i depends on generator[i] only.
        seeds = [int(torch.randint(_SEED_HIGH, (1,), generator=g, device=g.device)) for g in generator]
        return lambda start, count: SampleRNG.from_seeds(seeds[start:start + count], device=self.device)

    def save_pretrained(self, save_directory: Union[str, Path]) -> Path:
        """Write ``pipeline.json`` (component classes, sampler and options) plus ``tokenizer/``,
        ``transformer/`` (and ``text_encoder/``; each ``save_pretrained``), atomically: a killed save leaves
        nothing. An existing folder is replaced only if it is empty or a saved pipeline."""
        target = Path(save_directory)
        if target.exists() and (not target.is_dir() or (any(target.iterdir())
                                                        and not (target / PIPELINE_INDEX).is_file())):
            raise FileExistsError(f"{target} exists and is not a saved pipeline (no {PIPELINE_INDEX}); "
                                  f"choose another folder")
        index = {"_class_name": type(self).__name__, "_vargen_version": _version(), "name": self.name,
                 "sampler": self.default_sampler, "sampler_options": self.sampler_options,
                 **{c: ["vargen", type(getattr(self, c)).__name__] for c in COMPONENTS}}
        if self.text_encoder is not None:  # text-to-image: transformers' folder (vargen.text)
            index["text_encoder"] = ["transformers", type(self.text_encoder.encoder).__name__]
        text = json.dumps(index, indent=2, sort_keys=True)  # fails before anything is written

        def write(folder: Path) -> None:
            for component in COMPONENTS:
                getattr(self, component).save_pretrained(folder / component)
            if self.text_encoder is not None:
                self.text_encoder.save_pretrained(folder / "text_encoder")
            (folder / PIPELINE_INDEX).write_text(text)
        return atomic_dir(target, write)


def _postprocess(pixels: torch.Tensor, output_type: str) -> Union[np.ndarray, List[Any]]:
    """``[N, C, H, W]`` / ``[N, C, T, H, W]`` in [-1, 1] -> channels-last ``"np"`` in [0, 1], or PIL
    images (one list of frames per clip) from :func:`vargen.images.to_uint8`'s bytes."""
    from vargen.images import to_uint8
    last = (0, *range(2, pixels.dim()), 1)  # channels last: N(T)HWC
    if output_type == "np":
        return ((pixels + 1) / 2).permute(*last).numpy()
    from PIL import Image
    frames = to_uint8(pixels).permute(*last).numpy()
    frames = frames[..., 0] if frames.shape[-1] == 1 else frames  # grey: mode "L"
    if pixels.dim() == 5:
        return [[Image.fromarray(frame) for frame in clip] for clip in frames]
    return [Image.fromarray(image) for image in frames]


def _version() -> str:
    from importlib.metadata import version
    return version("vargen")


def load_pipeline(name: str, pretrained: bool = True, device: Union[str, torch.device] = "cpu",
                  tokenizer_weights: Any = None, generator_weights: Any = None,
                  torch_dtype: Optional[torch.dtype] = None, *, revision: Optional[str] = None,
                  cache_dir: Optional[str] = None, local_files_only: bool = False,
                  token: Optional[str] = None, text_encoder: Any = None) -> Pipeline:
    """Build pipeline ``name``: a registered name (its registered weights by default;
    ``pretrained=False``: random init; explicit ``*_weights``: a folder, Hub repo id or official
    checkpoint file), or a folder / Hub repo id written by :meth:`Pipeline.save_pretrained`
    (Hub cache and ``HF_HUB_OFFLINE`` respected; a registered name wins over a same-named folder,
    use ``./name``). ``torch_dtype`` casts both models (e.g. ``torch.bfloat16``). Text-to-image: its
    registered text encoder or ``text_encoder`` (repo id, folder or a loaded one; vargen.text)."""
    device = checks.device(device, "device")  # before any weights are read
    if name in list_pipelines():
        spec = get_pipeline_spec(name)
        tokenizer = create_model(spec.tokenizer, pretrained=tokenizer_weights or pretrained)
        transformer = create_model(spec.generator, pretrained=generator_weights or pretrained)
        from vargen.text import as_text_encoder  # transformers only where a text encoder loads
        encoder = as_text_encoder(text_encoder or spec.text_encoder, device=device, revision=revision,
                                  cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        pipe = Pipeline(tokenizer, transformer, spec.sampler, spec.sampler_options, name, encoder)
    else:
        if tokenizer_weights is not None or generator_weights is not None or pretrained is not True:
            raise ValueError("pretrained, tokenizer_weights and generator_weights apply to registered "
                             "pipeline names; a saved pipeline loads its own weights")
        pipe = _load_saved(name, revision=revision, cache_dir=cache_dir,
                           local_files_only=local_files_only, token=token)
    return pipe.to(device, torch_dtype)


def _load_saved(source: str, **hub_kwargs: Any) -> Pipeline:
    """A :meth:`Pipeline.save_pretrained` folder or Hub repo (any other name: the registry's error);
    one saved before the network was ``transformer`` (key and folder ``generator``) too."""
    if not os.path.isdir(source):
        recover_dir(Path(source))  # a save killed between the fallback's two renames: the old copy back
    if not os.path.isdir(source) and source.count("/") != 1:
        get_pipeline_spec(source)  # unknown pipeline: names the registered ones
    index_path = Path(resolve_file(source, PIPELINE_INDEX, **hub_kwargs))  # clear error if absent
    folder = index_path.parent
    if not os.path.isdir(source):  # a Hub repo: the components too (from the cache when offline)
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(source, **hub_kwargs))
        index_path = folder / PIPELINE_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {index_path}: {e}") from e
    models = {}
    for component in COMPONENTS:
        key = component if component in index else OLD_NAMES.get(component, component)
        entry = index.get(key)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "vargen"):
            raise ValueError(f"{index_path}: {component!r} must be [\"vargen\", CLASS], got {entry!r}")
        cls = model_class_named(entry[1], kind=KINDS[component], where=str(index_path))
        models[component] = cls.from_pretrained(folder / key)
    from vargen.text import as_text_encoder
    encoder = as_text_encoder(folder / "text_encoder" if "text_encoder" in index else None)
    return Pipeline(models["tokenizer"], models["transformer"], index.get("sampler", "raster"),
                    index.get("sampler_options", {}), index.get("name", ""), encoder)


__all__ = ["Pipeline", "ImagePipelineOutput", "VideoPipelineOutput", "load_pipeline", "PIPELINE_INDEX"]
