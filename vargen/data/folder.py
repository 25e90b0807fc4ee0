"""Images from a folder: ``root/<class>/*.png`` (labels from sorted subfolder names) or a flat
``root/*.png`` (label 0). Pixels come out as ``[3, size, size]`` in [-1, 1]."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(root: Path) -> List[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def open_rgb(path: Path) -> Image.Image:
    """An image file as 8-bit RGB. 16-bit grayscale (PNG mode I;16 / I) is scaled to 8 bits:
    PIL's own convert("RGB") clips it at 255, which turns it almost white. A file PIL cannot read
    (a text file named .png, a truncated image) is a ValueError naming it."""
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # PIL raises SyntaxError for some broken headers
        raise ValueError(f"{path} is not a readable image ({e}); remove or replace it") from None
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


class ImageFolderDataset(Dataset):
    def __init__(self, root: str, image_size: int = 256):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.files = list_images(self.root)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
        folders = {f.parent.relative_to(self.root).as_posix() for f in self.files}
        classes = sorted(folders - {"."})
        if classes and "." in folders:
            raise ValueError(f"{root} mixes images at its top level with class subfolders "
                             f"{classes[:5]}: use root/<class>/*.png for every image, or a flat folder")
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        path = self.files[i]
        image = open_rgb(path)
        # Center crop to a square then resize (ADM's center-crop convention).
        side = min(image.size)
        image = TF.center_crop(image, [side, side]).resize((self.image_size,) * 2, Image.BICUBIC)
        label = self.class_to_idx.get(path.parent.relative_to(self.root).as_posix(), 0)
        return TF.to_tensor(image) * 2 - 1, label
