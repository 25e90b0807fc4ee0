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
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen.nn import RMSNorm
from vargen.registry import Weights, register_model
from vargen.training.recipes import LLAMAGEN

from .llama import CodeEmbedding, LlamaConfig, LlamaTrunk


@dataclass
class LlamaGenConfig(LlamaConfig):
    grid_size: int = 16  # tokens per side; the official block_size is grid_size ** 2

    @property
    def token_grid(self) -> Tuple[int, int]:
        return (self.grid_size, self.grid_size)


class LlamaGen(CodeEmbedding, LlamaTrunk):
    """The Llama trunk + one next-token head (``norm`` / ``output``)."""

    config_class = LlamaGenConfig
    default_sampler = "raster"

    def __init__(self, config: LlamaGenConfig):
        c = config
        super().__init__(config, [c.drop_path_rate * i / max(c.n_layer - 1, 1) for i in range(c.n_layer)])
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.init_positions()
        self.initialize_weights(zero=[self.output])

    # ----------------------------------------------------------------------------- training
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, N, V]`` for all N = grid_size**2 codes.

        Input is ``[cls] + tokens[:, :-1]`` as in the official training forward.
        """
        tokens = self.check_tokens(tokens)
        cls = self.config.cls_token_num
        positions = torch.arange(cls + tokens.shape[1] - 1, device=tokens.device)
        h, rope = self.embed_block(tokens[:, :-1], labels, positions)  # [B, cls + N - 1, dim]
        h = self.run_layers(h, rope, None)
        logits = self.output(self.norm(h)).float()
        return logits[:, cls - 1:]

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self(tokens, labels)
        return F.cross_entropy(logits.flatten(0, 1), self.check_tokens(tokens).flatten())

    # ----------------------------------------------------------------------------- inference hooks
    def prefill(self, labels: torch.Tensor) -> torch.Tensor:
        """Feed the condition token(s); returns logits ``[B, V]`` for the first code."""
        positions = torch.arange(self.config.cls_token_num, device=labels.device)
        h, rope = self.embed_block(None, labels, positions)
        h = self.run_layers(h, rope, None)
        return self.output(self.norm(h[:, -1])).float()

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append codes ``tokens [B, T]`` at raster ``positions [T]`` (or per-row ``[B, T]``) to the cache.

        Returns logits ``[B, T, V]``; logits at row t predict the code after position t in
        raster order. ``mask`` is bool ``[T, cached + T]`` (default: causal in cache order).
        """
        h, rope = self.embed_block(tokens, None, positions + self.config.cls_token_num)
        h = self.run_layers(h, rope, mask)
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
