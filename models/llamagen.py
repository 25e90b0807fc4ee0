"""LlamaGen class-conditional raster AR transformer.

Paper: "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation" (Sun et al.,
2024, arXiv 2406.06525). Official code: https://github.com/FoundationVision/LlamaGen
(``autoregressive/models/gpt.py``). Same architecture and state-dict keys: ``tok_embeddings``,
``cls_embedding.embedding_table``, ``layers.{i}.attention.{wqkv,wo}``,
``layers.{i}.feed_forward.{w1,w2,w3}``, ``layers.{i}.{attention_norm,ffn_norm}``, ``norm``,
``output``. The sequence is ``[class token] + codes``; the condition token gets zero RoPE.

The network owns no sampling loop. Samplers drive it through ``setup_cache`` / ``prefill`` /
``decode`` / ``truncate_cache``; ``decode`` accepts a block of tokens at any raster positions
with any mask, which is what SJD, GSD and NAR's diagonal decoding need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Generator
from vargen.registry import Weights, register_model
from vargen.training.recipes import LLAMAGEN
from vargen.nn import LabelEmbedder, RMSNorm, rope_2d, swiglu_hidden_dim
from vargen.nn.transformer import TransformerBlock


@dataclass
class LlamaGenConfig:
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: Optional[int] = None
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    rope_base: float = 10000.0
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
    grid_size: int = 16  # tokens per side; the official block_size is grid_size ** 2

    @property
    def block_size(self) -> int:
        return self.grid_size ** 2


class LlamaGen(Generator):
    config_class = LlamaGenConfig
    default_sampler = "raster"
    samplers = ("raster", "sjd", "gsd")
    is_discrete = True

    def __init__(self, config: LlamaGenConfig):
        super().__init__(config)
        c = config
        self.cls_embedding = LabelEmbedder(c.num_classes, c.dim, c.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.tok_dropout = nn.Dropout(c.token_dropout_p)
        ffn_hidden = swiglu_hidden_dim(c.dim, c.multiple_of, c.ffn_dim_multiplier)
        drop_path = [c.drop_path_rate * i / max(c.n_layer - 1, 1) for i in range(c.n_layer)]
        self.layers = nn.ModuleList([self._block(ffn_hidden, dp) for dp in drop_path])
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        # A plain float32 tensor, not a buffer: model.half() must not round the rotation table
        # (LlamaGen rotates in float32); setup_cache moves it to the model's device.
        self.rope = rope_2d(c.grid_size, c.dim // c.n_head, c.rope_base, c.cls_token_num)
        self.initialize_weights()

    def _block(self, ffn_hidden: int, drop_path: float = 0.0) -> TransformerBlock:
        c = self.config
        return TransformerBlock(c.dim, c.n_head, ffn_hidden, c.n_kv_head, c.norm_eps,
                                c.attn_dropout_p, c.resid_dropout_p, c.ffn_dropout_p, drop_path)

    def initialize_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.output.weight)

    # ----------------------------------------------------------------------------- helpers
    @property
    def grid_shape(self) -> tuple:
        return (self.config.grid_size, self.config.grid_size)

    @property
    def token_shape(self) -> tuple:
        """Shape of one sample's tokens: ``(h, w)`` ids."""
        return self.grid_shape

    def _rope_rows(self, positions: torch.Tensor) -> torch.Tensor:
        return self.rope.to(positions.device)[positions]

    def embed(self, tokens: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """``[cls] + tokens`` embeddings ``[B, cls + T, dim]`` (no cls when labels is None)."""
        parts = []
        if labels is not None:
            cond = self.cls_embedding(labels)  # [B, dim]
            parts.append(cond[:, None].expand(-1, self.config.cls_token_num, -1))
        if tokens is not None:
            parts.append(self.tok_embeddings(tokens))
        return self.tok_dropout(torch.cat(parts, dim=1))

    def trunk(self, h: torch.Tensor, rope: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, rope, mask)
        return h

    # ----------------------------------------------------------------------------- training
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, N, V]`` for all N = grid_size**2 codes.

        Input is ``[cls] + tokens[:, :-1]`` as in the official training forward.
        """
        tokens = self.check_tokens(tokens)
        h = self.embed(tokens[:, :-1], labels)  # [B, cls + N - 1, dim]
        rope = self.rope[: h.shape[1]].to(h.device)
        h = self.trunk(h, rope, None)
        logits = self.output(self.norm(h)).float()
        return logits[:, self.config.cls_token_num - 1:]

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self(tokens, labels)
        return F.cross_entropy(logits.flatten(0, 1), self.check_tokens(tokens).flatten())

    # ----------------------------------------------------------------------------- inference hooks
    def attention_layers(self) -> list:
        return [block.attention for block in self.layers]

    @property
    def max_cache_len(self) -> int:
        return self.config.cls_token_num + self.config.block_size

    def setup_cache(self, batch_size: int, max_len: Optional[int] = None,
                    device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        self.rope = self.rope.to(device or self.output.weight.device)
        super().setup_cache(batch_size, max_len, device, dtype)

    def prefill(self, labels: torch.Tensor) -> torch.Tensor:
        """Feed the condition token(s); returns logits ``[B, V]`` for the first code."""
        h = self.embed(None, labels)
        rope = self.rope[: self.config.cls_token_num].to(h.device)
        h = self.trunk(h, rope, None)
        return self.output(self.norm(h[:, -1])).float()

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append codes ``tokens [B, T]`` at raster ``positions [T]`` (or per-row ``[B, T]``) to the cache.

        Returns logits ``[B, T, V]``; logits at row t predict the code after position t in
        raster order. ``mask`` is bool ``[T, cached + T]`` (default: causal in cache order).
        """
        h = self.tok_dropout(self.tok_embeddings(tokens))
        h = self.trunk(h, self._rope_rows(positions + self.config.cls_token_num), mask)
        return self.output(self.norm(h)).float()


def convert_llamagen_checkpoint(state: dict) -> dict:
    """Official ``c2i_*.pt`` -> vargen: identical keys; drop the non-weight ``freqs_cis`` if present."""
    return {k: v for k, v in state.items() if k != "freqs_cis"}


_HUB = "FoundationVision/LlamaGen"
_SRC = "https://github.com/FoundationVision/LlamaGen"
# name: (config, released file, ImageNet-256 FID reported by the README)
PRESETS = {
    "llamagen-b": (LlamaGenConfig(n_layer=12, n_head=12, dim=768), "c2i_B_256.pt", 5.46),       # 111M
    "llamagen-l": (LlamaGenConfig(n_layer=24, n_head=16, dim=1024), "c2i_L_256.pt", 3.80),      # 343M
    "llamagen-xl": (LlamaGenConfig(n_layer=36, n_head=20, dim=1280, grid_size=24),
                    "c2i_XL_384.pt", 2.62),                                                     # 775M
    "llamagen-xxl": (LlamaGenConfig(n_layer=48, n_head=24, dim=1536, grid_size=24),
                     "c2i_XXL_384.pt", 2.34),                                                   # 1.4B
    "llamagen-3b": (LlamaGenConfig(n_layer=24, n_head=32, dim=3200, grid_size=24),
                    "c2i_3B_384.pt", 2.18),                                                     # 3.1B
}
for _name, (_config, _file, _fid) in PRESETS.items():
    register_model(_name, LlamaGen, _config, converter=convert_llamagen_checkpoint, recipe=LLAMAGEN,
                   weights=Weights(hub_repo=_HUB, filename=_file, source=_SRC,
                                   metrics={"imagenet256_fid": _fid}))
register_model("llamagen-tiny", LlamaGen, LlamaGenConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, grid_size=4,
    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0), converter=convert_llamagen_checkpoint,
    recipe=LLAMAGEN)
