"""What a run trains on, and in which order.

A model declares its training data with the class attribute ``trains_on``: ``"images"``
(tokenizers, classifiers: a dataset name or image folder) or ``"tokens"`` (generators: token
grids extracted once by a tokenizer, :mod:`vargen.data.cache`, or a token ``.safetensors`` file).
A text-to-image run (``--captions SET --text-encoder ENC``) turns the class labels into captions
(:mod:`vargen.data.captions`) whose features are encoded once and cached
(:mod:`vargen.text_cache`); its ``labels`` give ``[B, L, D]`` caption features per batch.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist
import torch.nn as nn

from vargen import checks
from vargen.seeding import sample_seed

from .config import TrainConfig

TRAINS_ON = ("images", "tokens")


class GlobalBatchSampler:
    """Step ``s`` -> the dataset indices of global batch ``s``, a pure function of (seed, s).

    The index stream is the concatenation of per-epoch permutations, epoch ``e`` drawn from a
    generator seeded with ``(seed, e)``; a rank takes its contiguous slice of the global batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int):
        if num_items < 1:
            raise ValueError("the training set is empty")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.num_items, generator=g)
        return self._perm

    def global_batch(self, step: int) -> torch.Tensor:
        start, parts = step * self.batch_size, []
        for pos in range(start, start + self.batch_size):
            epoch, i = divmod(pos, self.num_items)
            parts.append(int(self.permutation(epoch)[i]))
        return torch.tensor(parts)

    def local_batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        if self.batch_size % world_size:
            raise ValueError(f"global batch {self.batch_size} does not split evenly over "
                             f"{world_size} processes")
        per_rank = self.batch_size // world_size
        return self.global_batch(step)[rank * per_rank:(rank + 1) * per_rank]


class CaptionConditions:
    """A text-to-image run's labels: sample ``i``'s caption features ``features[index[i]]``,
    gathered into ``[B, L, D]`` when a batch is indexed."""

    def __init__(self, features, index: torch.Tensor, captions):
        self.features, self.index, self.captions = features, index, captions

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.features[self.index[idx]]


def _with_captions(cfg: TrainConfig, data: Dict, rank: int, world_size: int) -> Dict:
    """``data`` with its class labels replaced by caption features (``--captions``)."""
    if not cfg.captions:
        return data
    if not cfg.text_encoder:
        raise ValueError(f"--captions {cfg.captions} needs --text-encoder NAME_OR_FOLDER (e.g. t2i-mnist-t5)")
    if not torch.is_tensor(data["labels"]):
        raise ValueError(f"--captions needs a token file or a dataset name, not a streaming cache ({cfg.data})")
    from vargen.data.captions import template_captions
    from vargen.text import as_text_encoder
    from vargen.text_cache import cached_caption_features
    captions, index = template_captions(cfg.captions, data["labels"], seed=cfg.seed)
    encoder = as_text_encoder(cfg.text_encoder)
    cache_dir = None if cfg.cache_dir is None else f"{cfg.cache_dir}/captions"
    if rank == 0:  # rank 0 encodes (or reads) the cache; the others wait, then read it
        features = cached_caption_features(encoder, captions, cache_dir)
    if world_size > 1:
        dist.barrier()
    if rank != 0:
        features = cached_caption_features(encoder, captions, cache_dir)
    return {**data, "labels": CaptionConditions(features, index, captions)}


def check_data(model: nn.Module, data: Dict[str, torch.Tensor], source: str) -> None:
    """Refuse data the model cannot train on before a run folder exists: token ids outside the
    generator's vocabulary, labels outside its classes, NaN / inf latents or pixels."""
    inputs, labels = data["inputs"], data["labels"]
    if hasattr(inputs, "first_shard"):  # a streaming cache: its first shard stands for the rest
        inputs, labels = inputs.first_shard()
    where = f"--data {source}" + (f" (token cache {data['file']}: delete it if stale)" if data.get("file") else "")
    text = bool(getattr(model, "is_text_conditioned", False))
    if text != isinstance(labels, CaptionConditions):
        raise ValueError(f"{where}: the model is {'text' if text else 'class'}-conditioned; "
                         + ("pass --captions SET --text-encoder NAME" if text else "drop --captions"))
    if getattr(model, "kind", None) == "generator":
        if model.is_discrete:
            try:
                model.check_tokens(inputs)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{where}: {e} ({model.vocab_size} codes: does the token file come "
                              f"from this generator's tokenizer?)") from None
        else:
            checks.finite(f"{where}: latents", inputs)
        if text:  # the first few samples' caption features (width, length, finite)
            model.check_labels(labels[torch.arange(min(len(labels), 4))])
        else:
            checks.class_labels(labels, model.num_classes, name=f"{where}: labels")
    else:
        checks.finite(f"{where}: inputs", inputs)


def load_data(cfg: TrainConfig, trains_on: str, device: torch.device, rank: int,
              world_size: int) -> Dict[str, torch.Tensor]:
    """``{"inputs", "labels"}`` (on CPU) of the kind of data the model ``trains_on``; labels are
    caption features (:class:`CaptionConditions`) with ``cfg.captions``."""
    return _with_captions(cfg, _load_inputs(cfg, trains_on, device, rank, world_size), rank, world_size)


def _load_inputs(cfg: TrainConfig, trains_on: str, device: torch.device, rank: int,
                 world_size: int) -> Dict[str, torch.Tensor]:
    from vargen.data import cache, get_dataset, shards
    if trains_on not in TRAINS_ON:
        raise ValueError(f"{cfg.model} declares trains_on={trains_on!r}; expected one of {TRAINS_ON}")
    if shards.is_sharded(cfg.data):  # a sharded cache folder, read per batch
        if trains_on != "tokens":
            raise ValueError(f"{cfg.data} is a token cache, but {cfg.model} trains on {trains_on}")
        stream = shards.ShardedTokens(cfg.data, seed=cfg.seed)
        return {"inputs": stream, "labels": stream.labels}
    if str(cfg.data).endswith(".safetensors"):
        if trains_on != "tokens":
            raise ValueError(f"{cfg.data} is a token file, but {cfg.model} trains on {trains_on}: "
                             f"pass a dataset name (mnist) or an image folder")
        data = cache.load_token_file(cfg.data)
        return {"inputs": data["tokens"], "labels": data["labels"]}
    if trains_on == "images":
        data = cache.dataset_tensors(get_dataset(cfg.data, cfg.split, cfg.image_size))
        return {"inputs": data["images"], "labels": data["labels"]}
    if cfg.tokenizer is None:
        raise ValueError(f"{cfg.model!r} trains on tokens: pass --tokenizer NAME_OR_FOLDER "
                         f"or --data TOKENS.safetensors (a vargen token file)")
    from vargen.registry import load_tokenizer
    tokenizer = load_tokenizer(cfg.tokenizer, device)
    args = (tokenizer, cfg.data, cfg.split, cfg.image_size, cfg.cache_dir)
    if rank == 0:  # rank 0 extracts (or reads) the cache; the others wait, then read it
        data = cache.cached_tokens(*args, device=device)
    if world_size > 1:
        dist.barrier()
    if rank != 0:
        data = cache.cached_tokens(*args, device=device, create=False)
    return {"inputs": data["tokens"], "labels": data["labels"], "file": data["file"]}
