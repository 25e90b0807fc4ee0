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
"""
from __future__ import annotations

from typing import Optional

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


def padded_causal_mask(keep: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, 1, n, n]``: causal, caption padding (the first ``L`` keys, ``keep [B, L]``) hidden
    from every query but itself (the release's ``causal * emb_mask`` with the eye set)."""
    mask = torch.ones(n, n, dtype=torch.bool, device=keep.device).tril()
    mask = mask[None].repeat(keep.shape[0], 1, 1)
    mask[:, :, :keep.shape[1]] &= keep[:, None, :]
    mask |= torch.eye(n, dtype=torch.bool, device=keep.device)
    return mask[:, None]


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
