"""Streaming shard caches: never held whole, ten-crop / flip views, MAR's moments, seeded
per-epoch choices, resumable extraction, and training on shards == training on the same file."""
from __future__ import annotations

import json

import torch
import torch.nn as nn
from safetensors.torch import load_file

from vargen.data import cache, shards
from vargen.data.shards import ShardedTokens, extract
from vargen.training import TrainConfig, train


class PixelIds(nn.Module):
    """A stand-in discrete tokenizer: each pixel of channel 0 is one id (0..255); ``decode`` is
    the inverse, so a view's ids are that view's pixels."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x[:, 0] + 1) / 2 * 255).round().long()

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids.float() / 255 * 2 - 1)[:, None].expand(-1, 3, -1, -1)


class Gaussian(nn.Module):
    """A stand-in continuous tokenizer with a posterior: mean = 2x pooled pixels, std = 0.1."""

    class Posterior:
        def __init__(self, mean):
            self.mean, self.std = mean, torch.full_like(mean, 0.1)

    config = type("Config", (), {"scale_factor": 0.5})()

    def posterior(self, x):
        return self.Posterior(2 * nn.functional.avg_pool2d(x, 4))

    def encode(self, x):
        return self.posterior(x).mean * self.config.scale_factor


def ramp_images(n: int, size: int) -> list:
    """Images whose pixels all differ (so every crop and flip is recognisable)."""
    base = torch.arange(size * size, dtype=torch.float32).reshape(size, size)
    return [(((base + 7 * i) % 256) / 255 * 2 - 1).expand(3, -1, -1).clone() for i in range(n)]


def test_ten_crop_views_decode_to_shifted_and_flipped_crops(tmp_path):
    images = ramp_images(3, 12)
    extract(PixelIds(), [(x, i) for i, x in enumerate(images)], tmp_path, "tencrop", image_size=8, progress=False)
    codes = load_file(str(tmp_path / "shard-000000.safetensors"))["tokens"]
    assert codes.shape == (3, 10, 8, 8)
    img = PixelIds().encode(images[1][None])[0]  # [12, 12] ids of the whole (pre-crop) image
    views = PixelIds().decode(codes[1])[:, 0]
    expect = [img[:8, :8], img[:8, 4:], img[4:, :8], img[4:, 4:], img[2:10, 2:10]]  # tl tr bl br centre
    flipped = img.flip(-1)
    expect += [flipped[:8, :8], flipped[:8, 4:], flipped[4:, :8], flipped[4:, 4:], flipped[2:10, 2:10]]
    for v, e in zip(views, expect):
        assert torch.equal(v, PixelIds().decode(e[None])[0, 0])
    assert torch.equal(codes[1, 5], codes[1, 1].flip(-1))  # the flipped top-left is the top-right, mirrored


def test_per_epoch_view_choice_is_seeded_per_sample(tmp_path):
    extract(PixelIds(), [(x, i % 10) for i, x in enumerate(ramp_images(24, 12))], tmp_path, "tencrop",
            image_size=8, shard_size=5, progress=False)
    ds = ShardedTokens(tmp_path, seed=0)
    idx = torch.arange(24)
    zero = torch.zeros(24, dtype=torch.long)
    a, labels = ds.batch(idx, zero)
    assert a.shape == (24, 8, 8) and labels.tolist() == [i % 10 for i in range(24)]
    assert torch.equal(a, ShardedTokens(tmp_path, seed=0).batch(idx, zero)[0])  # reproducible
    alone = torch.stack([ds.batch(idx[i:i + 1], zero[:1])[0][0] for i in range(24)])
    assert torch.equal(alone, a)  # a sample's view does not depend on its batch
    assert not torch.equal(ds.batch(idx, zero + 1)[0], a)  # another epoch, other crops
    assert not torch.equal(ShardedTokens(tmp_path, seed=1).batch(idx, zero)[0], a)
    codes = torch.cat([load_file(str(f))["tokens"] for f in sorted(tmp_path.glob("shard-*"))])
    chosen = [[int((codes[i] == a[i]).flatten(1).all(1).nonzero()[0]) for i in range(24)] for a in
              (ds.batch(idx, zero + e)[0] for e in range(4))]
    assert len({v for row in chosen for v in row}) > 5  # views are drawn from all ten


def test_moments_are_sampled_per_epoch_with_flips(tmp_path):
    images = ramp_images(6, 8)
    extract(Gaussian(), [(x, 0) for x in images], tmp_path, "moments", image_size=8, progress=False)
    codes = load_file(str(tmp_path / "shard-000000.safetensors"))["tokens"]
    assert codes.shape == (6, 2, 2, 3, 2, 2)  # [n, image/flip, mean/std, C, h, w]
    assert torch.equal(codes[:, 1, 0], Gaussian().encode(torch.stack(images).flip(-1)))
    torch.testing.assert_close(codes[:, :, 1], torch.full_like(codes[:, :, 1], 0.05))  # std x scale
    ds = ShardedTokens(tmp_path, seed=0)
    x, _ = ds.batch(torch.arange(6), torch.zeros(6, dtype=torch.long))
    mean = torch.stack([codes[i, 0, 0] if (x[i] - codes[i, 0, 0]).abs().max() < 0.5 else codes[i, 1, 0]
                        for i in range(6)])
    noise = (x - mean) / 0.05
    assert 0.5 < noise.std() < 1.5 and not torch.equal(x, ds.batch(torch.arange(6), torch.ones(6, dtype=torch.long))[0])


def test_extraction_resumes_and_only_redoes_missing_shards(tmp_path):
    calls = []

    class Counting(PixelIds):
        def encode(self, x):
            calls.append(len(x))
            return super().encode(x)
    items = [(x, 0) for x in ramp_images(10, 8)]
    extract(Counting(), items, tmp_path, image_size=8, shard_size=4, batch_size=4, progress=False)
    before = {f.name: f.read_bytes() for f in tmp_path.glob("shard-*")}
    (tmp_path / "shard-000001.safetensors").unlink()
    (tmp_path / shards.INDEX).unlink()
    calls.clear()
    extract(Counting(), items, tmp_path, image_size=8, shard_size=4, batch_size=4, progress=False)
    assert calls == [4]  # only the missing shard
    assert {f.name: f.read_bytes() for f in tmp_path.glob("shard-*")} == before
    assert json.loads((tmp_path / shards.INDEX).read_text())["num_items"] == 10


def full_length_tensors(obj, n: int, seen=None) -> list:
    """Tensors of length >= n reachable from ``obj``'s attributes (lists, dicts, objects)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if torch.is_tensor(obj):
        return [obj] if obj.dim() and len(obj) >= n else []
    children = list(obj.values()) if isinstance(obj, dict) else list(obj) if isinstance(obj, (list, tuple)) \
        else list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    return [t for c in children for t in full_length_tensors(c, n, seen)]


def test_streaming_cache_trains_like_the_file_without_holding_it(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 64, (24, 4, 4), generator=g), torch.randint(0, 10, (24,), generator=g)
    cache.save_token_file(tmp_path / "ids.safetensors", tokens, labels)
    folder = tmp_path / "ids-shards"
    class Same(nn.Module):
        def encode(self, ids):
            return ids
    extract(Same(), [(t, int(y)) for t, y in zip(tokens, labels)], folder, image_size=4, shard_size=6,
            progress=False)  # the ids themselves, in 4 shards of 6
    largest, reads = [], []
    original = ShardedTokens.read

    def spy(self, idx, key="tokens"):
        largest.append(max((len(t) for t in full_length_tensors(self, 7)), default=0))
        reads.append(len(idx))
        return original(self, idx, key)
    monkeypatch.setattr(ShardedTokens, "read", spy)
    common = dict(model="llamagen-tiny", steps=4, batch_size=8, lr=2e-3, ema_decay=0.0, log_every=2,
                  ckpt_every=4, progress=False, overrides={"class_dropout_prob": 0.0})
    train(TrainConfig(out=str(tmp_path / "shards"), data=str(folder), **common))  # 4 x 8 > one epoch of 24
    train(TrainConfig(out=str(tmp_path / "file"), data=str(tmp_path / "ids.safetensors"), **common))
    a, b = (load_file(str(tmp_path / r / "final" / "model.safetensors")) for r in ("shards", "file"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert largest and max(largest) == 0  # never a tensor of more than one shard's rows
    assert max(reads) <= 8  # one batch at a time


def test_imagenet_layout_extraction_with_the_recipe_augmentation(tmp_path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for cls in ("n01440764", "n01443537"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(2):
            pixels = torch.randint(0, 256, (40, 36, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "train" / cls / f"{cls}_{i}.JPEG")
    assert shards.recipe_augment("llamagen-tiny") == "tencrop" and shards.recipe_augment("mar-tiny") == "moments"
    out = tmp_path / "codes"
    assert shards.main(["--tokenizer", "weights/vq-mnist", "--data", str(tmp_path / "train"), "--image-size", "32",
                        "--model", "llamagen-tiny", "--shard-size", "3", "--out", str(out)]) == 0
    index = json.loads((out / shards.INDEX).read_text())
    assert index["augment"] == "tencrop" and [s["count"] for s in index["shards"]] == [3, 1]
    ds = ShardedTokens(out)
    x, y = ds.batch(torch.arange(4), torch.zeros(4, dtype=torch.long))
    assert x.shape == (4, 8, 8) and y.tolist() == [0, 0, 1, 1]  # labels from the sorted class folders
