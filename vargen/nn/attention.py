"""Multi-head attention on ``F.scaled_dot_product_attention`` with an append-only KV cache.

The cache stores keys/values in insertion order. A call may append a block of several tokens
at once; the default mask is causal in insertion order (token i of the block sees everything
cached before the block plus block tokens <= i). Any other pattern (NAR's bidirectional
diagonals, xAR's block-causal cells, SJD's windows) is passed as an explicit boolean mask over
``[queries, cached + new keys]``. ``truncate(n)`` rolls the cache back to its first n entries;
``truncate(lengths [B])`` keeps a different number of entries per row (speculative decoding, where
each sample keeps its own accepted prefix): later blocks are then written at each row's own fill
length and the default mask hides every row's stale tail.
Positions are carried by the RoPE table the caller passes, so insertion order and spatial
order are independent.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .rope import apply_rope


class KVCache:
    """Preallocated ``[B, H, max_len, D]`` keys and values plus a fill length."""

    def __init__(self, batch_size: int, n_heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # the longest row's fill length
        self.row_lengths: Optional[torch.Tensor] = None  # [B] once rows differ, else None

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def lengths(self) -> torch.Tensor:
        """Per-row fill lengths ``[B]``."""
        if self.row_lengths is None:
            return torch.full((self.k.shape[0],), self.length, dtype=torch.long, device=self.k.device)
        return self.row_lengths

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple:
        n = k.shape[2]
        if self.length + n > self.max_len:
            raise RuntimeError(f"KV cache overflow: {self.length} + {n} > {self.max_len}")
        if k.shape[0] != self.k.shape[0]:
            raise ValueError(f"KV cache was set up for batch {self.k.shape[0]}, got {k.shape[0]}")
        if self.row_lengths is None:
            self.k[:, :, self.length:self.length + n] = k
            self.v[:, :, self.length:self.length + n] = v
        else:  # ragged rows: row b is written from its own fill length on
            slots = self.row_lengths[:, None] + torch.arange(n, device=self.k.device)  # [B, n]
            slots = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            self.k.scatter_(2, slots, k.to(self.k.dtype))
            self.v.scatter_(2, slots, v.to(self.v.dtype))
            self.row_lengths = self.row_lengths + n
        self.length += n
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def causal_mask(self, n_new: int, device=None) -> Optional[torch.Tensor]:
        """Default mask for appending ``n_new`` entries (None where plain attention is causal)."""
        if self.row_lengths is None:
            return block_causal_mask(n_new, self.length, device) if n_new > 1 else None
        keys = torch.arange(self.length + n_new, device=device)
        last = self.row_lengths.to(device)[:, None] + torch.arange(n_new, device=device)  # [B, n_new]
        return (keys <= last[..., None])[:, None]  # [B, 1, n_new, length + n_new]

    def truncate(self, n) -> None:
        """Keep the first ``n`` entries: an int for every row, or a ``[B]`` tensor per row."""
        if isinstance(n, torch.Tensor) and n.dim() == 1:
            if n.shape[0] != self.k.shape[0]:
                raise ValueError(f"per-row lengths must have shape [{self.k.shape[0]}], got {tuple(n.shape)}")
            n = n.to(device=self.k.device, dtype=torch.long)
            if bool((n < 0).any() | (n > self.lengths()).any()):
                raise ValueError(f"cannot truncate rows of lengths {self.lengths().tolist()} to {n.tolist()}")
            uniform = bool((n == n[0]).all())
            self.row_lengths = None if uniform else n.clone()
            self.length = int(n.max())
            return
        n = int(n)
        if not 0 <= n <= int(self.lengths().min()):
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self.length, self.row_lengths = n, None

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (e.g. finished samples leaving a batch)."""
        self.k, self.v = self.k[rows], self.v[rows]
        if self.row_lengths is not None:
            self.row_lengths = self.row_lengths[rows]
            self.length = int(self.row_lengths.max())


def block_causal_mask(n_new: int, n_cached: int, device=None) -> torch.Tensor:
    """``[n_new, n_cached + n_new]`` bool: cached keys all visible, causal inside the block."""
    return torch.ones(n_new, n_cached + n_new, dtype=torch.bool, device=device).tril(n_cached)


def with_cache(cache: Optional["KVCache"], k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
               q_len: int, causal: bool = True):
    """Keys and values ``[B, H, S, D]`` through ``cache`` (appended; default mask: causal in cache
    order) or, without one, ``is_causal`` for SDPA. Returns ``(k, v, mask, is_causal)``."""
    if cache is not None:
        if mask is None:
            mask = cache.causal_mask(q_len, device=k.device)
        k, v = cache.append(k, v)
        return k, v, mask, False
    return k, v, mask, mask is None and causal and q_len > 1


class Attention(nn.Module):
    """LlamaGen attention: fused ``wqkv`` (no bias by default), ``wo``, optional GQA, RoPE.

    Without a mask or cache a call is causal, or bidirectional when built with ``causal=False``
    (ViT-style encoders); an explicit mask always wins.
    """

    def __init__(self, dim: int, n_head: int, n_kv_head: Optional[int] = None, qkv_bias: bool = False,
                 attn_dropout: float = 0.0, resid_dropout: float = 0.0, out_bias: bool = False,
                 causal: bool = True):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"dim {dim} is not divisible by n_head {n_head}")
        self.dim, self.n_head = dim, n_head
        self.n_kv_head = n_kv_head or n_head
        self.head_dim = dim // n_head
        kv_dim = self.n_kv_head * self.head_dim
        self.wqkv = nn.Linear(dim, dim + 2 * kv_dim, bias=qkv_bias)
        self.wo = nn.Linear(dim, dim, bias=out_bias)  # xAR's proj has a bias, LlamaGen's wo not
        self.attn_dropout = attn_dropout
        self.causal = causal
        self.resid_dropout = nn.Dropout(resid_dropout)
        self.cache: Optional[KVCache] = None

    def setup_cache(self, batch_size: int, max_len: int, device, dtype) -> None:
        self.cache = KVCache(batch_size, self.n_kv_head, max_len, self.head_dim, device, dtype)

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: [B, S, dim]; rope: [S, head_dim/2, 2]; mask: bool [S, L] or [B, 1, S, L], True = attend
        bsz, seqlen, _ = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv_dim, kv_dim], dim=-1)
        q = q.view(bsz, seqlen, self.n_head, self.head_dim)
        k = k.view(bsz, seqlen, self.n_kv_head, self.head_dim)
        v = v.view(bsz, seqlen, self.n_kv_head, self.head_dim)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
        k, v, mask, is_causal = with_cache(self.cache, k, v, mask, seqlen, self.causal)
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.attn_dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(bsz, seqlen, self.dim)
        return self.resid_dropout(self.wo(out))
