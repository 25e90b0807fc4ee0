"""LlamaGen raster AR transformer: class-conditional, and text-to-image (``model_type="t2i"``).

Paper: "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation" (Sun et al.,
2024, arXiv 2406.06525). Official code: https://github.com/FoundationVision/LlamaGen
(``autoregressive/models/gpt.py``). Same architecture and state-dict keys: ``tok_embeddings``,
``cls_embedding.embedding_table``, ``layers.{i}.attention.{wqkv,wo}``,
``layers.{i}.feed_forward.{w1,w2,w3}``, ``layers.{i}.{attention_norm,ffn_norm}``, ``norm``,
``output``. The sequence is ``[class token] + codes``; the condition token gets zero RoPE.
Text-to-image (``gpt.py`` with ``model_type='t2i'``): 120 caption tokens from T5 features through
``cls_embedding.cap_proj`` (``vargen.nn.caption``), zero RoPE too, caption padding masked; the
null condition of CFG is the checkpoint's ``cls_embedding.uncond_embedding`` (both through
:class:`vargen.nn.caption.CaptionConditioned`, shared with NAR's t2i model).

The network owns no sampling loop. Samplers drive it through ``setup_cache`` / ``prefill`` /
``decode`` / ``truncate_cache``; ``decode`` accepts a block of tokens at any raster positions
with any mask, which is what SJD, GSD and NAR's diagonal decoding need.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen import recipes
from vargen.nn import RMSNorm
from vargen.nn.caption import CaptionConditioned
from vargen.nn.llama import LlamaConfig, LlamaTrunk, linear_rates
from vargen.registry import Weights, register_model

from .base import Generator

LlamaGenConfig = LlamaConfig  # the official ModelArgs, flat (``vargen.nn.llama``)


class LlamaGen(CaptionConditioned, Generator):
    """The Llama trunk (``self.trunk``) + one next-token head (``norm`` / ``output``)."""

    config_class = LlamaConfig
    default_sampler = "raster"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        c = config
        self.trunk = LlamaTrunk(self, c, c.token_grid, linear_rates(c.drop_path_rate, c.n_layer))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.trunk.init_positions()
        self.trunk.init_weights(zero=[self.output])

    def token_embedding(self) -> torch.Tensor:
        """The ``[V, dim]`` input embedding table (GSD's token distances)."""
        return self.tok_embeddings.weight

    # ----------------------------------------------------------------------------- training
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, N, V]`` for all N = grid_size**2 codes.

        Input is ``[cls] + tokens[:, :-1]`` as in the official training forward.
        """
        tokens = self.check_tokens(tokens)
        cls = self.config.cls_token_num
        positions = torch.arange(cls + tokens.shape[1] - 1, device=tokens.device)
        h, rope = self.trunk.embed_block(tokens[:, :-1], labels, positions)  # [B, cls + N - 1, dim]
        with self.caption_rows(labels):  # t2i: causal with the caption padding hidden
            h = self.trunk.run(h, rope, self.padding_mask(None, h.shape[1]))
        logits = self.output(self.norm(h)).float()
        return logits[:, cls - 1:]

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self(tokens, labels)
        return F.cross_entropy(logits.flatten(0, 1), self.check_tokens(tokens).flatten())

    # ----------------------------------------------------------------------------- inference hooks
    def prefill(self, labels: torch.Tensor) -> torch.Tensor:
        """Feed the condition token(s); returns logits ``[B, V]`` for the first code."""
        positions = torch.arange(self.config.cls_token_num, device=labels.device)
        h, rope = self.trunk.embed_block(None, labels, positions)  # [B, cls, dim]
        self.start_caption(labels)  # t2i: its padding stays hidden from every decoded code
        h = self.trunk.run(h, rope, self.padding_mask(None, h.shape[1]))
        return self.output(self.norm(h[:, -1])).float()

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append codes ``tokens [B, T]`` at raster ``positions [T]`` (or per-row ``[B, T]``) to the cache.

        Returns logits ``[B, T, V]``; logits at row t predict the code after position t in
        raster order. ``mask`` is bool ``[T, cached + T]`` (default: causal in cache order).
        """
        h, rope = self.trunk.embed_block(tokens, None, positions + self.config.cls_token_num)  # [B, T, dim]
        h = self.trunk.run(h, rope, self.padding_mask(mask, tokens.shape[1]))  # t2i: caption padding hidden
        return self.output(self.norm(h)).float()


def convert_llamagen_checkpoint(state: dict) -> dict:
    """Official ``c2i_*.pt`` -> vargen: identical keys; drop the non-weight ``freqs_cis`` if present."""
    return {k: v for k, v in state.items() if k != "freqs_cis"}


# Not weights: the official rotation table if a file holds it, and the KV caches / causal mask that
# ``setup_caches`` registers as buffers when a checkpoint was saved after sampling.
_DROPPED = ("freqs_cis", "causal_mask")


def convert_llamagen_t2i_checkpoint(state: dict) -> dict:
    """Official ``t2i_*.pt`` (its ``model`` / ``module`` / ``state_dict``, unwrapped by the loader)
    -> vargen: identical keys, ``cls_embedding.uncond_embedding`` included; drops ``freqs_cis``,
    ``causal_mask`` and ``layers.*.attention.kv_cache.{k,v}_cache`` (non-weights). Loading stays
    strict: anything else missing or extra is an error naming the key."""
    return {k: v for k, v in state.items() if k not in _DROPPED and ".kv_cache." not in k}


_HUB = "FoundationVision/LlamaGen"
_SRC = "https://github.com/FoundationVision/LlamaGen"
# name: (config, released file, ImageNet-256 FID reported by the README, the README's FID cfg)
PRESETS = {
    "llamagen-b": (LlamaConfig(n_layer=12, n_head=12, dim=768), "c2i_B_256.pt", 5.46, 2.0),          # 111M
    "llamagen-l": (LlamaConfig(n_layer=24, n_head=16, dim=1024), "c2i_L_256.pt", 3.80, 2.0),         # 343M
    "llamagen-xl": (LlamaConfig(n_layer=36, n_head=20, dim=1280, grid_size=24),
                    "c2i_XL_384.pt", 2.62, 1.75),                                                  # 775M
    "llamagen-xxl": (LlamaConfig(n_layer=48, n_head=24, dim=1536, grid_size=24),
                     "c2i_XXL_384.pt", 2.34, 1.75),                                                # 1.4B
    "llamagen-3b": (LlamaConfig(n_layer=24, n_head=32, dim=3200, grid_size=24),
                    "c2i_3B_384.pt", 2.18, 1.65),                                                  # 3.1B
}
for _name, (_config, _file, _fid, _cfg) in PRESETS.items():
    register_model(_name, LlamaGen, _config, converter=convert_llamagen_checkpoint, recipe=recipes.LLAMAGEN,
                   weights=Weights(hub_repo=_HUB, filename=_file, source=_SRC, metrics={"imagenet256_fid": _fid}),
                   pipeline=dict(tokenizer="llamagen-vq16", cfg_scale=_cfg))
register_model("llamagen-tiny", LlamaGen, LlamaConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, grid_size=4,
    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0), converter=convert_llamagen_checkpoint,
    recipe=recipes.LLAMAGEN)
# Shipped: 32x32 MNIST digits -> vq-mnist's 8x8 ids out of 256 (trained by demos/train_mnist_zoo.sh).
register_model("llamagen-mnist", LlamaGen, LlamaConfig(
    dim=128, n_layer=6, n_head=4, multiple_of=64, vocab_size=256, num_classes=10, grid_size=8),
    weights=Weights.shipped("llamagen-mnist", "d1254f6542f7b84d01a303d1e0504c47764cc6ffeaa090f4d6dc92be44fccb35"),
    recipe=recipes.LLAMAGEN, pipeline=dict(tokenizer="vq-mnist", cfg_scale=2.0))

# Text-to-image (sample_t2i.py: cfg 7.5, top-k 1000, top-p 1, temperature 1; flan-t5-xl features,
# 120 tokens, left padding). Stage 1: 256 px, LAION-COCO 50M; tokenizer vq_ds16_t2i (VQ-16).
_T2I_HUB, _T2I = "peizesun/llamagen_t2i", dict(model_type="t2i", cls_token_num=120, caption_dim=2048)
T2I_DEFAULTS = dict(cfg_scale=7.5, top_k=1000, top_p=1.0, temperature=1.0)
register_model("llamagen-t2i-xl", LlamaGen, LlamaConfig(n_layer=36, n_head=20, dim=1280, **_T2I),
               converter=convert_llamagen_t2i_checkpoint, recipe=recipes.LLAMAGEN,
               weights=Weights(hub_repo=_T2I_HUB, filename="t2i_XL_stage1_256.pt", source=_SRC),
               pipeline=dict(tokenizer="llamagen-vq16-t2i", text_encoder="google/flan-t5-xl", **T2I_DEFAULTS))
# Stage 2: the stage-1 model fine-tuned at 512 px (32x32 codes of the same tokenizer).
register_model("llamagen-t2i-xl-512", LlamaGen, LlamaConfig(n_layer=36, n_head=20, dim=1280, grid_size=32, **_T2I),
               converter=convert_llamagen_t2i_checkpoint, recipe=recipes.LLAMAGEN,
               weights=Weights(hub_repo=_T2I_HUB, filename="t2i_XL_stage2_512.pt", source=_SRC),
               pipeline=dict(tokenizer="llamagen-vq16-t2i", text_encoder="google/flan-t5-xl", **T2I_DEFAULTS))
# The t2i test model (120 caption tokens of width 16, as released, on a 4x4 grid of 64 codes).
register_model("llamagen-t2i-tiny", LlamaGen, LlamaConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, grid_size=4, model_type="t2i",
    cls_token_num=120, caption_dim=16, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0),
    converter=convert_llamagen_t2i_checkpoint, recipe=recipes.LLAMAGEN)
# Shipped text-to-image digits: llamagen-mnist's trunk on vq-mnist's 8x8 ids, conditioned on 32 tokens
# of the frozen byte-level T5 ``t2i-mnist-t5`` (d_model 64): captions of a few bytes need no 120 tokens.
# Temperature 0.7: at 1.0 one digit in ten is malformed (90.7% read right, 96.6% at 0.7; docs/t2i.md).
register_model("t2i-mnist", LlamaGen, LlamaConfig(
    dim=128, n_layer=6, n_head=4, multiple_of=64, vocab_size=256, grid_size=8, model_type="t2i",
    cls_token_num=32, caption_dim=64), recipe=recipes.LLAMAGEN,
    weights=Weights.shipped("t2i-mnist", "74165cc0dc8bf872ccd0bcc67ccd39292f2e7d3f279571ddadc21a2ab04e4c45"),
    pipeline=dict(tokenizer="vq-mnist", text_encoder="t2i-mnist-t5", cfg_scale=2.0, temperature=0.7))
