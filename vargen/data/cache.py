"""Pre-extracted tokens / latents: encode a dataset once with a tokenizer and cache it on disk.

LlamaGen (``autoregressive/train/extract_codes_c2i.py``) and MAR (``main_cache.py``) both train
their generators on codes or VAE moments extracted once, not on pixels. vargen does the same: the
cache file is a safetensors file holding ``tokens`` (int64 ids ``[N, h, w]`` for a discrete
tokenizer, float latents ``[N, C, h, w]`` for a continuous one) and ``labels`` ``[N]``.

Files are keyed by a fingerprint of the tokenizer (sha256 of its config and weights) plus the
dataset, split and image size, so changed tokenizer weights never reuse stale tokens. Writes are
atomic (temporary name, then rename). Deviation: MAR caches the KL posterior moments and samples
from them each epoch; vargen caches ``tokenizer.encode(x)`` (the deterministic encoding).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from vargen.hub import WeightsError, atomic_write, load_safetensors

PathLike = Union[str, Path]


def default_cache_dir() -> Path:
    """``$VARGEN_CACHE/tokens`` or ``~/.cache/vargen/tokens``."""
    root = os.environ.get("VARGEN_CACHE") or Path.home() / ".cache" / "vargen"
    return Path(root) / "tokens"


def tokenizer_fingerprint(tokenizer: torch.nn.Module) -> str:
    """sha256 over the tokenizer's class, config and every weight (names, dtypes, bytes)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    config = getattr(tokenizer, "config", None)
    if dataclasses.is_dataclass(config):
        digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    for name, value in sorted(tokenizer.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def folder_fingerprint(root: PathLike) -> str:
    """sha256 over an image folder's absolute path and its files' names, sizes and mtimes: two
    folders with the same name, or a folder whose images changed, get different cache entries."""
    from vargen.data.folder import list_images
    root = Path(root).resolve()
    digest = hashlib.sha256(str(root).encode())
    for f in list_images(root):
        stat = f.stat()
        digest.update(f"{f.relative_to(root).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def cache_path(cache_dir: PathLike, fingerprint: str, dataset: str, split: str,
               image_size: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(dataset)).strip("_")
    if Path(dataset).is_dir():  # a folder: its contents are part of the key, not just its name
        safe += "-" + folder_fingerprint(dataset)[:12]
    return Path(cache_dir) / f"{safe}-{split}-{image_size}px-{fingerprint[:16]}.safetensors"


def dataset_tensors(dataset: Dataset) -> Dict[str, torch.Tensor]:
    """``{"images": [N, 3, H, W], "labels": [N]}`` of a map-style ``(image, label)`` dataset."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):  # MNISTDigits is in memory
        return {"images": dataset.images, "labels": torch.as_tensor(dataset.labels).long()}
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return {"images": torch.stack(images), "labels": torch.as_tensor(labels).long()}


@torch.no_grad()
def extract_tokens(tokenizer: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                   device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """``tokenizer.encode`` over ``images [N, 3, H, W]`` in batches, returned on CPU."""
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        out = [tokenizer.encode(images[i:i + batch_size].to(device)).cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        tokenizer.train(was_training)
    return torch.cat(out)


def load_token_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a token file (``tokens`` + ``labels``) and check it is consistent."""
    data = load_safetensors(path)
    missing = {"tokens", "labels"} - set(data)
    if missing:
        raise WeightsError(f"{path}: a token file needs tensors 'tokens' and 'labels', "
                           f"missing {sorted(missing)} (has {sorted(data)})")
    if data["labels"].dim() != 1 or len(data["labels"]) != len(data["tokens"]):
        raise WeightsError(f"{path}: labels must be [N] with N = len(tokens) = "
                           f"{len(data['tokens'])}, got {tuple(data['labels'].shape)}")
    if data["labels"].is_floating_point() or data["labels"].is_complex() or data["labels"].dtype == torch.bool:
        raise WeightsError(f"{path}: labels must be integer class ids, got {data['labels'].dtype} (a float "
                           f"label such as 0.5 is never truncated to a class)")
    return {"tokens": data["tokens"], "labels": data["labels"].long()}


def save_token_file(path: PathLike, tokens: torch.Tensor, labels: torch.Tensor,
                    metadata: Optional[Dict[str, str]] = None) -> None:
    state = {"tokens": tokens.contiguous(), "labels": labels.long().contiguous()}
    atomic_write(Path(path), lambda p: save_file(state, p, metadata=metadata))


def cached_tokens(tokenizer: torch.nn.Module, dataset: str = "mnist", split: str = "train",
                  image_size: int = 32, cache_dir: Optional[PathLike] = None,
                  batch_size: int = 64, device: Union[str, torch.device] = "cpu",
                  create: bool = True) -> Dict[str, torch.Tensor]:
    """Tokens of ``dataset:split`` under ``tokenizer``: read from the cache, else extract and store.

    With ``create=False`` a missing cache file is an error (used by non-zero DDP ranks, which
    wait for rank 0 to write it).
    """
    from vargen.data import get_dataset

    path = cache_path(cache_dir or default_cache_dir(), tokenizer_fingerprint(tokenizer),
                      dataset, split, image_size)
    if path.exists():
        try:
            return {**load_token_file(path), "file": str(path)}
        except WeightsError:
            if not create:
                raise
            # A corrupt cache entry is only a cache miss: extract again and replace it.
    elif not create:
        raise FileNotFoundError(f"token cache {path} does not exist")
    from vargen import checks
    checks.output_file(path, "token cache (--cache-dir)")  # a read-only cache: refused before tokenizing
    data = dataset_tensors(get_dataset(dataset, split, image_size))
    tokens = extract_tokens(tokenizer, data["images"], batch_size, device)
    save_token_file(path, tokens, data["labels"], metadata={
        "tokenizer": type(tokenizer).__name__, "dataset": str(dataset), "split": split,
        "image_size": str(image_size), "discrete": str(not torch.is_floating_point(tokens))})
    return {"tokens": tokens, "labels": data["labels"], "file": str(path)}
