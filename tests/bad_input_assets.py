"""Input files the bad-input tables (tests/test_bad_inputs.py, tests/test_bad_cli.py) read, and
the snapshot that proves a refused call left every file and folder as it was: good and corrupt
image sets, statistics with a NaN, a truncated weights file, token files out of range, a file where
a folder is expected and a folder this process cannot write in.
"""
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vargen.data import cache
from vargen.eval.stats import save_npz, save_stats


def _readonly_dir(root: Path) -> Path:
    """A folder this process cannot write in: a chmod 555 folder, or (as root, who writes there
    anyway) a path under /sys, where nobody can create files."""
    folder = root / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return folder
    os.close(fd)
    os.remove(probe)
    return Path("/sys/vargen-readonly")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Input files every row may read (never written by a row: the table checks that)."""
    root = tmp_path_factory.mktemp("assets")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
    save_npz(root / "good.npz", arr_0=images)
    mu, sigma = np.zeros(2048), np.eye(2048)
    save_stats(root / "stats.npz", mu, sigma)
    mu[3] = np.nan
    save_stats(root / "nanstats.npz", mu, sigma)
    save_npz(root / "videos.npz", arr_0=np.zeros((2, 16, 16, 16, 3), np.uint8))
    folder = root / "folder"
    folder.mkdir()
    (folder / "a_not_an_image.png").write_text("this is text, not a PNG")
    for i in range(2):
        Image.fromarray(images[i]).save(folder / f"img{i}.png")
    save_file({"w": torch.zeros(1000)}, str(root / "inception.safetensors"))
    data = (root / "inception.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "existing.txt").write_text("a file, not a folder")
    (root / "existing_dir").mkdir()
    (root / "junk.mp4").write_bytes(b"not a video")
    ids = torch.randint(0, 64, (8, 4, 4), generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    cache.save_token_file(root / "tokens.safetensors", ids, labels)
    cache.save_token_file(root / "big_ids.safetensors", ids + 60, labels)       # llamagen-tiny: 64 codes
    cache.save_token_file(root / "big_labels.safetensors", ids, labels + 5)     # 10 classes
    return SimpleNamespace(root=root, readonly=_readonly_dir(root))


def snapshot(*roots: Path) -> dict:
    """Every file (size, mtime) and folder under ``roots``: a row must leave them as they were."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for root in roots if root.exists() for p in [root, *root.rglob("*")]}
