"""Frechet Video Distance on I3D logits.

FVD: Unterthiner et al. 2018, "Towards Accurate Generative Models of Video"
(https://github.com/google-research/google-research/tree/master/frechet_video_distance): Frechet
distance of the 400-d Kinetics-400 I3D logits of 224x224 clips in [-1, 1]. The PyTorch protocol the
AR video papers use (StyleGAN-V ``fvd2048_16f``, LARP / NAR-videos with 10k clips) runs the
TorchScript ``i3d_torchscript.pt`` from https://github.com/universome/stylegan-v.

The network is I3D / InceptionV1-3D (Carreira & Zisserman 2017) with the module names of
https://github.com/piergiaj/pytorch-i3d (TF "SAME" padding computed per input), so a state dict in
that layout (e.g. VideoGPT/TATS ``i3d_pretrained_400.pt``) loads directly. A TorchScript detector
is converted into it and checked against the TorchScript's own output on a random clip. No I3D
weights exist offline: tests run on seeded random weights, labelled as such in every result.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vargen.eval.inception import RANDOM_SOURCE, announce_random
from vargen.eval.metrics import frechet_distance
from vargen.eval.stats import FeatureStats, load_npz, load_stats
from vargen.hub import WeightsError, load_official_checkpoint, load_state_dict_strict

# Protocols as used by the papers (n generated = n real clips).
FVD_PRESETS: Dict[str, Dict[str, int]] = {
    "stylegan-v-2048-16f": {"num_videos": 2048, "num_frames": 16},
    "larp-10k-16f-128": {"num_videos": 10000, "num_frames": 16, "resolution": 128},
}
HOW_TO_SUPPLY = ("No I3D weights ship with any pip package. Pass weights=PATH (--i3d-weights): StyleGAN-V's "
                 "i3d_torchscript.pt (https://github.com/universome/stylegan-v), a pytorch-i3d layout state dict "
                 "such as VideoGPT/TATS i3d_pretrained_400.pt, or a converted .safetensors; "
                 "weights='random' for tests.")


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
        for name, module in self.named_children():
            if name == "logits":
                break
            x = module(x)
        # Average pool [2, 7, 7] stride 1 (clamped for clips/resolutions smaller than the protocol's).
        x = F.avg_pool3d(x, tuple(min(k, s) for k, s in zip((2, 7, 7), x.shape[2:])), stride=1)
        return self.logits(x).mean(dim=(2, 3, 4))  # [B, num_classes]


def convert_torchscript_i3d(script: torch.jit.ScriptModule, model: I3D) -> Dict[str, torch.Tensor]:
    """Map a TorchScript I3D's tensors onto :class:`I3D` keys: by name (after stripping a common
    prefix) when the names match, else by position when every shape lines up."""
    theirs = {k: v for k, v in script.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for prefix in sorted({k[: k.find(suffix)] for k in theirs for suffix in ours if k.endswith(suffix)}, key=len):
        stripped = {k[len(prefix):]: v for k, v in theirs.items() if k.startswith(prefix)}
        if set(stripped) == set(ours):
            return stripped
    if len(theirs) == len(ours) and all(a.shape == b.shape for a, b in zip(theirs.values(), ours.values())):
        return dict(zip(ours, theirs.values()))
    raise WeightsError(f"TorchScript I3D with {len(theirs)} tensors does not map onto pytorch-i3d's "
                       f"{len(ours)}: neither names nor shapes match")


class I3DFeatures(nn.Module):
    """Videos -> 400-d I3D logits for FVD.

    Input ``[B, 3, T, H, W]`` (uint8, or float in [-1, 1]); frames are resized to ``resolution``
    with trilinear interpolation over (T, H, W) at fixed T (StyleGAN-V's detector ``resize=True``).
    """

    def __init__(self, weights: Union[str, Path, None] = None, allow_random: bool = False, resolution: int = 224):
        super().__init__()
        self.resolution = resolution
        self.net = I3D().eval().requires_grad_(False)
        self.verified = None
        if weights == "random" or (weights is None and allow_random):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.net = I3D().eval().requires_grad_(False)
                for m in self.net.modules():  # He init keeps random logits O(1) (the default init vanishes)
                    if isinstance(m, nn.Conv3d):
                        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            self.weights_source, self.random_weights = RANDOM_SOURCE, True
            announce_random("I3D (FVD)")
            return
        if weights is None:
            raise WeightsError(f"no I3D weights given. {HOW_TO_SUPPLY}")
        self.weights_source, self.random_weights = str(weights), False
        self._load(Path(weights).expanduser())

    def _load(self, path: Path) -> None:
        from vargen.eval.inception import _is_torchscript, _load_torchscript
        if not path.is_file():
            raise FileNotFoundError(f"I3D weights {path} do not exist. {HOW_TO_SUPPLY}")
        if not _is_torchscript(path):
            try:
                self.net.load_state_dict(load_official_checkpoint(path), strict=True)
            except RuntimeError as e:
                raise WeightsError(f"{path} is not a pytorch-i3d layout state dict: {e}") from e
            return
        script = _load_torchscript(path)
        state = convert_torchscript_i3d(script, self.net)
        # BatchNorm step counters are not weights; keep ours so loading stays strict.
        state.update({k: v for k, v in self.net.state_dict().items() if k.endswith("num_batches_tracked")})
        load_state_dict_strict(self.net, state, source=path)
        clip = torch.rand(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            ours = self.net(clip)
            try:  # StyleGAN-V's detector signature
                theirs = script(clip, rescale=False, resize=False, return_features=True)
            except (RuntimeError, TypeError) as e:
                warnings.warn(f"could not run {path} with StyleGAN-V's signature to verify the conversion ({e}); "
                              "FVD features are UNVERIFIED")
                self.verified = False
                return
        err = (ours - theirs.reshape(ours.shape)).abs().max().item()
        if err > 1e-3 * max(1.0, theirs.abs().max().item()):
            raise WeightsError(f"converted I3D from {path} differs from the TorchScript's output by {err:.3g}")
        self.verified = True

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError(f"expected videos [B, 3, T, H, W], got shape {tuple(videos.shape)}")
        device = self.net.logits.conv3d.weight.device
        x = videos.to(device)
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float().clamp(-1, 1)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(x.shape[2], self.resolution, self.resolution), mode="trilinear",
                              align_corners=False)
        return self.net(x)

    def describe(self) -> Dict[str, Any]:
        return {"i3d_weights": self.weights_source, "random_weights": self.random_weights,
                "i3d_conversion_verified": self.verified, "i3d_resolution": self.resolution}


def video_batches(source: Union[str, Path, torch.Tensor, np.ndarray], batch_size: int = 8,
                  num_frames: Optional[int] = None, limit: Optional[int] = None) -> Iterator[torch.Tensor]:
    """``[B, 3, T, H, W]`` batches from a tensor (uint8 or [-1, 1]), a uint8 ``[N, T, H, W, 3]`` array,
    or an ``.npz`` whose ``arr_0`` is one. ``num_frames`` keeps the first T frames."""
    if isinstance(source, (str, Path)):
        data = load_npz(source)
        if "arr_0" not in data.files:
            raise ValueError(f"{source} holds no arr_0 videos (keys: {data.files}); only the real "
                             f"side may be precomputed statistics")
        source = data["arr_0"]
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 5 or source.shape[-1] != 3:
            raise ValueError(f"expected uint8 videos [N, T, H, W, 3], got {source.dtype} {source.shape}")
        source = torch.from_numpy(source).permute(0, 4, 1, 2, 3)
    if source.dim() != 5 or source.shape[1] != 3:
        raise ValueError(f"expected videos [N, 3, T, H, W], got shape {tuple(source.shape)}")
    if num_frames is not None:
        if source.shape[2] < num_frames:
            raise ValueError(f"clips have {source.shape[2]} frames, the protocol needs {num_frames}")
        source = source[:, :, :num_frames]
    yield from source[:limit].split(batch_size)


def video_statistics(source: Any, extractor: I3DFeatures, batch_size: int = 8, num_frames: Optional[int] = 16,
                     limit: Optional[int] = None) -> FeatureStats:
    stats = FeatureStats()
    batches = video_batches(source, batch_size, num_frames, limit)
    for batch in tqdm(batches, desc="I3D", unit="batch", leave=False, disable=not sys.stderr.isatty()):
        stats.update(extractor(batch))
    return stats


def compute_fvd(generated: Any, real: Any, *, extractor: Optional[I3DFeatures] = None,
                weights: Union[str, Path, None] = None, allow_random: bool = False, num_frames: Optional[int] = 16,
                batch_size: int = 8, limit: Optional[int] = None, method: str = "sqrtm",
                device: Any = None) -> Dict[str, Any]:
    """FVD of ``generated`` against ``real`` (videos, or an ``.npz`` with precomputed ``mu``/``sigma``)."""
    if extractor is None:
        extractor = I3DFeatures(weights, allow_random=allow_random)
        if device is not None:
            extractor.to(device)
    gen = video_statistics(generated, extractor, batch_size, num_frames, limit)
    ref_stats = load_stats(real) if isinstance(real, (str, Path)) else None
    if ref_stats is None:
        ref = video_statistics(real, extractor, batch_size, num_frames, limit)
        ref_stats, num_real = {"mu": ref.mu, "sigma": ref.sigma}, ref.n
    else:
        num_real = "precomputed statistics"
    fvd = frechet_distance(gen.mu, gen.sigma, ref_stats["mu"], ref_stats["sigma"], method=method)
    return {"fvd": fvd, "num_generated": gen.n, "num_real": num_real, "num_frames": num_frames,
            **extractor.describe()}
