"""Images from a folder: ``root/<class>/*.png`` (labels from sorted subfolder names) or a flat
``root/*.png`` (label 0). Pixels come out as ``[3, size, size]`` in [-1, 1]."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolderDataset(Dataset):
    def __init__(self, root: str, image_size: int = 256):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.files = list_images(self.root)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
        classes = sorted({f.parent.relative_to(self.root).as_posix() for f in self.files} - {"."})
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        path = self.files[i]
        image = Image.open(path).convert("RGB")
        # Center crop to a square then resize (ADM's center-crop convention).
        side = min(image.size)
        image = TF.center_crop(image, [side, side]).resize((self.image_size,) * 2, Image.BICUBIC)
        label = self.class_to_idx.get(path.parent.relative_to(self.root).as_posix(), 0)
        return TF.to_tensor(image) * 2 - 1, label
