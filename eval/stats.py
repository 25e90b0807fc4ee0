"""Streaming feature statistics and the ADM ``.npz`` format.

ADM's evaluator (https://github.com/openai/guided-diffusion/tree/main/evaluations) stores reference
batches as ``.npz`` files: ``arr_0`` = uint8 ``[N, H, W, 3]`` images and/or precomputed ``mu``,
``sigma`` (pool3 mean and covariance) and ``mu_s``, ``sigma_s`` (the same of the 2023-d
``mixed_6/conv`` spatial features, for sFID). MAR/xAR's ``fid_stats/adm_in256_stats.npz`` holds only
``mu``/``sigma``. Statistics are accumulated as float64 sums (``sum x`` and ``sum x x^T``), so memory
stays flat in the number of samples; raw features are kept only when KID or precision/recall need
them, up to ``keep`` rows.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import numpy as np
import torch

from vargen import checks
from vargen.hub import atomic_write


class FeatureStats:
    """Running mean / covariance of ``[B, D]`` features in float64, summed on the features' device (a
    GPU does the ``D x D`` products); optionally keeps the first ``keep`` raw feature rows (float32,
    on the CPU) for KID / precision-recall."""

    def __init__(self, keep: int = 0):
        self.keep = keep
        self.n = 0
        self.sum: Optional[torch.Tensor] = None
        self.outer: Optional[torch.Tensor] = None
        self._kept: list = []
        self._n_kept = 0

    def update(self, features: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"expected features [B, D], got shape {tuple(features.shape)}")
        checks.finite("features (NaN weights or inputs?)", features)
        x = features.detach().double()
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.sum.shape[0]:
            raise ValueError(f"feature width changed from {self.sum.shape[0]} to {x.shape[1]}")
        x = x.to(self.sum.device)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x
        if self._n_kept < self.keep:
            take = x[: self.keep - self._n_kept].float().cpu()
            self._kept.append(take)
            self._n_kept += take.shape[0]

    def state(self, prefix: str) -> Dict[str, np.ndarray]:
        """The running sums as arrays named ``prefix + key`` (a resumable pass saves them)."""
        if self.keep:
            raise ValueError("raw features kept for KID / precision-recall are not saved")
        self._check(1)
        return {prefix + "n": np.int64(self.n), prefix + "sum": self.sum.cpu().numpy(),
                prefix + "outer": self.outer.cpu().numpy()}

    @classmethod
    def from_state(cls, arrays: Any, prefix: str, device: Any = "cpu") -> "FeatureStats":
        """Inverse of :meth:`state`; the sums go back to ``device``, where the pass adds to them."""
        stats = cls()
        stats.n = int(arrays[prefix + "n"])
        stats.sum = torch.from_numpy(arrays[prefix + "sum"]).to(device)
        stats.outer = torch.from_numpy(arrays[prefix + "outer"]).to(device)
        return stats

    @property
    def mu(self) -> np.ndarray:
        self._check(1)
        return (self.sum / self.n).cpu().numpy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (``N - 1``), as ``np.cov`` / ADM / torch-fidelity."""
        self._check(2)
        mu = self.sum / self.n
        return ((self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)).cpu().numpy()

    @property
    def features(self) -> torch.Tensor:
        if not self._kept:
            raise ValueError("no raw features were kept (construct FeatureStats with keep > 0)")
        return torch.cat(self._kept)

    def _check(self, n: int) -> None:
        if self.n < n:
            raise ValueError(f"need at least {n} samples for statistics, have {self.n}")


def save_stats(path: Union[str, Path], mu: np.ndarray, sigma: np.ndarray, mu_s: Optional[np.ndarray] = None,
               sigma_s: Optional[np.ndarray] = None, **extra: Any) -> Path:
    """Write ADM-style ``mu``/``sigma`` (and spatial ``mu_s``/``sigma_s``, plus any extra arrays) atomically."""
    if (mu_s is None) != (sigma_s is None):
        raise ValueError("give both mu_s and sigma_s, or neither")
    if mu_s is not None:
        extra.update(mu_s=np.asarray(mu_s, np.float64), sigma_s=np.asarray(sigma_s, np.float64))
    return save_npz(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)


def save_npz(path: Union[str, Path], **arrays: Any) -> Path:
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to the temp name
            np.savez(f, **arrays)
    atomic_write(path, write)
    return path


def write_json(path: Union[str, Path], obj: Any) -> Path:
    """``obj`` as indented JSON (non-JSON values as ``str``), written atomically."""
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=str)))
    return path


def load_npz(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (images stay lazily loaded until indexed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = np.load(path)
        for name in data.files:  # headers only: a pickled (object) array is refused naming the file
            with data.zip.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)(member)
            if header[2].hasobject:
                pickled = name
                break
        else:
            return data
    except (zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise ValueError(f"{path} is not a readable .npz file: {e}") from e
    raise ValueError(f"{path}: array {pickled!r} holds pickled Python objects, which are never unpickled; "
                     f"expected numeric arrays")


def load_stats(path: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """``{"mu", "sigma", "mu_s", "sigma_s", "has_images", "inception_weights"}`` of an ADM/MAR ``.npz``
    that stores statistics, or None when it holds only images. ``mu_s``/``sigma_s`` (sFID) are None
    when absent (MAR's stats files); ``has_images``: it also holds ``arr_0``; ``inception_weights``:
    what vargen's ``ref-stats`` recorded, else None."""
    data = load_npz(path)
    if "mu" in data.files and "sigma" in data.files:
        out: Dict[str, Any] = {"mu_s": None, "sigma_s": None}
        for m, c in (("mu", "sigma"), ("mu_s", "sigma_s")):
            if m not in data.files and c not in data.files:
                continue
            if m not in data.files or c not in data.files:
                raise ValueError(f"{path}: has {c if m not in data.files else m} without "
                                 f"{m if m not in data.files else c}")
            mu, sigma = data[m].astype(np.float64), data[c].astype(np.float64)
            if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
                raise ValueError(f"{path}: expected {m} [D] and {c} [D, D], got {mu.shape} and {sigma.shape}")
            checks.finite(f"{path}: {m} / {c}", np.concatenate([mu, sigma.ravel()]))
            out[m], out[c] = mu, sigma
        weights = str(data["inception_weights"]) if "inception_weights" in data.files else None
        return {**out, "has_images": "arr_0" in data.files, "inception_weights": weights}
    if "arr_0" not in data.files:
        raise ValueError(f"{path} has neither mu/sigma nor arr_0 images (keys: {data.files})")
    return None


def check_images_nhwc(images: np.ndarray, where: str = "images") -> np.ndarray:
    _check_nhwc(images.dtype, images.shape, where)
    return images


def _check_nhwc(dtype: np.dtype, shape: tuple, where: str) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{where}: expected uint8 [N, H, W, 3] images (ADM arr_0), got {dtype} {tuple(shape)}")


def npz_image_batches(path: Union[str, Path], batch_size: int, limit: Optional[int] = None
                      ) -> Iterator[torch.Tensor]:
    """uint8 ``[B, 3, H, W]`` batches streamed from ``arr_0`` (NHWC) of an ADM ``.npz``; a file cut
    short is an error naming it, not a short set of images.

    Reads the ``.npy`` member of the zip sequentially (as ADM's ``NpzArrayReader`` does), so a
    50k-image file never sits in memory at once.
    """
    load_npz(path)  # clear errors for a missing or corrupt file
    with zipfile.ZipFile(path) as z:
        if "arr_0.npy" not in z.namelist():
            raise ValueError(f"{path} has no arr_0 images (members: {z.namelist()})")
        with z.open("arr_0.npy") as f:
            shape, fortran, dtype = _read_npy_header(f)
            _check_nhwc(dtype, shape, str(path))  # from the header: nothing is read yet
            if fortran:
                raise ValueError(f"{path}: arr_0 is Fortran-ordered; save it C-contiguous")
            n = shape[0] if limit is None else min(limit, shape[0])
            per_image = int(np.prod(shape[1:]))
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                data = f.read(count * per_image)
                if len(data) != count * per_image:
                    raise ValueError(f"{path}: arr_0 ends after {start + len(data) // per_image} of its "
                                     f"{shape[0]} images (truncated file?)")
                chunk = np.frombuffer(data, np.uint8).reshape(count, *shape[1:])
                yield torch.from_numpy(chunk.copy()).permute(0, 3, 1, 2).contiguous()


def npz_length(path: Union[str, Path]) -> int:
    """Number of images in ``arr_0`` without loading them."""
    with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
        return _read_npy_header(f)[0][0]


def _read_npy_header(f: Any) -> tuple:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)
