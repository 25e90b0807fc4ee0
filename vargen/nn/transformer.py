"""The Llama block used by LlamaGen and NAR: pre-norm RMSNorm, attention, SwiGLU."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import DropPath

from .attention import Attention
from .layers import FeedForward, RMSNorm


class TransformerBlock(nn.Module):
    """``x + attn(norm(x))`` then ``+ ffn(norm(h))``; key names as LlamaGen's ``TransformerBlock``."""

    def __init__(self, dim: int, n_head: int, ffn_hidden: int, n_kv_head: Optional[int] = None,
                 norm_eps: float = 1e-5, attn_dropout: float = 0.0, resid_dropout: float = 0.0,
                 ffn_dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.attention = Attention(dim, n_head, n_kv_head, attn_dropout=attn_dropout,
                                   resid_dropout=resid_dropout)
        self.feed_forward = FeedForward(dim, ffn_hidden, ffn_dropout)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x + self.drop_path(self.attention(self.attention_norm(x), rope, mask))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))
