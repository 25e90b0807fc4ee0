"""Caption features computed once and cached on disk, as LlamaGen's
``language/extract_t5_feature.py`` does before text-to-image training
(https://github.com/FoundationVision/LlamaGen): each caption's valid token rows only
(``caption_embs[:, :emb_masks.sum()]``, float32), padded back to ``max_length`` on read with the
encoder's padding side.

The file is keyed by a fingerprint of the text encoder (sha256 of its class, tokenizer, settings
and every weight) and of the captions, so features are reused while nothing changed and rebuilt
when the encoder's weights change. Writes are atomic.

    >>> feats = cached_caption_features(encoder, captions)   # CaptionFeatures, N captions
    >>> feats[torch.tensor([0, 5])]                          # [2, max_length, D], zero rows = padding
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence, Union

import torch
from safetensors.torch import save_file

from vargen.atomic import atomic_write
from vargen.hub import WeightsError, load_safetensors
from vargen.text import T5TextEncoder, preprocess


def default_cache_dir() -> Path:
    """``$VARGEN_CACHE/captions`` or ``~/.cache/vargen/captions``."""
    return Path(os.environ.get("VARGEN_CACHE") or Path.home() / ".cache" / "vargen") / "captions"


def encoder_fingerprint(encoder: T5TextEncoder) -> str:
    """sha256 over the encoder's class, tokenizer, max length, padding side, caption preprocessing
    and cleaning switch, and every weight (names, dtypes, bytes)."""
    tok = encoder.tokenizer
    digest = hashlib.sha256(json.dumps({
        "encoder": type(encoder.encoder).__name__, "tokenizer": type(tok).__name__, "vocab": len(tok),
        "max_length": encoder.max_length, "left_padding": encoder.left_padding,
        "preprocess": preprocess(" Preprocess  CHECK "), "clean_captions": encoder.clean_captions}).encode())
    for name, value in sorted(encoder.encoder.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class CaptionFeatures:
    """Features of N captions stored compactly (``rows [sum of lengths, D]``, ``lengths [N]``);
    indexing gives ``[n, max_length, D]`` padded as the encoder pads (zero rows)."""

    def __init__(self, rows: torch.Tensor, lengths: torch.Tensor, max_length: int, left_padding: bool):
        self.rows, self.lengths = rows, lengths.long()
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)[:-1]])
        self.max_length, self.left_padding = int(max_length), bool(left_padding)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: Union[int, Sequence[int], torch.Tensor]) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        out = torch.zeros(len(index), self.max_length, self.rows.shape[1], dtype=self.rows.dtype)
        for row, i in enumerate(index.tolist()):
            start, n = int(self.starts[i]), int(self.lengths[i])
            at = self.max_length - n if self.left_padding else 0
            out[row, at:at + n] = self.rows[start:start + n]
        return out


def cached_caption_features(encoder: T5TextEncoder, captions: Sequence[str], cache_dir=None,
                            batch_size: int = 64, progress: bool = False) -> CaptionFeatures:
    """The features of ``captions`` (``encoder(captions)`` row for row), read from the cache when
    an identical encoder already encoded the same captions, else encoded now and cached."""
    captions = list(captions)
    key = hashlib.sha256((encoder_fingerprint(encoder) + json.dumps(captions)).encode()).hexdigest()
    path = Path(cache_dir or default_cache_dir()) / f"captions-{len(captions)}-{key[:16]}.safetensors"
    if path.is_file():
        data = load_safetensors(path)
        if data["lengths"].shape != (len(captions),) or int(data["lengths"].sum()) != data["rows"].shape[0]:
            raise WeightsError(f"{path}: caption cache does not hold {len(captions)} captions; delete it")
        return CaptionFeatures(data["rows"], data["lengths"], encoder.max_length, encoder.left_padding)
    rows, lengths = [], []
    for start in range(0, len(captions), batch_size):
        feats = encoder(captions[start:start + batch_size]).cpu()  # [b, L, D]
        keep = feats.ne(0).any(-1)  # the valid tokens (padding rows are zero)
        rows += [f[k] for f, k in zip(feats, keep)]
        lengths += keep.sum(1).tolist()
        if progress:
            print(f"vargen: encoded {min(start + batch_size, len(captions))}/{len(captions)} captions", flush=True)
    rows, lengths = torch.cat(rows).float().contiguous(), torch.tensor(lengths, dtype=torch.long)
    atomic_write(path, lambda tmp: save_file({"rows": rows, "lengths": lengths}, tmp))
    return CaptionFeatures(rows, lengths, encoder.max_length, encoder.left_padding)


__all__ = ["CaptionFeatures", "cached_caption_features", "encoder_fingerprint", "default_cache_dir"]
