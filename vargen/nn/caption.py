"""Text conditioning of the Llama trunk: LlamaGen's ``CaptionEmbedder`` and the caption padding mask.

Official: https://github.com/FoundationVision/LlamaGen ``autoregressive/models/gpt.py``
(``CaptionEmbedder``, ``MLP``) with the masks of ``autoregressive/models/generate.py`` and
``dataset/t2i.py``. Keys: ``cls_embedding.cap_proj.fc1.weight``, ``cls_embedding.cap_proj.fc2.weight``
(bias-free, tanh-GELU between) and the persistent buffer ``cls_embedding.uncond_embedding``
``[token_num, caption_dim]``: the null caption of CFG and of caption dropout, which a checkpoint
brings (it is initialised once at construction, as released, and never again).

A caption condition is ``[B, L, caption_dim]`` T5 features with ``L = token_num`` (120), padded
with zero rows (left padding by default, as released). Zero rows are padding: no query attends to
them except themselves (the release's ``emb_masks`` with its identity diagonal).

:class:`CaptionConditioned` is what a Llama-trunk family adds for ``model_type="t2i"``, written
once for LlamaGen (causal mask) and NAR (``ThisisBillhe/NAR`` ``NAR-images/.../gpt.py``,
proximity mask): the null caption as ``null_class`` and the padding hidden in whatever mask the
family runs.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn


class CaptionMLP(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))`` without biases (the official ``MLP``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Caption features ``[B, L, caption_dim]`` -> condition tokens ``[B, L, dim]``; in training a
    caption is replaced by ``uncond_embedding`` with probability ``dropout_prob`` (its padding
    mask stays the caption's, as in the release)."""

    def __init__(self, caption_dim: int, dim: int, dropout_prob: float = 0.1, token_num: int = 120):
        super().__init__()
        self.caption_dim, self.token_num, self.dropout_prob = caption_dim, token_num, dropout_prob
        self.cap_proj = CaptionMLP(caption_dim, dim, dim)
        self.register_buffer("uncond_embedding", torch.randn(token_num, caption_dim) / caption_dim ** 0.5)

    has_null = True  # the null caption is the buffer

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(caption.shape[0], device=caption.device) < self.dropout_prob
            caption = torch.where(drop[:, None, None], self.uncond_embedding.to(caption.dtype), caption)
        return self.cap_proj(caption.to(self.cap_proj.fc1.weight.dtype))

    def check(self, caption: torch.Tensor, allow_null: bool = True) -> None:
        """Float features ``[B, token_num, caption_dim]``, finite."""
        del allow_null  # any caption may be the null one
        if not torch.is_tensor(caption) or not caption.is_floating_point():
            raise TypeError(f"a text-conditioned generator takes caption features (a float tensor "
                            f"[B, {self.token_num}, {self.caption_dim}], see vargen.text), got "
                            f"{type(caption).__name__ if not torch.is_tensor(caption) else caption.dtype}")
        if caption.dim() != 3 or tuple(caption.shape[1:]) != (self.token_num, self.caption_dim):
            raise ValueError(f"caption features must have shape [B, {self.token_num}, {self.caption_dim}], "
                             f"got {tuple(caption.shape)}")
        if not bool(torch.isfinite(caption).all()):
            raise ValueError("caption features hold NaN or inf")


def caption_keep(caption: torch.Tensor) -> Optional[torch.Tensor]:
    """``[B, L]`` bool, False at padding (all-zero rows); None when nothing is padding."""
    keep = caption.ne(0).any(-1)
    return None if bool(keep.all()) else keep


def padded_mask(keep: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``[B, 1, n, n]``: the square mask ``base [n, n]`` (True = attend; LlamaGen's causal one,
    NAR's proximity one) of a sequence that starts with the caption, its padding (the first ``L``
    keys, ``keep [B, L]``) hidden from every query but itself (the release's ``mask * emb_mask``
    with the eye set)."""
    n = base.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=keep.device)
    return hide_padding(base.to(keep.device), keep, n, n) | eye


def hide_padding(mask: Optional[torch.Tensor], keep: torch.Tensor, n_new: int, n_keys: int) -> torch.Tensor:
    """A decode mask (``[T, S]``, ``[B, 1, T, S]`` or None: all visible) with the caption padding
    keys (the first ``L`` cache entries) hidden: ``[B, 1, T, S]``."""
    if mask is None:
        mask = torch.ones(n_new, n_keys, dtype=torch.bool, device=keep.device)
    mask = mask.expand(keep.shape[0], 1, n_new, n_keys) if mask.dim() == 4 else mask[None, None].expand(
        keep.shape[0], 1, n_new, n_keys)
    mask = mask.clone()
    mask[..., :keep.shape[1]] &= keep[:, None, None, :]
    return mask


class CaptionConditioned:
    """Mixin (before :class:`vargen.models.base.Generator`) for a family whose config may say
    ``model_type="t2i"``: ``is_text_conditioned``, the null caption as ``null_class``, and
    :meth:`padding_mask`, which the family applies to every mask it runs its blocks with.

    ``_keep [B', L]`` (False at padding) belongs to the rows running now: set for one training
    forward (:meth:`caption_rows`) or by a prefill (:meth:`start_caption`) until ``clear_cache``,
    so cached decode steps keep hiding the padding. A class-conditional model never sets it.
    """

    _keep: Optional[torch.Tensor] = None
    negative_condition: Optional[torch.Tensor] = None  # [B, L, D] while a pipeline runs negative prompts

    @property
    def is_text_conditioned(self) -> bool:
        return self.config.model_type == "t2i"

    @property
    def null_class(self):
        """The null class id, or for t2i the null caption ``uncond_embedding [L, caption_dim]`` (a
        pipeline's negative prompts ``[B, L, caption_dim]`` while it runs them)."""
        if not self.is_text_conditioned:
            return super().null_class
        return self.cls_embedding.uncond_embedding if self.negative_condition is None else self.negative_condition

    def clear_cache(self) -> None:
        super().clear_cache()
        self._keep = None

    def start_caption(self, labels: torch.Tensor) -> None:
        """A prefill: the cached sequence starts with captions ``labels``."""
        self._keep = caption_keep(labels) if self.is_text_conditioned else None

    @contextlib.contextmanager
    def caption_rows(self, labels: torch.Tensor) -> Iterator[None]:
        """Sequences starting with ``labels`` run meanwhile (a training forward), any cached
        caption's padding put back after."""
        previous = self._keep
        self.start_caption(labels)
        try:
            yield
        finally:
            self._keep = previous

    def padding_mask(self, mask: Optional[torch.Tensor], n_new: int) -> Optional[torch.Tensor]:
        """``mask`` (None: causal, the attention's default) for ``n_new`` rows run now, with the
        running caption's padding hidden; unchanged without padding. An empty cache means the rows
        start the sequence (training, prefill); otherwise they are appended to it (decode)."""
        keep = self._keep
        if keep is None:
            return mask
        cache = self.layers[0].attention.cache
        if cache is None or cache.length == 0:
            if mask is None:
                mask = torch.ones(n_new, n_new, dtype=torch.bool, device=keep.device).tril()
            return padded_mask(keep, mask)
        if mask is None:
            mask = cache.causal_mask(n_new, device=keep.device)
        return hide_padding(mask, keep, n_new, cache.length + n_new)
