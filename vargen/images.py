"""Pixels at the edges: [-1, 1] tensors to uint8, grids and files written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from vargen import checks
from vargen.hub import atomic_write


def to_uint8(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """``[-1, 1]`` float -> uint8 ``[0, 255]`` (same layout); NaN / inf is an error, never a pixel."""
    checks.finite(name, images)
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_format(path: Union[str, Path]) -> str:
    """PIL's format name for ``path``'s suffix (no suffix: PNG); a suffix PIL cannot write is an
    error before any work is done, not after sampling."""
    from PIL import Image
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "PNG"
    formats = Image.registered_extensions()  # also loads the plugins that fill Image.SAVE
    if formats.get(suffix) not in Image.SAVE:
        raise ValueError(f"cannot write {path}: {suffix!r} is not an image suffix PIL can write "
                         f"(e.g. .png, .jpg, .webp)")
    return formats[suffix]


def save_grid(images: torch.Tensor, path: Union[str, Path], nrow: int = 10) -> Path:
    """Write ``[B, 3, H, W]`` images in [-1, 1] as one grid image, atomically."""
    from torchvision.utils import save_image  # lazy: torchvision costs seconds to import
    fmt = image_format(path)
    checks.finite("images", images)
    atomic_write(Path(path), lambda tmp: save_image(images.float(), tmp, nrow=nrow, normalize=True,
                                                    value_range=(-1, 1), format=fmt))
    return Path(path)
