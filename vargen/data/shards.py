"""Streaming token / latent caches: safetensors shards on disk, read per batch.

A one-file cache (:mod:`vargen.data.cache`) is read whole into memory; ImageNet at 256 px with
LlamaGen's ten views per image is 1.28M x 10 x 256 ids. A sharded cache is a folder::

    index.json                 {"format": "vargen-shards", "num_items", "augment", "shards": [...]}
    shard-000000.safetensors   "tokens" [n, *view_shape], "labels" [n]   (n <= --shard-size)

and :class:`ShardedTokens` memory-maps one shard at a time (``safe_open``) and copies out only the
rows a batch asks for, so its memory does not grow with the dataset. Augmentations, as released:

- ``none``: one encoding per image (``tokens [n, ...]``).
- ``flip``: LlamaGen's default, the image and its horizontal flip (``[n, 2, ...]``).
- ``tencrop``: LlamaGen's ``extract_codes_c2i.py --ten-crop``: centre crop to ``crop_range`` (1.1)
  x the size, then torchvision's ten crops (four corners + centre, and the same of the flipped
  image; ``[n, 10, ...]``).
- ``moments``: MAR's ``main_cache.py``: the posterior mean and std of the image and of its flip
  (``[n, 2, 2, C, h, w]``, scaled like ``tokenizer.encode``); each epoch draws ``mean + std * eps``.

During training a sample's view (and MAR's noise) is drawn from a generator seeded by
``(seed, epoch, index)``: one crop per epoch, the same on any process count and after a resume.
Extraction writes each shard atomically and skips shards already on disk, so a killed extraction
resumes; under ``torchrun`` rank ``r`` extracts shards ``r, r + W, ...``. Deviation: images are
centre-cropped and resized by :class:`~vargen.data.folder.ImageFolderDataset` (ADM's crop order
differs by a resize). ``python -m vargen.data.shards --help`` runs an extraction.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vargen.hub import WeightsError, atomic_write
from vargen.seeding import sample_seed

AUGMENTS = ("none", "flip", "tencrop", "moments")
INDEX = "index.json"
PathLike = Union[str, Path]


def is_sharded(path: PathLike) -> bool:
    return (Path(path) / INDEX).is_file()


def views(images: torch.Tensor, augment: str, size: int) -> torch.Tensor:
    """``[B, 3, S, S]`` -> ``[B, V, 3, size, size]`` (V = 1, 2 or 10)."""
    from torchvision.transforms import functional as TF
    if augment == "tencrop":
        return torch.stack([torch.stack(TF.ten_crop(x, [size, size])) for x in images])
    if augment in ("flip", "moments"):
        return torch.stack([images, images.flip(-1)], 1)
    return images[:, None]


@torch.no_grad()
def encode_views(tokenizer: torch.nn.Module, images: torch.Tensor, augment: str, size: int) -> torch.Tensor:
    v = views(images, augment, size)
    flat = v.flatten(0, 1)
    if augment == "moments":
        posterior = tokenizer.posterior(flat)
        scale = float(getattr(getattr(tokenizer, "config", None), "scale_factor", 1.0))
        codes = torch.stack([tokenizer.encode(flat), posterior.std * scale], 1)  # [B*V, 2, C, h, w]
    else:
        codes = tokenizer.encode(flat)
    codes = codes.reshape(len(images), v.shape[1], *codes.shape[1:]).cpu()
    return codes[:, 0] if augment == "none" else codes


def extract(tokenizer: torch.nn.Module, dataset, out: PathLike, augment: str = "none", image_size: int = 256,
            shard_size: int = 1024, batch_size: int = 32, device: Union[str, torch.device] = "cpu",
            rank: int = 0, world_size: int = 1, progress: bool = True) -> Path:
    """Encode ``dataset`` (items ``(image [3, S, S] in [-1, 1], label)``; S = ``image_size`` x
    ``crop_range`` for ``tencrop``) into shards under ``out``; returns ``out``."""
    from tqdm import tqdm
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "moments" and not hasattr(tokenizer, "posterior"):
        raise ValueError(f"augment 'moments' needs a tokenizer with a posterior (a KL VAE); "
                         f"{type(tokenizer).__name__} has none")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    num_shards = (n + shard_size - 1) // shard_size
    mine = [s for s in range(num_shards) if s % world_size == rank]
    todo = [s for s in mine if not (out / _name(s)).is_file()]
    was_training = tokenizer.training
    tokenizer.eval()
    bar = tqdm(total=sum(min(shard_size, n - s * shard_size) for s in mine), disable=not progress or rank != 0,
               desc=f"extract {augment}", initial=sum(min(shard_size, n - s * shard_size) for s in mine
                                                       if s not in todo))
    try:
        for s in todo:
            rows = range(s * shard_size, min(n, (s + 1) * shard_size))
            codes, labels = [], []
            for start in range(rows.start, rows.stop, batch_size):
                items = [dataset[i] for i in range(start, min(rows.stop, start + batch_size))]
                images = torch.stack([x for x, _ in items]).to(device)
                codes.append(encode_views(tokenizer, images, augment, image_size))
                labels += [int(y) for _, y in items]
                bar.update(len(items))
            tensors = {"tokens": torch.cat(codes).contiguous(), "labels": torch.tensor(labels)}
            atomic_write(out / _name(s), lambda p, t=tensors: save_file(t, str(p)))
    finally:
        tokenizer.train(was_training)
        bar.close()
    if world_size > 1:
        import torch.distributed as dist
        dist.barrier()
    if rank == 0:
        counts = [min(shard_size, n - s * shard_size) for s in range(num_shards)]
        index = {"format": "vargen-shards", "num_items": n, "augment": augment, "image_size": image_size,
                 "shards": [{"file": _name(s), "count": c} for s, c in enumerate(counts)]}
        atomic_write(out / INDEX, lambda p: Path(p).write_text(json.dumps(index, indent=1)))
    return out


def _name(s: int) -> str:
    return f"shard-{s:06d}.safetensors"


class _Labels:
    """``len()`` and ``[idx]`` of a sharded cache's labels, read per batch."""

    def __init__(self, cache: "ShardedTokens"):
        self.cache = cache

    def __len__(self) -> int:
        return self.cache.num_items

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.cache.read(idx, "labels")


class ShardedTokens:
    """A sharded cache read per batch: ``batch(idx, epochs) -> (inputs, labels)``.

    Holds the shard table and at most ``max_open`` memory-mapped shard handles, never a tensor of
    the dataset's length."""

    def __init__(self, folder: PathLike, seed: int = 0, max_open: int = 8):
        self.folder = Path(folder)
        try:
            index = json.loads((self.folder / INDEX).read_text())
            counts = [int(s["count"]) for s in index["shards"]]
            self.files = [self.folder / s["file"] for s in index["shards"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{self.folder / INDEX} is not a vargen shard index ({e}); extract again "
                               f"with python -m vargen.data.shards") from None
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise WeightsError(f"{self.folder}: shard files missing: {missing[:3]}; the extraction did not "
                               f"finish: rerun it (it resumes)")
        self.augment, self.seed, self.max_open = index.get("augment", "none"), seed, max_open
        self.starts = [0]
        for c in counts:
            self.starts.append(self.starts[-1] + c)
        self.num_items = self.starts[-1]
        self.labels = _Labels(self)
        self._open: Dict[int, Any] = {}

    def __len__(self) -> int:
        return self.num_items

    def _handle(self, s: int):
        if s not in self._open:
            if len(self._open) >= self.max_open:
                self._open.pop(next(iter(self._open)))
            self._open[s] = safe_open(str(self.files[s]), framework="pt")
        return self._open[s]

    def read(self, idx: torch.Tensor, key: str = "tokens") -> torch.Tensor:
        """Rows ``idx`` (global positions) of ``key``, copied out of their shards."""
        import bisect
        rows = []
        for i in idx.tolist():
            if not 0 <= i < self.num_items:
                raise IndexError(f"index {i} out of range for a cache of {self.num_items} items")
            s = bisect.bisect_right(self.starts, i) - 1
            j = i - self.starts[s]
            rows.append(self._handle(s).get_slice(key)[j:j + 1])
        return torch.cat(rows)

    def first_shard(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """One shard's inputs (one view each) and labels: what the trainer's data checks read."""
        idx = torch.arange(self.starts[1])
        return self.batch(idx, torch.zeros_like(idx))

    def batch(self, idx: torch.Tensor, epochs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inputs (one view per sample, drawn per ``(seed, epoch, index)``) and labels."""
        tokens, labels = self.read(idx), self.read(idx, "labels").long()
        if self.augment == "none":
            return tokens, labels
        gens = [torch.Generator().manual_seed(sample_seed(sample_seed(self.seed, int(e)), int(i)))
                for i, e in zip(idx.tolist(), epochs.tolist())]
        choice = [int(torch.randint(tokens.shape[1], (), generator=g)) for g in gens]
        picked = tokens[torch.arange(len(idx)), torch.tensor(choice, dtype=torch.long)]
        if self.augment == "moments":  # [B, 2, C, h, w]: mean, std
            eps = torch.stack([torch.randn(picked.shape[2:], generator=g) for g in gens])
            picked = picked[:, 0] + picked[:, 1] * eps.to(picked.dtype)
        return picked, labels


DEFAULT_AUGMENT = {"LlamaGen": "tencrop", "MAR": "moments", "xAR": "moments"}


def recipe_augment(model: str) -> str:
    """The released augmentation of ``model``'s recipe (LlamaGen's ten crops, MAR's moments)."""
    from vargen.registry import get_entry
    source = getattr(get_entry(model).recipe, "source", "") or ""
    return next((a for k, a in DEFAULT_AUGMENT.items() if source.startswith(k)), "none")


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    from vargen import checks
    from vargen.checks import cli_number
    p = argparse.ArgumentParser("python -m vargen.data.shards", description="Extract a sharded token cache "
                                "(torchrun: every rank extracts its shards; a rerun resumes).")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", required=True, help="dataset name or image folder (class/xxx.JPEG)")
    p.add_argument("--split", default="train")
    p.add_argument("--image-size", type=cli_number(integer=True, minimum=1), default=256)
    p.add_argument("--augment", choices=AUGMENTS, default=None, help="default: --model's recipe, else none")
    p.add_argument("--model", default=None, help="the generator to train (its recipe picks --augment)")
    p.add_argument("--crop-range", type=cli_number(minimum=1, maximum=2), default=1.1)
    p.add_argument("--shard-size", type=cli_number(integer=True, minimum=1), default=1024)
    p.add_argument("--batch-size", type=cli_number(integer=True, minimum=1), default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    augment = args.augment or (recipe_augment(args.model) if args.model else "none")
    from vargen.data import get_dataset
    from vargen.registry import load_tokenizer
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = checks.device(args.device)
    if world_size > 1:
        import torch.distributed as dist
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    size = int(args.image_size * args.crop_range) if augment == "tencrop" else args.image_size
    extract(load_tokenizer(args.tokenizer, device), get_dataset(args.data, args.split, size), args.out,
            augment, args.image_size, args.shard_size, args.batch_size, device, rank, world_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
