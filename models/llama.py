"""The Llama trunk shared by LlamaGen, NAR and NAR-video.

LlamaGen (https://github.com/FoundationVision/LlamaGen, ``autoregressive/models/gpt.py``), NAR
(https://github.com/ThisisBillhe/NAR, ``NAR-images/.../gpt.py``) and NAR's ``LARP_AR``
(``NAR-videos/models/larp_ar.py``) are one network up to their heads: a class token
(``cls_embedding.embedding_table``, null class for CFG), ``tok_embeddings`` + ``tok_dropout``,
Llama blocks ``layers.{i}`` (RMSNorm, attention, SwiGLU) and a position scheme chosen by config:
``"rope_2d"`` (LlamaGen, NAR images: a plain float32 table, zero rows for the condition) or
``"absolute"`` (LARP_AR: a learned ``abs_pe [1, cls + N, dim]`` added after the token dropout).
Key names stay flat, as the official ones. Each family adds its own heads and its own decode
contract (next-token logits for LlamaGen, per-neighbour features for NAR).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from vargen.nn import LabelEmbedder, rope_2d, swiglu_hidden_dim
from vargen.nn.transformer import TransformerBlock

from .base import Generator

POSITION_EMBEDDINGS = ("rope_2d", "absolute")


@dataclass
class LlamaConfig:
    """Fields of the official ``ModelArgs`` that every Llama-trunk family shares."""

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: Optional[int] = None
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    vocab_size: int = 16384
    cls_token_num: int = 1
    position_embedding: str = "rope_2d"  # or "absolute"
    rope_base: float = 10000.0

    @property
    def token_grid(self) -> Tuple[int, ...]:
        raise NotImplementedError

    @property
    def block_size(self) -> int:
        """Grid tokens per sample (the official ``block_size``)."""
        return math.prod(self.token_grid)


class LlamaTrunk(Generator):
    """Condition + token embeddings, ``len(drop_path)`` Llama blocks and the position scheme.

    A family's constructor calls ``super().__init__(config, drop_path)``, adds its heads, then
    :meth:`init_positions` and :meth:`initialize_weights` (in the official order, so the same
    seed gives the official initial weights).
    """

    is_discrete = True

    def __init__(self, config: LlamaConfig, drop_path: Sequence[float]):
        super().__init__(config)
        c = config
        if c.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, "
                             f"got {c.position_embedding!r}")
        self.cls_embedding = LabelEmbedder(c.num_classes, c.dim, c.class_dropout_prob)
        if c.vocab_size:  # a code table (discrete families); continuous inputs bring their own projection
            self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.tok_dropout = nn.Dropout(c.token_dropout_p)
        self.layers = nn.ModuleList([self.block(dp) for dp in drop_path])
        self.rope: Optional[torch.Tensor] = None

    def block(self, drop_path: float = 0.0) -> TransformerBlock:
        c = self.config
        ffn_hidden = swiglu_hidden_dim(c.dim, c.multiple_of, c.ffn_dim_multiplier)
        return TransformerBlock(c.dim, c.n_head, ffn_hidden, c.n_kv_head, c.norm_eps,
                                c.attn_dropout_p, c.resid_dropout_p, c.ffn_dropout_p, drop_path)

    def init_positions(self) -> None:
        c = self.config
        if c.position_embedding == "absolute":
            self.abs_pe = nn.Parameter(torch.randn(1, c.cls_token_num + c.block_size, c.dim) * 0.02)
            return
        h, w = c.token_grid
        if h != w:
            raise ValueError(f"rope_2d needs a square token grid, got {h}x{w}")
        # A plain float32 tensor, not a buffer: model.half() must not round the rotation table
        # (LlamaGen rotates in float32); setup_cache moves it to the model's device.
        self.rope = rope_2d(h, c.dim // c.n_head, c.rope_base, c.cls_token_num)

    def initialize_weights(self, zero: Sequence[nn.Linear] = ()) -> None:
        """N(0, initializer_range) for every linear and embedding, zero biases, zero ``zero``."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for m in zero:
            nn.init.zeros_(m.weight)

    # ----------------------------------------------------------------------------- shared pieces
    @property
    def token_grid(self) -> Tuple[int, ...]:
        return tuple(self.config.token_grid)

    def embed(self, tokens: Optional[torch.Tensor], labels: Optional[torch.Tensor]) -> torch.Tensor:
        """``[cls] + tokens`` embeddings ``[B, cls + T, dim]`` (no cls when labels is None)."""
        parts = []
        if labels is not None:
            cond = self.cls_embedding(labels)  # [B, dim]
            parts.append(cond[:, None].expand(-1, self.config.cls_token_num, -1))
        if tokens is not None:
            parts.append(self.tok_embeddings(tokens))
        return self.tok_dropout(torch.cat(parts, dim=1))

    def embed_block(self, tokens: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                    positions: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Embeddings at sequence ``positions`` (condition first) and their RoPE rows (or None)."""
        h = self.embed(tokens, labels)
        if self.config.position_embedding == "absolute":
            return h + self.abs_pe[0, positions], None  # positions [T] or per-row [B, T]
        return h, self.rope.to(positions.device)[positions]

    def run_layers(self, h: torch.Tensor, rope: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                   layers: Optional[List[nn.Module]] = None) -> torch.Tensor:
        for layer in self.layers if layers is None else layers:
            h = layer(h, rope, mask)
        return h

    # ----------------------------------------------------------------------------- cache
    def attention_layers(self) -> list:
        return [block.attention for block in self.layers]

    @property
    def max_cache_len(self) -> int:
        return self.config.cls_token_num + self.config.block_size

    def setup_cache(self, batch_size: int, max_len: Optional[int] = None,
                    device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        if self.rope is not None:
            self.rope = self.rope.to(device or self.device)
        super().setup_cache(batch_size, max_len, device, dtype)


class CodeEmbedding:
    """For trunks over discrete codes: exposes the code table (the ``TokenEmbedding`` capability)."""

    def token_embedding(self) -> torch.Tensor:
        """The ``[V, dim]`` input embedding table (GSD's token distances)."""
        return self.tok_embeddings.weight
