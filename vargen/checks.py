"""The checks every public entry point runs on what a user passes in, written once.

- numbers (sampler options, sizes, seeds): :func:`number`, :func:`seed`, and :func:`cli_number`
  for argparse ``type=``; NaN and inf are refused, as are bools, strings and, for integer
  options, floats (``num_steps=2.5`` is not rounded);
- class ids: :func:`class_labels` (integers in ``[0, num_classes)``, never strings or floats);
- tensors: :func:`finite` (no NaN / inf) and :func:`pixels` (floats in [-1, 1], finite);
- output paths, checked before the work starts and without leaving anything behind:
  :func:`output_file`, :func:`output_folder`;
- devices: :func:`device` (``--device cuda`` on a machine without a GPU is an error up front).

A failed check raises ``TypeError`` (wrong kind of value), ``ValueError`` (wrong value) or an
``OSError`` subclass (a path that cannot be written) whose message names the input, what was
expected and, where there is one, the fix. Imports no torch until a tensor or device is checked,
so the ``vargen`` parser can use it.
"""
from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _requirement(integer: bool, minimum: Optional[float], maximum: Optional[float],
                 above: Optional[float], below: Optional[float]) -> str:
    bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {maximum:g}" if maximum is not None else "", f"< {below:g}" if below is not None else ""]
    text = " and ".join(b for b in bounds if b)
    return ("an integer" if integer else "a finite number") + (f" {text}" if text else "")


def number(name: str, value: Any, *, minimum: Optional[float] = None, maximum: Optional[float] = None,
           above: Optional[float] = None, below: Optional[float] = None, integer: bool = False,
           optional: bool = False) -> Any:
    """``value`` as an ``int`` (``integer``) or finite ``float`` within the bounds (``minimum`` /
    ``maximum`` inclusive, ``above`` / ``below`` exclusive); None passes when ``optional``.

    A one-element tensor or numpy scalar counts as its value. TypeError for a non-number (a
    string, a bool, a float where an integer is expected), ValueError for NaN, inf or a value
    out of bounds.
    """
    if value is None and optional:
        return None
    need = _requirement(integer, minimum, maximum, above, below)
    if hasattr(value, "numel") and callable(value.numel) and value.numel() == 1:  # a torch scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {need}, got {value!r} ({type(value).__name__})")
    if integer and not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {need}, got {value!r} ({type(value).__name__}; "
                        f"integer options are not rounded)")
    value = int(value) if integer else float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {need}, got {value}")
    if ((minimum is not None and value < minimum) or (maximum is not None and value > maximum)
            or (above is not None and value <= above) or (below is not None and value >= below)):
        raise ValueError(f"{name} must be {need}, got {value:g}")
    return value


def seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer >= 0 (a float or string seed is refused, not truncated)."""
    return number(name, value, minimum=0, integer=True)


def cli_number(integer: bool = False, **bounds: Any):
    """An argparse ``type=`` parsing ``int`` / ``float`` text and checking it with :func:`number`
    (``--cfg-scale nan`` is a usage error naming the flag, exit status 2, before any work)."""
    import argparse

    need = _requirement(integer, *(bounds.get(k) for k in ("minimum", "maximum", "above", "below")))

    def parse(text: str):
        try:
            return number("value", int(text) if integer else float(text), integer=integer, **bounds)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}") from None
    parse.__name__ = "int" if integer else "float"
    return parse


def class_labels(labels: Any, num_classes: Optional[int] = None, *, name: str = "class labels",
                 allow_null: bool = False, scalar: bool = False):
    """Class ids as a long tensor ``[B]``: a sequence or 1-D tensor of integers in
    ``[0, num_classes)`` (``num_classes`` itself too, the null class, if ``allow_null``; one id
    stands for ``[id]`` if ``scalar``). Strings,
    floats and bools are a TypeError, never converted; a wrong shape or an id out of range a
    ValueError naming the valid range."""
    import torch
    if isinstance(labels, (str, bytes)) or (isinstance(labels, (list, tuple)) and any(
            isinstance(v, (str, bytes)) for v in labels)):
        raise TypeError(f"{name} must be integer class ids of shape [B], got {labels!r} (strings; "
                        f"pass ints, e.g. [3] not ['3'])")
    if not torch.is_tensor(labels):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be integer class ids of shape [B], got {labels!r:.60} ({e})") from None
        if labels.numel() == 0:  # [] is float to torch
            labels = labels.long()
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must be integer class ids of shape [B], got dtype {labels.dtype} "
                        f"(ids are never truncated)")
    if scalar and labels.dim() == 0:
        labels = labels.reshape(1)
    if labels.dim() != 1:
        raise ValueError(f"{name} must be integer class ids of shape [B], got shape {tuple(labels.shape)}")
    if num_classes is not None and labels.numel():
        high = num_classes + (1 if allow_null else 0)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= high:
            bad = lo if lo < 0 else hi
            null = f" or {num_classes} (null)" if allow_null else ""
            raise ValueError(f"{name} must be in [0, {num_classes - 1}]{null} ({num_classes} classes); got {bad}")
    return labels.long()


# The largest image side any command accepts: 4x the largest zoo resolution (1024).
MAX_IMAGE_SIZE = 4096


def image_size(name: str, value: Any) -> int:
    """A positive integer image side, at most :data:`MAX_IMAGE_SIZE` (a larger one would allocate
    without end before failing)."""
    return number(name, value, minimum=1, maximum=MAX_IMAGE_SIZE, integer=True)


def finite(name: str, x: Any):
    """``x`` (tensor or numpy array) unchanged if it has no NaN or inf, else a ValueError counting them."""
    import numpy as np
    import torch
    if torch.is_tensor(x):
        if x.is_floating_point() or x.is_complex():
            bad = int((~torch.isfinite(x)).sum()) if x.numel() else 0
            if bad:
                raise ValueError(f"{name} contain NaN or inf ({bad} of {x.numel()} values); "
                                 f"expected finite values")
        return x
    array = np.asarray(x)
    if array.dtype.kind in "fc":
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise ValueError(f"{name} contain NaN or inf ({bad} of {array.size} values); expected finite values")
    return x


def pixels(name: str, x: Any, limit: float = 1.5):
    """Float pixels meant to be in [-1, 1]: a TypeError for anything else (uint8 included, with the
    conversion), a ValueError for NaN / inf or values beyond ``limit`` (that is [0, 255] data, not a
    rounding slip)."""
    import torch
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise TypeError(f"{name} must be float tensors in [-1, 1], got "
                        f"{getattr(x, 'dtype', type(x).__name__)} (convert uint8 with x / 127.5 - 1)")
    if x.numel():
        finite(name, x)
        lo, hi = x.aminmax()
        if lo < -limit or hi > limit:
            raise ValueError(f"{name} must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             f"(from [0, 255] use x / 127.5 - 1, from [0, 1] use 2 * x - 1)")
    return x


# ------------------------------------------------------------------------------------ paths
def _existing_ancestor(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def _probe(folder: Path, name: str, path: Path) -> None:
    """Create and remove a file in ``folder``: the one test that also holds for root and read-only mounts."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{name} {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vargen-probe-", dir=folder)
    except OSError as e:
        raise PermissionError(f"{name} {path}: cannot write in {folder} ({e.strerror or e}); "
                              f"choose a writable location") from None
    os.close(fd)
    os.remove(probe)


def output_file(path: PathLike, name: str = "--out") -> Path:
    """Check, before any work, that a file can be written at ``path``: not an existing folder, and
    its folder (or the nearest existing one above it) writable. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{name} {path} is an existing folder; expected a file name in it "
                                f"or elsewhere")
    _probe(_existing_ancestor(path.parent), name, path)
    return path


def output_folder(path: PathLike, name: str = "--out") -> Path:
    """Check, before any work, that ``path`` is (or can become) a folder this process writes in:
    not an existing file, and writable. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name} {path} is an existing file; expected a run folder "
                                 f"(a new or existing directory)")
    _probe(_existing_ancestor(path), name, path)
    return path


# ------------------------------------------------------------------------------------ devices
def device(spec: Any = None, name: str = "--device"):
    """``spec`` as a ``torch.device`` that exists here (None or ``"auto"``: the GPU if any, else
    the CPU). A CUDA device on a machine without one, or an index past the last GPU, is a
    ValueError up front rather than a RuntimeError in the middle of the work."""
    import torch
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} {spec!r} is not a device; use cpu, cuda, cuda:1 or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {spec}: no CUDA device; use {name} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {spec}: only {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name} {spec}: MPS is not available here; use {name} cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name} {spec}: vargen runs on cpu, cuda or mps")
    return dev


class OutputWatch:
    """The output check of a sampling call: forward hooks on the network's direct children
    (embeddings, trunk, head) OR a NaN flag on the device, read once per batch with the finished
    tokens (whose copy to the host syncs anyway), along with the latents' finiteness. NaN logits
    would otherwise become identical ids for every sample (argmax / top-k of NaN), not an error."""

    def __init__(self, network: "torch.nn.Module"):
        self.network, self.flag, self.handles = network, None, []

    def _hook(self, module: "torch.nn.Module", inputs: Any, output: Any) -> None:
        import torch
        if torch.compiler.is_compiling():
            return  # compiled steps: only the latents are checked
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if torch.is_tensor(t) and t.is_floating_point():
                nan = torch.isnan(t).any()
                self.flag = nan if self.flag is None else self.flag | nan

    def __enter__(self) -> "OutputWatch":
        self.handles = [child.register_forward_hook(self._hook) for child in self.network.children()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def check(self, tokens: "torch.Tensor", start: int, n: int) -> None:
        import torch
        nan = self.flag is not None and bool(self.flag)
        if nan or (tokens.is_floating_point() and not bool(torch.isfinite(tokens).all())):
            what = "NaN activations/logits" if nan else "non-finite latents"
            raise FloatingPointError(
                f"{type(self.network).__name__} produced {what} for samples {start}..{start + n - 1}: its "
                f"weights are corrupt or its dtype overflows (try --dtype float32); no images returned")
