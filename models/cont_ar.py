"""Continuous-token raster AR with a per-token rectified-flow head (Ming-UniVision-style).

Paper: "Ming-UniVision: Joint Image Understanding and Generation with a Unified Continuous
Tokenizer" (Inclusion AI, arXiv 2510.06590). Official code: github.com/inclusionAI/Ming-UniVision,
``mingunivision/diff_loss_rf_swiglu.py`` (``RectifiedFlowLoss``, ``SimpleMLPAdaLN``) and
``mingunivision/modeling_bailing_moe.py`` (``setup_vishead_diffloss``, ``generate_image``). The
head is MAR's ``SimpleMLPAdaLN`` (github.com/LTH14/mar ``models/diffloss.py``) with SwiGLU MLPs.

The trunk is LlamaGen's class-conditional raster transformer (``[class token] + tokens``, 2D
RoPE, KV cache, CFG by a null class) over continuous latents instead of code ids. Its final
hidden state goes through ``vis_head`` (Linear + LayerNorm, Ming's "linear2-norm") and conditions
the flow head, which predicts the velocity of one token's latent. Ming's sampler walks t from 1
(noise) to 0 with ``x += v dt`` (``dt > 0``), so its velocity points from noise to data:
``x_t = (1 - t) x + t eps`` and ``v = x - eps`` -- the negative of xAR's ``eps - x``.

How a latent re-enters the trunk (``input_kind``):

- ``"linear"``: ``linear_proj`` = Linear(latent -> dim); any continuous tokenizer (KL, SD-VAE).
- ``"semantic"``: as Ming-UniVision with MingTok, the latent goes through the tokenizer's frozen
  *causal semantic decoder* (driven token by token with its own KV cache while sampling) and a
  2-layer MLP ``linear_proj`` (Ming's ``mlp_depth: 2``). The tokenizer is held by reference
  (``attach_tokenizer`` or loaded lazily from ``config.semantic_tokenizer``); its weights are
  not part of this model's state dict.

The released code has no training loss for the head (``RectifiedFlowLoss`` ships only
``sample``); vargen's :meth:`ContAR.training_loss` regresses that sampler's velocity at a
uniform per-token t (the released ``t_sample_strategy = "uniform"``), with each token's
condition repeated ``head_batch_mul`` times under fresh (t, noise) as MAR's
``diffusion_batch_mul``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SwiGLUPacked

from vargen.nn import RMSNorm, TimestepEmbedder
from vargen.nn.llama import LlamaTrunk, linear_rates
from vargen.registry import Weights, register_model

from .base import Generator
from .diffloss import FinalLayer, init_adaln_head, modulate

INPUT_KINDS = ("linear", "semantic")


@dataclass
class ContARConfig:
    """A flat record: the Llama trunk's fields (as :class:`vargen.nn.llama.LlamaConfig`, with no
    code table: the tokens are ``latent_channels``-d latents) and the flow head's."""

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
    cls_token_num: int = 1
    position_embedding: str = "rope_2d"  # the trunk's 2D RoPE, as LlamaGen
    rope_base: float = 10000.0
    grid_size: int = 16             # latents per side
    latent_channels: int = 32       # MingTok's 32-d latents
    vis_dim: int = 3072             # vis_head width = the head's condition width (Ming z_channels)
    head_width: int = 3072          # SimpleMLPAdaLN model_channels
    head_depth: int = 12            # ResBlocks
    head_mlp_mult: float = 4.0      # "flow_matching_swiglu-4"
    head_batch_mul: int = 4         # MAR's diffusion_batch_mul (training only)
    time_scale: float = 1000.0      # the head's time embedding sees t * 1000 (a float)
    input_kind: str = "linear"      # "linear" | "semantic" (see the module docstring)
    semantic_dim: int = 0           # width of the tokenizer's semantic features ("semantic")
    semantic_tokenizer: Optional[str] = None  # registered name or folder of that tokenizer

    @property
    def token_grid(self) -> Tuple[int, int]:
        return (self.grid_size, self.grid_size)


class HeadBlock(nn.Module):
    """``x + gate * swiglu(modulate(LN(x), shift, scale))`` with (shift, scale, gate) from y."""

    def __init__(self, width: int, mlp_mult: float):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        # Ming's SwiGLUFFNFused: hidden (int(h * 2/3) + 7) // 8 * 8 of h = width * mlp_mult.
        hidden = (int(int(width * mlp_mult) * 2 / 3) + 7) // 8 * 8
        self.mlp = SwiGLUPacked(width, 2 * hidden)  # fc1 packs [gate; value] as Ming's w12
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FlowHead(nn.Module):
    """``SimpleMLPAdaLN``: velocity ``[M, C]`` of latents ``x [M, C]`` at times ``t [M]``
    (0 = data, 1 = noise) under conditions ``z [M, cond_dim]``."""

    def __init__(self, channels: int, width: int, cond_dim: int, depth: int, mlp_mult: float,
                 time_scale: float = 1000.0):
        super().__init__()
        self.time_scale = time_scale
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList([HeadBlock(width, mlp_mult) for _ in range(depth)])
        self.final_layer = FinalLayer(width, channels)

    def initialize_weights(self) -> None:
        init_adaln_head(self)  # as the released SimpleMLPAdaLN

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(t * self.time_scale) + self.cond_embed(z)  # [M, width]
        h = self.input_proj(x)
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)                                 # [M, C]


class ContAR(Generator):
    """The Llama trunk (``self.trunk``: blocks, 2D RoPE) over continuous latents, plus the flow head.

    Inference hooks (driven by :class:`vargen.samplers.TokenFlowSampler`): ``setup_cache``,
    ``prefill_hidden(labels) -> z [B, vis_dim]``, ``decode_hidden(latents [B, T, C], positions) ->
    z [B, T, vis_dim]`` and ``head_velocity(x, t, z)``; ``clear_cache``. Under ``"semantic"`` input the
    tokenizer's semantic-decoder cache is set up and cleared with the trunk's.
    """

    config_class = ContARConfig
    default_sampler = "token-flow"
    is_discrete = False

    def __init__(self, config: ContARConfig):
        c = config
        if c.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {c.input_kind!r}")
        if (c.input_kind == "semantic") != (c.semantic_dim > 0):
            raise ValueError("input_kind='semantic' needs semantic_dim > 0 (and 'linear' needs 0)")
        super().__init__(config)
        self.trunk = LlamaTrunk(self, c, c.token_grid, linear_rates(c.drop_path_rate, c.n_layer),
                                code_embeddings=False)
        if c.input_kind == "linear":
            self.linear_proj = nn.Linear(c.latent_channels, c.dim)
        else:
            self.linear_proj = nn.Sequential(nn.Linear(c.semantic_dim, c.dim), nn.GELU(),
                                             nn.Linear(c.dim, c.dim))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.trunk.init_positions()
        self.vis_head = nn.Sequential(nn.Linear(c.dim, c.vis_dim), nn.LayerNorm(c.vis_dim, eps=1e-6))
        self.head = FlowHead(c.latent_channels, c.head_width, c.vis_dim, c.head_depth,
                             c.head_mlp_mult, c.time_scale)
        self._tokenizer: Optional[nn.Module] = None  # by reference: never in the state dict
        self.trunk.init_weights()
        self.head.initialize_weights()

    # ----------------------------------------------------------------------------- helpers
    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` latents -> ``[B, N, C]`` raster sequence, after checking them."""
        if not torch.is_floating_point(latents):
            raise TypeError(f"{type(self).__name__} works on continuous latents, got dtype {latents.dtype}")
        if latents.dim() != 4 or tuple(latents.shape[1:]) != self.token_shape:
            raise ValueError(f"expected latents [B, {', '.join(map(str, self.token_shape))}], "
                             f"got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or inf")
        return latents.flatten(2).transpose(1, 2)

    @property
    def uses_tokenizer(self) -> bool:
        """Whether the inputs go through a tokenizer's semantic decoder (pipelines attach it)."""
        return self.config.input_kind == "semantic"

    def attach_tokenizer(self, tokenizer: nn.Module) -> "ContAR":
        """Hold ``tokenizer`` (a MingTok) by reference; its semantic decoder embeds the inputs."""
        c = self.config
        if c.input_kind != "semantic":
            raise ValueError("only input_kind='semantic' uses a tokenizer inside the model")
        decoder = getattr(tokenizer, "semantic_decoder", None)
        if decoder is None:
            raise TypeError(f"{type(tokenizer).__name__} has no semantic_decoder (need a MingTok)")
        if (tokenizer.latent_channels, decoder.dim) != (c.latent_channels, c.semantic_dim):
            raise ValueError(f"tokenizer gives {tokenizer.latent_channels}-d latents and "
                             f"{decoder.dim}-d features; config expects {c.latent_channels} and "
                             f"{c.semantic_dim}")
        tokenizer.eval().requires_grad_(False)
        object.__setattr__(self, "_tokenizer", tokenizer)  # not a submodule: not saved, not trained
        return self

    def semantic_decoder(self) -> nn.Module:
        """The attached tokenizer's frozen semantic decoder, on this model's device."""
        if self._tokenizer is None:
            if self.config.semantic_tokenizer is None:
                raise RuntimeError("input_kind='semantic' needs a tokenizer: call attach_tokenizer(tok) "
                                   "or set config.semantic_tokenizer")
            from vargen.registry import load_tokenizer
            self.attach_tokenizer(load_tokenizer(self.config.semantic_tokenizer, self.vis_head[0].weight.device))
        return self._tokenizer.semantic_decoder.to(self.vis_head[0].weight.device)

    def embed_latents(self, seq: torch.Tensor) -> torch.Tensor:
        """Latent tokens ``[B, T, C]`` -> trunk inputs ``[B, T, dim]`` (continuing the semantic
        decoder's cache when one is set up)."""
        if self.config.input_kind == "semantic":
            decoder = self.semantic_decoder()
            with torch.no_grad():
                seq = decoder(seq.to(decoder.in_proj.weight.dtype))     # [B, T, semantic_dim]
        return self.tok_dropout(self.linear_proj(seq.to(self.vis_head[0].weight.dtype)))

    def condition(self, h: torch.Tensor) -> torch.Tensor:
        return self.vis_head(self.norm(h))

    # ----------------------------------------------------------------------------- training
    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced head conditions ``[B, N, vis_dim]``; row i conditions latent i.

        Input is ``[cls] + latents[:, :-1]`` as LlamaGen's training forward.
        """
        seq = self.check_latents(latents)                               # [B, N, C]
        if self.cache_length is not None:
            raise RuntimeError("forward runs the full sequence; call clear_cache() first")
        cls = self.trunk.condition(labels)                              # [B, cls, dim]
        h = torch.cat([self.tok_dropout(cls), self.embed_latents(seq[:, :-1])], dim=1)
        positions = torch.arange(h.shape[1], device=h.device)
        h = self.trunk.run(h, self.trunk.rope_rows(positions), None)    # [B, cls + N - 1, dim]
        return self.condition(h[:, self.config.cls_token_num - 1:])

    def training_loss(self, latents: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Velocity MSE ``|head(x_t, t, z) - (x - eps)|^2`` at ``x_t = (1 - t) x + t eps``,
        ``t ~ U(0, 1)`` per token, each token repeated ``head_batch_mul`` times."""
        z = self(latents, labels)                                       # [B, N, vis_dim]
        x = self.check_latents(latents)
        mul = self.config.head_batch_mul
        z = z.flatten(0, 1).repeat(mul, 1)                              # [M, vis_dim]
        x = x.flatten(0, 1).repeat(mul, 1).to(z.dtype)                  # [M, C]
        t = torch.rand(x.shape[0], device=x.device, dtype=x.dtype)
        noise = torch.randn_like(x)
        x_t = (1 - t[:, None]) * x + t[:, None] * noise
        loss = F.mse_loss(self.head(x_t, t, z).float(), (x - noise).float())
        return loss, {"flow_mse": loss.item()}

    # ----------------------------------------------------------------------------- inference hooks
    def setup_cache(self, batch_size: int, max_len: Optional[int] = None,
                    device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        device = device or self.device
        super().setup_cache(batch_size, max_len, device, dtype)
        if self.config.input_kind == "semantic":
            self.semantic_decoder().setup_cache(batch_size, math.prod(self.token_grid), device)

    def clear_cache(self) -> None:
        super().clear_cache()
        if self._tokenizer is not None:
            self._tokenizer.semantic_decoder.clear_cache()

    def prefill_hidden(self, labels: torch.Tensor) -> torch.Tensor:
        """Feed the condition token(s); returns the first token's condition ``[B, vis_dim]``."""
        h = self.trunk.condition(labels)                                # [B, cls, dim]
        h = self.trunk.run(h, self.trunk.rope_rows(torch.arange(h.shape[1], device=h.device)), None)
        return self.condition(h[:, -1])

    def decode_hidden(self, latents: torch.Tensor, positions: torch.Tensor,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append latents ``[B, T, C]`` at raster ``positions [T]``; returns conditions
        ``[B, T, vis_dim]`` (row t conditions the token after position t)."""
        h = self.embed_latents(latents)                                 # [B, T, dim]
        h = self.trunk.run(h, self.trunk.rope_rows(positions + self.config.cls_token_num), mask)
        return self.condition(h)

    def head_velocity(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The flow head: ``x [M, C]``, ``t [M]``, ``z [M, vis_dim]`` -> ``v [M, C]`` (toward data)."""
        return self.head(x.to(z.dtype), t, z)  # samplers integrate in float32; bf16 weights run bf16


_NO_DROPOUT = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
# name: config. Trunk sizes as LlamaGen's; head sizes from Ming's "flow_matching_swiglu-4" scaled
# with the trunk (Ming: 3072 wide, 12 blocks on a 2048-wide LLM).
PRESETS = {
    "cont-ar-b": ContARConfig(dim=768, n_layer=12, n_head=12, grid_size=16, latent_channels=32,
                              vis_dim=1024, head_width=1024, head_depth=6),
    "cont-ar-b-mingtok": ContARConfig(dim=768, n_layer=12, n_head=12, grid_size=16, latent_channels=32,
                                      vis_dim=1024, head_width=1024, head_depth=6, input_kind="semantic",
                                      semantic_dim=1024, semantic_tokenizer="mingtok-vision"),
    "cont-ar-tiny": ContARConfig(dim=64, n_layer=2, n_head=4, multiple_of=32, num_classes=10, grid_size=4,
                                 latent_channels=4, vis_dim=64, head_width=64, head_depth=2,
                                 head_mlp_mult=2.0, **_NO_DROPOUT),
}
for _name, _config in PRESETS.items():
    register_model(_name, ContAR, _config)
# Shipped: 64 raster steps over 8x8x4 latents, a 3-block SwiGLU flow head; sized for a ~35-minute
# single-core training run. On kl-mnist latents through a Linear, on mingtok-mnist latents through
# MingTok's frozen causal semantic decoder (as Ming-UniVision). Pipelines: Ming's 16 Euler steps
# per token, CFG on the head.
_MNIST = dict(dim=128, n_layer=4, n_head=4, multiple_of=64, num_classes=10, grid_size=8, latent_channels=4,
              vis_dim=128, head_width=128, head_depth=3, head_mlp_mult=4.0, head_batch_mul=2, **_NO_DROPOUT)
register_model("cont-ar-mnist", ContAR, ContARConfig(**_MNIST),
               weights=Weights.shipped("cont-ar-mnist", "3b2dbd7363d791fc700e9d572a06e7b4ff195620302a6d42fd2767b547a672f1"),
               pipeline=dict(tokenizer="kl-mnist", cfg_scale=3.0, num_steps=16))
register_model("cont-ar-mingtok-mnist", ContAR, ContARConfig(
    input_kind="semantic", semantic_dim=128, semantic_tokenizer="mingtok-mnist", **_MNIST),
    weights=Weights.shipped("cont-ar-mingtok-mnist", "feaf8612e0314adf7dacf719947a3a4dc2b3549c0144e78f04e262356c73538f"),
    pipeline=dict(tokenizer="mingtok-mnist", cfg_scale=3.0, num_steps=16))
