"""The Llama trunk: a part that LlamaGen, NAR, NAR-video, the raster video baseline and the
continuous-token AR each hold (``self.trunk``), as DiT and nanoGPT build from blocks.

LlamaGen (https://github.com/FoundationVision/LlamaGen, ``autoregressive/models/gpt.py``), NAR
(https://github.com/ThisisBillhe/NAR, ``NAR-images/.../gpt.py``) and NAR's ``LARP_AR``
(``NAR-videos/models/larp_ar.py``) are one network up to their heads: a class token
(``cls_embedding.embedding_table``, null class for CFG), ``tok_embeddings`` + ``tok_dropout``,
Llama blocks ``layers.{i}`` (RMSNorm, attention, SwiGLU) and a position scheme:
``"rope_2d"`` (LlamaGen, NAR images: a plain float32 table, zero rows for the condition) or
``"absolute"`` (LARP_AR: a learned ``abs_pe [1, cls + N, dim]`` added after the token dropout).

:class:`LlamaTrunk` registers those modules on the family that holds it, under the official flat
names (``layers.3.attention.wqkv``, not ``trunk.layers.3...``), so official checkpoints load
without renaming; it runs them (embedding, blocks, positions) and knows nothing of any head.
:class:`LlamaConfig` is the official ``ModelArgs``: one flat record with named presets in each
family file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .attention import Attention
from .caption import CaptionEmbedder
from .layers import LabelEmbedder, swiglu_hidden_dim
from .rope import rope_2d
from .transformer import TransformerBlock

POSITION_EMBEDDINGS = ("rope_2d", "absolute")
MODEL_TYPES = ("c2i", "t2i")  # class ids, or caption features (vargen.nn.caption)


@dataclass
class LlamaConfig:
    """The official ``ModelArgs`` (LlamaGen ``gpt.py``; NAR images use the same one, LARP_AR the
    same fields). The token grid is ``grid_size x grid_size`` (images) or ``latent_shape``
    ``(T, H, W)`` when set (video, with ``position_embedding="absolute"`` as LARP_AR)."""

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
    class_dropout_prob: float = 0.1  # class (or caption, for t2i) dropout in training
    model_type: str = "c2i"  # "t2i": cls_token_num caption tokens from caption_dim T5 features
    caption_dim: int = 2048
    vocab_size: int = 16384
    cls_token_num: int = 1
    position_embedding: str = "rope_2d"  # or "absolute"
    rope_base: float = 10000.0
    grid_size: int = 16  # tokens per side; the official block_size is grid_size ** 2
    latent_shape: Optional[Tuple[int, ...]] = None  # (T, H, W) for video; None: the square grid
    decode_order: str = "diagonal"  # NAR: the paper's diagonals / planes, or "frame" (video, frame by frame)

    def __post_init__(self):
        if self.latent_shape is not None:  # JSON gives a list
            self.latent_shape = tuple(self.latent_shape)

    @property
    def token_grid(self) -> Tuple[int, ...]:
        return tuple(self.latent_shape) if self.latent_shape is not None else (self.grid_size, self.grid_size)

    @property
    def block_size(self) -> int:
        """Grid tokens per sample (the official ``block_size``)."""
        return math.prod(self.token_grid)


def linear_rates(rate: float, n: int) -> List[float]:
    """LlamaGen's drop-path rates: ``rate * i / (n - 1)`` for block i."""
    return [rate * i / max(n - 1, 1) for i in range(n)]


class LlamaTrunk:
    """Condition + token embeddings, Llama blocks and positions, built on ``owner``.

    ``config`` needs the trunk fields of :class:`LlamaConfig` (``dim`` ... ``rope_base``, and
    ``vocab_size`` unless ``code_embeddings=False``: a continuous family brings its own input
    projection). A family builds its trunk first, then its heads, then calls
    :meth:`init_positions` and :meth:`init_weights`: the official order, so the same seed gives
    the official initial weights.
    """

    def __init__(self, owner: nn.Module, config, token_grid: Sequence[int], drop_path: Sequence[float],
                 code_embeddings: bool = True):
        c = config
        if c.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, "
                             f"got {c.position_embedding!r}")
        self.owner, self.config, self.token_grid = owner, config, tuple(token_grid)
        if getattr(c, "model_type", "c2i") not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {c.model_type!r}")
        if getattr(c, "model_type", "c2i") == "t2i":
            owner.cls_embedding = CaptionEmbedder(c.caption_dim, c.dim, c.class_dropout_prob, c.cls_token_num)
        else:
            owner.cls_embedding = LabelEmbedder(c.num_classes, c.dim, c.class_dropout_prob)
        if code_embeddings:
            owner.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        owner.tok_dropout = nn.Dropout(c.token_dropout_p)
        owner.layers = nn.ModuleList([self.new_block(rate) for rate in drop_path])
        self.rope: Optional[torch.Tensor] = None

    def new_block(self, drop_path: float = 0.0) -> TransformerBlock:
        c = self.config
        ffn_hidden = swiglu_hidden_dim(c.dim, c.multiple_of, c.ffn_dim_multiplier)
        return TransformerBlock(c.dim, c.n_head, ffn_hidden, c.n_kv_head, c.norm_eps,
                                c.attn_dropout_p, c.resid_dropout_p, c.ffn_dropout_p, drop_path)

    @property
    def max_cache_len(self) -> int:
        """Cache entries one sample needs: the condition tokens and every grid token."""
        return self.config.cls_token_num + math.prod(self.token_grid)

    def init_positions(self) -> None:
        c = self.config
        if c.position_embedding == "absolute":
            self.owner.abs_pe = nn.Parameter(torch.randn(1, self.max_cache_len, c.dim) * 0.02)
            return
        if len(self.token_grid) != 2 or self.token_grid[0] != self.token_grid[1]:
            raise ValueError(f"rope_2d needs a square 2-D token grid, got {self.token_grid}")
        # A plain float32 tensor, not a buffer: model.half() must not round the rotation table
        # (LlamaGen rotates in float32); it follows the inputs' device on use.
        self.rope = rope_2d(self.token_grid[0], c.dim // c.n_head, c.rope_base, c.cls_token_num)

    def init_weights(self, zero: Sequence[nn.Linear] = ()) -> None:
        """N(0, initializer_range) for every linear and embedding of the owner, zero biases,
        zero ``zero`` (the official ``_init_weights``)."""
        std = self.config.initializer_range
        for m in self.owner.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for m in zero:
            nn.init.zeros_(m.weight)

    # ----------------------------------------------------------------------------- running
    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """Condition tokens ``[B, cls, dim]``: the class token repeated, or the embedded caption."""
        if isinstance(self.owner.cls_embedding, CaptionEmbedder):
            return self.owner.cls_embedding(labels)[:, :self.config.cls_token_num]
        return self.owner.cls_embedding(labels)[:, None].expand(-1, self.config.cls_token_num, -1)

    def embed(self, tokens: Optional[torch.Tensor], labels: Optional[torch.Tensor]) -> torch.Tensor:
        """``[cls] + tokens`` embeddings after the token dropout, ``[B, cls + T, dim]`` (no cls
        without labels)."""
        parts = [] if labels is None else [self.condition(labels)]
        if tokens is not None:
            parts.append(self.owner.tok_embeddings(tokens))
        return self.owner.tok_dropout(torch.cat(parts, dim=1))

    def embed_block(self, tokens: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                    positions: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Embeddings at sequence ``positions`` (condition first) and their RoPE rows (or None)."""
        h = self.embed(tokens, labels)
        if self.config.position_embedding == "absolute":
            return h + self.owner.abs_pe[0, positions], None  # positions [T] or per-row [B, T]
        return h, self.rope_rows(positions)

    def rope_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """RoPE rows at sequence ``positions`` (the table follows the positions' device)."""
        if self.rope.device != positions.device:
            self.rope = self.rope.to(positions.device)
        return self.rope[positions]

    def run(self, h: torch.Tensor, rope: Optional[torch.Tensor], mask: Optional[torch.Tensor],
            layers: Optional[Sequence[nn.Module]] = None) -> torch.Tensor:
        for layer in self.owner.layers if layers is None else layers:
            h = layer(h, rope, mask)
        return h

    def attention_layers(self) -> List[Attention]:
        return [block.attention for block in self.owner.layers]
