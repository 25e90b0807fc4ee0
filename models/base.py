"""What every generator shares: class conditioning with a null class for CFG."""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from vargen.hub import VargenModule
from vargen.nn import Attention


class Generator(VargenModule):
    """Base of the class-conditional generators.

    Subclasses set ``default_sampler`` (a ``vargen.samplers`` name) and ``is_discrete``; the
    config's ``token_grid`` is the grid of token positions, ``(h, w)`` or ``(T, H, W)``. One
    sample's tokens are ``token_shape``: the grid of ids, or ``(C, *token_grid)`` latents. The
    class index ``num_classes`` is the null class used for classifier-free guidance (None for a
    checkpoint whose class table has no null row).
    """

    kind = "generator"
    trains_on = "tokens"  # vargen train feeds token grids (ids or latents) of a tokenizer
    default_sampler: str = "raster"  # which samplers can drive it: their capabilities say
    is_discrete: bool = True

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_labels(self, labels: torch.Tensor, allow_null: bool = True) -> None:
        """Integer class ids in ``[0, num_classes)`` (``num_classes`` too if ``allow_null``)."""
        self.cls_embedding.check(labels, allow_null=allow_null)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_class(self) -> Optional[int]:
        return self.config.num_classes if self.cls_embedding.has_null else None

    @property
    def token_grid(self) -> tuple:
        return tuple(self.config.token_grid)

    @property
    def token_shape(self) -> tuple:
        """Shape of one sample's tokens: ``token_grid`` ids or ``(C, *token_grid)`` latents."""
        return tuple(self.token_grid) if self.is_discrete else (self.latent_channels, *self.token_grid)

    @property
    def vocab_size(self) -> int:
        if not self.is_discrete:
            raise TypeError(f"{type(self).__name__} generates continuous tokens; it has no vocab_size")
        return self.config.vocab_size

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The training contract: ``(loss, logs)`` on tokens ``inputs`` of classes ``labels``."""
        return self.loss(inputs, labels), {}

    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Flatten ``[B, *token_shape]`` or ``[B, N]`` ids to ``[B, N]`` after checking them."""
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be integers, got {tokens.dtype}")
        shape = tuple(self.token_shape)
        n = math.prod(shape)
        if tokens.dim() == 1 + len(shape) and tuple(tokens.shape[1:]) == shape:
            tokens = tokens.flatten(1)
        if tokens.dim() != 2 or tokens.shape[1] != n:
            raise ValueError(f"expected a token grid [B, {', '.join(map(str, shape))}] or [B, {n}], "
                             f"got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size - 1}]")
        return tokens.long()

    # ------------------------------------------------------------------ KV cache (inference hooks)
    def attention_layers(self) -> list:
        """Every ``vargen.nn.Attention`` that keeps a KV cache during sampling (in module order)."""
        return [m for m in self.modules() if isinstance(m, Attention)]

    @property
    def max_cache_len(self) -> int:
        """Cache entries one sample needs at most: the condition tokens and every grid token."""
        return self.config.cls_token_num + math.prod(self.token_grid)

    def setup_cache(self, batch_size: int, max_len: Optional[int] = None,
                    device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        """Allocate KV caches for ``batch_size`` rows (2B under CFG) and ``max_len`` entries."""
        p = next(self.parameters())
        for attn in self.attention_layers():
            attn.setup_cache(batch_size, max_len or self.max_cache_len, device or p.device, dtype or p.dtype)

    def clear_cache(self) -> None:
        for attn in self.attention_layers():
            attn.cache = None

    @property
    def cache_length(self) -> Optional[int]:
        """Entries in the cache (the longest row's), or None without a cache."""
        layers = self.attention_layers()
        cache = layers[0].cache if layers else None
        return None if cache is None else cache.length

    def truncate_cache(self, n) -> None:
        """Keep the first ``n`` entries: an int, or a ``[B]`` tensor of per-row lengths."""
        for attn in self.attention_layers():
            attn.cache.truncate(n)
