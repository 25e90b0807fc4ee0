"""Speed options of sampling: the network's dtype, ``torch.compile`` of its step methods, and
reuse of freed host memory.

    >>> pipe = vargen.load_pipeline("nar-mnist", torch_dtype=torch.bfloat16)
    >>> vargen.speed.compile_steps(pipe.transformer)   # or load_fast_pipeline(name, compile=True)
    >>> images = pipe.generate([3, 1, 4], seed=0)

**dtype.** A generator cast to bf16 runs its network (and its KV cache) in bf16; every sampler
does its probability, guidance and ODE math in float32 or float64 (``samplers/guidance.py``'s
``full_precision``, flow velocities in float64), so only the network's rounding changes.

**compile.** :func:`compile_steps` wraps the methods a sampler calls once per forward pass
(:func:`step_methods`: the methods the samplers' capability protocols mark with
``@forward_pass``) in ``torch.compile`` on the model instance; samplers and the rest of
the model are untouched. The KV cache's fill length is a plain int that changes every step, so the
steps are traced with ``dynamic=True`` and with ints held by modules unspecialised (dynamo would
otherwise recompile once per cache length and give up after its recompile limit). Where compiling
fails (no C++ compiler, an unsupported op, ``torch.compile`` itself unavailable) the model falls
back to its eager methods with one warning, after rolling every KV cache back to its state before
the failed call (a partly run step must not append twice), and sampling goes on.

**freed memory.** :func:`keep_freed_memory` has glibc's malloc keep large freed blocks for reuse
(as the CUDA caching allocator does for device memory) instead of handing them back to the OS
and faulting fresh zeroed pages in on the next allocation, which wide passes (VAR's last scales,
logits over a codebook) otherwise pay on every step.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from vargen.nn.attention import KVCache

DTYPES: Dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}
# dynamo settings while a compiled step traces: cache lengths (ints on modules) stay symbolic.
_DYNAMO_CONFIG = dict(allow_unspec_int_on_nn_module=True)


def resolve_dtype(name: Union[str, torch.dtype, None], device: Union[str, torch.device] = "cpu",
                  flag: str = "--dtype") -> Optional[torch.dtype]:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or a torch dtype) for sampling on ``device``;
    None stays None (the weights' own dtype). float16 is refused on CPU, where bfloat16 is the
    half-precision type with fast kernels and float32's range."""
    if name is None:
        return None
    dtype = name if isinstance(name, torch.dtype) else DTYPES.get(str(name))
    if dtype not in DTYPES.values():
        raise ValueError(f"{flag} must be one of {', '.join(DTYPES)}, got {name!r}")
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise ValueError(f"{flag} float16 is not offered on CPU (slow kernels, and float16 overflows "
                         f"where bfloat16 does not); use {flag} bfloat16 on CPU, float16 on CUDA")
    return dtype


class _Compiled:
    """One model's compiled steps; on the first compile failure all of them go back to eager."""

    def __init__(self, model: Any, compiled: Dict[str, Callable]):
        self.model = model
        self.names = list(compiled)
        self.failed: Optional[BaseException] = None
        self.modules: Optional[List[torch.nn.Module]] = None  # found on the first step
        for name, fn in compiled.items():
            setattr(model, name, self._wrap(name, fn, getattr(model, name)))

    def _wrap(self, name: str, compiled: Callable, eager: Callable) -> Callable:
        @functools.wraps(eager)
        def step(*args: Any, **kwargs: Any) -> Any:
            if self.failed is not None:
                return eager(*args, **kwargs)
            if self.modules is None:
                self.modules = _modules(self.model)
            state = _cache_state(self.modules)
            try:
                with torch._dynamo.config.patch(**_DYNAMO_CONFIG):
                    return compiled(*args, **kwargs)
            except _compile_errors() as e:  # the user's own errors (bad input) pass through unchanged
                _restore(state)
                self.fail(f"{type(self.model).__name__}.{name}", e)
                return eager(*args, **kwargs)
        return step

    def fail(self, where: str, error: BaseException) -> None:
        self.failed = error
        for name in self.names:  # the class's methods again
            vars(self.model).pop(name, None)
        warnings.warn(f"torch.compile failed for {where} ({type(error).__name__}: "
                      f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); "
                      f"sampling continues eagerly", RuntimeWarning, stacklevel=3)


def _compile_errors() -> tuple:
    # BackendCompilerFailed (Inductor / C++ compile errors), Unsupported, internal dynamo errors.
    return (torch._dynamo.exc.TorchDynamoException,)


def step_methods() -> Tuple[str, ...]:
    """The methods that run the network once per sampler step, over every registered sampler's
    capability (marked ``@forward_pass`` in its protocol)."""
    from vargen.samplers import SAMPLERS
    from vargen.samplers.capabilities import step_methods as marked
    names: List[str] = []
    for sampler in SAMPLERS.values():
        names += [n for n in marked(sampler.capability) if n not in names]
    return tuple(names)


def load_fast_pipeline(name: str, device: Any = "cpu", dtype: Union[str, torch.dtype, None] = None,
                       compile: bool = False) -> Any:
    """``load_pipeline(name)`` on ``device``, cast to ``dtype`` (``"bfloat16"``, ...) and with
    its network's steps compiled if ``compile`` (what ``--dtype`` / ``--compile`` ask for); on
    CPU, freed host memory is kept for reuse (:func:`keep_freed_memory`)."""
    from vargen.pipeline import load_pipeline
    torch_dtype = resolve_dtype(dtype, device)  # refused before any weights are read
    pipe = load_pipeline(name, device=device, torch_dtype=torch_dtype)
    if torch.device(device).type == "cpu":
        keep_freed_memory()
    if compile:
        compile_steps(pipe.transformer)
    return pipe


def compile_steps(model: Any, *, backend: str = "inductor", mode: Optional[str] = None,
                  dynamic: Optional[bool] = True, **options: Any) -> Any:
    """Wrap ``model``'s step methods (those of :func:`step_methods` it has) in ``torch.compile``.

    ``backend``, ``mode``, ``dynamic`` and ``options`` go to ``torch.compile`` (``backend="eager"``
    traces without generating code: a fast check of the traced path). Compilation happens on a
    step's first call; a failure then, or ``torch.compile`` raising here, leaves the model eager
    with one ``RuntimeWarning``. Returns ``model``. Calling it again recompiles from the eager
    methods.
    """
    steps = step_methods()
    names = [n for n in steps if callable(getattr(type(model), n, None))]
    if not names:
        raise TypeError(f"{type(model).__name__} has none of the step methods {', '.join(steps)}")
    for name in names:  # a second call starts from the eager methods
        vars(model).pop(name, None)
    try:
        compiled = {n: torch.compile(getattr(model, n), backend=backend, mode=mode,
                                     dynamic=dynamic, **options) for n in names}
    except Exception as e:  # noqa: BLE001 (no dynamo on this Python, unknown backend, ...)
        warnings.warn(f"torch.compile is unavailable for {type(model).__name__} ({type(e).__name__}: "
                      f"{e}); sampling runs eagerly", RuntimeWarning, stacklevel=2)
        return model
    _Compiled(model, compiled)
    return model


def is_compiled(model: Any) -> bool:
    """Whether ``model``'s step methods currently run through ``torch.compile``."""
    return any(n in vars(model) for n in step_methods())


# ----------------------------------------------------------------------------- freed memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (<malloc.h>)


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Keep freed host memory in this process for reuse; True where it applies (glibc), else False.

    glibc serves each allocation above its mmap threshold (at most 32 MiB by default: one
    ``[4096, 4096]`` bfloat16 product) with fresh pages from the OS and unmaps them on free, so
    the next step faults every page in again, zeroed: about 1 us per 4 KiB page here, as long as
    a GEMM producing the tensor. Raising the mmap and trim thresholds (``mallopt``) serves them
    from the heap instead, as ``LD_PRELOAD`` of jemalloc / tcmalloc does in PyTorch's CPU tuning
    guide. The cost: the process keeps its peak heap until it exits. Process-wide and applied
    once; ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`` does the same from outside.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # glibc only: musl and the BSD / macOS libcs lack mallopt's knobs
    except (OSError, AttributeError, TypeError):
        return False
    largest = 2 ** 31 - 1  # mallopt takes an int
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 2 ** 30) and libc.mallopt(_M_TRIM_THRESHOLD, largest))


# ----------------------------------------------------------------------------- prepacked weights
def prepack_linears(model: torch.nn.Module, rows: int) -> torch.nn.Module:
    """Pack every ``nn.Linear`` weight of ``model`` once into the CPU GEMM's blocked layout (MKL's
    for float32, oneDNN's for bfloat16), for inference: an unpacked GEMM repacks its weight on every
    call, a full extra pass over it, which at the few rows of a decoding step costs as much as the
    product. ``rows`` is the row count of the calls to speed up (batch x 2 under CFG for raster
    steps): MKL's float32 packing serves exactly that many rows, oneDNN's bfloat16 packing any. A
    call with autograd on, another dtype or row count, or after the weight changed in place, runs
    the plain ``F.linear``. The state dict is untouched; :func:`unpack_linears` undoes it.
    """
    for m in model.modules():
        # exactly nn.Linear: a subclass may reshape its output (VAR's SharedAdaLin)
        if type(m) is not torch.nn.Linear or m.weight.device.type != "cpu":
            continue
        w = m.weight.detach()
        if w.dtype == torch.float32 and torch._C.has_mkl:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
        elif w.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        else:
            continue
        stamp = (w.data_ptr(), w.dtype, m.weight._version)  # the weight the packed copy was made from
        m.forward = functools.partial(_packed_linear, m, packed, stamp, rows)
    return model


def unpack_linears(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`prepack_linears`: every ``nn.Linear`` runs its own ``forward`` again."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            vars(m).pop("forward", None)
    return model


def _packed_linear(m: torch.nn.Linear, packed: torch.Tensor, stamp: tuple, rows: int,
                   x: torch.Tensor) -> torch.Tensor:
    lead, w = x.shape[:-1], m.weight
    dtype = stamp[1]
    # the packed copy is stale after .to(...) (new storage), in-place changes (version) or a move
    if torch.is_grad_enabled() or x.dtype != dtype or x.device.type != "cpu" or (
            (w.data_ptr(), w.dtype, w._version) != stamp) or (dtype == torch.float32 and x[..., 0].numel() != rows):
        return torch.nn.functional.linear(x, w, m.bias)
    x2 = x.reshape(-1, x.shape[-1])
    if dtype == torch.float32:
        out = torch.ops.mkl._mkl_linear(x2, packed, m.weight, m.bias, rows)
    else:
        out = torch.ops.mkldnn._linear_pointwise(x2, packed, m.bias, "none", [], "")
    return out.view(*lead, out.shape[-1])


# ----------------------------------------------------------------------------- KV cache rollback
def _modules(model: Any) -> List[torch.nn.Module]:
    """The model's modules and those of a module it holds by reference (cont-AR + MingTok feeds
    latents through the tokenizer's cached semantic decoder inside its steps)."""
    if not isinstance(model, torch.nn.Module):
        return []
    held = [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]
    return [m for root in (model, *held) for m in root.modules()]


def _cache_state(modules: List[torch.nn.Module]) -> list:
    return [(m.cache, m.cache.length, m.cache.row_lengths) for m in modules
            if isinstance(getattr(m, "cache", None), KVCache)]


def _restore(state: list) -> None:
    """Fill lengths back to a snapshot (entries written past them are dead and get overwritten)."""
    for cache, length, rows in state:
        cache.length, cache.row_lengths = length, rows
