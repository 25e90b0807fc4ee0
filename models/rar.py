"""RAR: randomized-order autoregression, decoded in raster order with a KV cache.

Paper: "Randomized Autoregressive Visual Generation" (Yu et al., 2024, arXiv 2411.00776). Official
code: https://github.com/bytedance/1d-tokenizer (``modeling/rar.py``, ``README_RAR.md``,
``configs/training/generator/rar.yaml``); weights ``yucornetto/RAR: rar_{b,l,xl,xxl}.bin`` on
MaskGIT-VQGAN ids (:mod:`vargen.tokenizers.maskgit_vqgan`).

Architecture and state-dict keys as the official ``RAR``: ``cls_token``, ``embeddings`` (ONE table:
codes ``[0, V)``, the mask row ``V``, classes at ``V + 1 + c``, the null class last),
``pos_embed`` / ``target_aware_pos_embed`` (``N + 1024`` rows), ``timesteps_embeddings``
(``N + 100`` rows: the adaLN condition of sequence slot j is the class embedding plus row j),
``blocks.{i}`` (adaLN-Zero: ``norm1``, ``attn.{qkv, q_norm, k_norm, proj}`` with qkv bias and
QK LayerNorm, ``norm2``, ``mlp.{fc1, fc2}`` (timm ``Mlp``, GELU), ``adaLN_modulation.1``),
``adaln_before_head`` (weightless LayerNorm, scale before shift) and ``lm_head``.

The sequence is ``[cls, class, x_{o_0}, ..., x_{o_{N-2}}]`` for an order ``o`` (a permutation of
the N raster positions): token x_{o_i} gets ``pos_embed[2 + o_i]`` (where it is) plus
``target_aware_pos_embed[2 + o_{i+1}]`` (which position it predicts); the class slot gets
``target_aware_pos_embed[2 + o_0]``. Training draws random orders with probability
``random_ratio``, annealed from 1 to 0 between ``anneal_start`` and ``anneal_end`` training steps
(the released schedule, counted by the persistent ``train_step`` buffer so a resumed run continues
it; the official ``.bin`` files lack it and the converter adds it at 0). Inference is raster
(``o = identity``), so the model has the :class:`RasterDecoding` / ``SpeculativeDecoding``
capability: ``prefill`` feeds ``[cls, class]``, ``decode`` appends code ids at raster positions
over the KV cache, and the raster, SJD and GSD samplers drive it unchanged. The official
``generate`` (CFG ``(g - 1)(1 - cos(pi (step/N)^pow)) / 2 + 1``, logits divided by
``randomize_temperature``) is the shared ``cfg_schedule="pow-cosine"`` with ``cfg_power`` plus
``temperature``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from vargen import checks, recipes
from vargen.nn import KVCache
from vargen.nn.attention import with_cache
from vargen.registry import Weights, register_model

from .base import Generator


@dataclass
class RARConfig:
    dim: int = 768                 # hidden_size
    n_layer: int = 24              # num_hidden_layers
    n_head: int = 16               # num_attention_heads
    intermediate_size: int = 3072
    vocab_size: int = 1024         # the tokenizer's codebook_size
    grid_size: int = 16            # image_seq_len = grid_size ** 2
    num_classes: int = 1000        # condition_num_classes
    dropout: float = 0.1           # proj_drop (attention output, MLP)
    attn_dropout: float = 0.1
    class_dropout_prob: float = 0.1  # class_label_dropout
    norm_eps: float = 1e-6
    position_padding: int = 1024   # pos tables have image_seq_len + 1024 rows (official)
    timestep_padding: int = 100    # timesteps_embeddings: image_seq_len + 100 rows
    anneal_start: int = 125_000    # random_ratio 1 before this training step ...
    anneal_end: int = 187_500      # ... linearly down to 0 here (rar.yaml: epochs 200 -> 300)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class RARAttention(nn.Module):
    """Attention with qkv bias and QK LayerNorm over a vargen :class:`KVCache` (``cache``)."""

    def __init__(self, c: RARConfig):
        super().__init__()
        self.n_head, self.head_dim = c.n_head, c.dim // c.n_head
        self.qkv = nn.Linear(c.dim, 3 * c.dim, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=c.norm_eps)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=c.norm_eps)
        self.proj = nn.Linear(c.dim, c.dim)
        self.attn_dropout = c.attn_dropout
        self.proj_drop = nn.Dropout(c.dropout)
        self.cache: Optional[KVCache] = None

    def setup_cache(self, batch_size: int, max_len: int, device, dtype) -> None:
        self.cache = KVCache(batch_size, self.n_head, max_len, self.head_dim, device, dtype)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: [B, S, dim]; mask: bool [S, L] or [B, 1, S, L] (True = attend), None = causal
        b, s, dim = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, S, D]
        q, k = self.q_norm(q), self.k_norm(k)
        k, v, mask, causal = with_cache(self.cache, k, v, mask, s)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, s, dim)))


class RARBlock(nn.Module):
    """adaLN-Zero block (DiT): shift/scale/gate for attention and MLP from the condition."""

    def __init__(self, c: RARConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.attn = RARAttention(c)
        self.norm2 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        # official: mlp_ratio = intermediate_size / dim, hidden int(dim * mlp_ratio)
        self.mlp = Mlp(c.dim, int(c.dim * (c.intermediate_size / c.dim)), act_layer=nn.GELU, drop=c.dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                mod: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: [B, S, dim]; cond: [B, S, dim] (class + timestep row per slot), or mod: its adaLN [B, S, 6 dim]
        mod = self.adaLN_modulation(cond) if mod is None else mod
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, c: RARConfig):
        super().__init__()
        self.norm_final = nn.LayerNorm(c.dim, eps=c.norm_eps, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 2 * c.dim))

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor],
                mod: Optional[torch.Tensor] = None) -> torch.Tensor:
        mod = self.adaLN_modulation(cond) if mod is None else mod
        scale, shift = mod.chunk(2, dim=-1)  # official: scale first
        return modulate(self.norm_final(x), shift, scale)


class RAR(Generator):
    config_class = RARConfig
    default_sampler = "raster"
    # Decoding computes the adaLN modulations (blocks and head) of a chunk of raster positions at once,
    # for each distinct class once: about this many rows per chunk GEMM (see :meth:`_modulations`).
    modulation_rows = 128

    def __init__(self, config: RARConfig):
        super().__init__(config)
        c = config
        if c.dim % c.n_head:
            raise ValueError(f"dim {c.dim} is not divisible by n_head {c.n_head}")
        n = c.grid_size ** 2
        # Official creation order (same seed, same initial weights).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.blocks = nn.ModuleList([RARBlock(c) for _ in range(c.n_layer)])
        self.embeddings = nn.Embedding(c.vocab_size + 1 + c.num_classes + 1, c.dim)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, n + c.position_padding, c.dim), 0., 0.02))
        self.target_aware_pos_embed = nn.Parameter(
            nn.init.trunc_normal_(torch.zeros(1, n + c.position_padding, c.dim), 0., 0.02))
        self.timesteps_embeddings = nn.Parameter(
            nn.init.trunc_normal_(torch.zeros(1, n + c.timestep_padding, c.dim), 0., 0.02))
        self.adaln_before_head = FinalLayer(c)
        self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=True)
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))  # the anneal's clock
        self._init_weights()
        self._cond: Optional[torch.Tensor] = None  # [B', dim] class embeddings of the cached rows
        self._classes: Optional[tuple] = None  # (distinct class rows [U, dim], row -> distinct [B'])
        self._mods: Optional[tuple] = None  # (first position, last + 1, per-layer [U, T, 6 dim] + head's)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in [self.adaln_before_head] + list(self.blocks):  # adaLN-Zero
            nn.init.zeros_(m.adaLN_modulation[-1].weight)
            nn.init.zeros_(m.adaLN_modulation[-1].bias)

    # ----------------------------------------------------------------------------- helpers
    @property
    def token_grid(self) -> tuple:
        return (self.config.grid_size, self.config.grid_size)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    @property
    def max_cache_len(self) -> int:
        return 2 + self.config.grid_size ** 2  # cls + class + every code

    def check_labels(self, labels: torch.Tensor, allow_null: bool = True) -> None:
        checks.class_labels(labels, self.config.num_classes, allow_null=allow_null)

    def token_embedding(self) -> torch.Tensor:
        """The ``[V, dim]`` code rows of the shared embedding table (GSD's token distances)."""
        return self.embeddings.weight[:self.config.vocab_size]

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """Class rows ``[B, dim]``: class c at ``V + 1 + c``, the null class (c = num_classes) last."""
        return self.embeddings(labels.long() + self.config.vocab_size + 1)

    def attention_layers(self) -> list:
        return [block.attn for block in self.blocks]

    def clear_cache(self) -> None:
        super().clear_cache()
        self._cond = self._classes = self._mods = None

    def random_ratio(self, step: Optional[int] = None) -> float:
        """Probability of a random order at training ``step`` (official ``get_rar_random_ratio``)."""
        c, step = self.config, int(self.train_step) if step is None else step
        if step < c.anneal_start:
            return 1.0
        if step > c.anneal_end:
            return 0.0
        return 1.0 - (step - c.anneal_start) / max(c.anneal_end - c.anneal_start, 1)

    def sample_orders(self, batch: int, ratio: float, device=None) -> torch.Tensor:
        """``[B, N]`` orders: a random permutation with probability ``ratio``, else raster."""
        n = self.config.grid_size ** 2
        raster = torch.arange(n, device=device).expand(batch, n)
        perms = torch.rand(batch, n, device=device).argsort(-1)
        return torch.where(torch.rand(batch, 1, device=device) < ratio, perms, raster)

    def _run(self, x: torch.Tensor, cond: Optional[torch.Tensor], mask: Optional[torch.Tensor],
             mods: Optional[list] = None) -> torch.Tensor:
        """Blocks, final adaLN and head: ``x, cond [B, S, dim]`` -> logits ``[B, S, V]`` (float32);
        ``mods``: the adaLN outputs of every block and of the head, given instead of ``cond``."""
        mods = mods or [None] * (len(self.blocks) + 1)
        for block, mod in zip(self.blocks, mods):
            x = block(x, cond, mask, mod)
        return self.lm_head(self.adaln_before_head(x, cond, mods[-1])).float()

    # ----------------------------------------------------------------------------- training
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor,
                orders: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher-forced logits ``[B, N, V]``: row i predicts ``tokens[b, orders[b, i]]``.

        ``tokens [B, h, w]`` or ``[B, N]``; ``labels [B]`` (the null class allowed);
        ``orders [B, N]`` permutations of the raster positions (None: raster order).
        """
        tokens = self.check_tokens(tokens)
        b, n = tokens.shape
        if orders is None:
            orders = torch.arange(n, device=tokens.device).expand(b, n)
        pos, tap = self.pos_embed[0], self.target_aware_pos_embed[0]
        cond = self.condition(labels)  # [B, dim]
        seq = tokens.gather(1, orders)  # [B, N] codes in generation order
        x = torch.cat([
            (self.cls_token[0] + pos[0]).expand(b, 1, -1),  # cls: no target-aware row
            (cond + pos[1])[:, None] + tap[2 + orders[:, :1]],  # class slot: predicts o_0
            self.embeddings(seq[:, :-1]) + pos[2 + orders[:, :-1]] + tap[2 + orders[:, 1:]],
        ], dim=1)  # [B, N + 1, dim]
        ada = cond[:, None] + self.timesteps_embeddings[:, :n + 1]  # [B, N + 1, dim]
        return self._run(x, ada, None)[:, 1:]  # drop the cls slot: [B, N, V]

    def training_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Cross-entropy in a random order with probability :meth:`random_ratio` (per sample), class
        dropout to the null class; each call in training mode advances ``train_step``."""
        tokens = self.check_tokens(inputs)
        ratio = 0.0
        if self.training:
            ratio = self.random_ratio()
            if torch.is_grad_enabled():
                self.train_step += 1
            drop = torch.rand(labels.shape, device=labels.device) < self.config.class_dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        orders = self.sample_orders(tokens.shape[0], ratio, tokens.device)
        logits = self(tokens, labels, orders)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.gather(1, orders).flatten())
        return loss, {"random_ratio": float(ratio)}

    # ----------------------------------------------------------------------------- inference hooks
    def prefill(self, labels: torch.Tensor) -> torch.Tensor:
        """Feed ``[cls, class]`` for ``labels [B]``; logits ``[B, V]`` for the first code."""
        cond = self.condition(labels)  # [B, dim]
        self._cond, self._mods = cond, None
        distinct, rows = torch.unique(labels, return_inverse=True)  # under CFG, the null rows share one
        self._classes = (self.condition(distinct), rows)
        pos, tap = self.pos_embed[0], self.target_aware_pos_embed[0]
        x = torch.stack([(self.cls_token[0, 0] + pos[0]).expand_as(cond), cond + pos[1] + tap[2]], 1)
        ada = cond[:, None] + self.timesteps_embeddings[:, :2]  # [B, 2, dim]
        return self._run(x, ada, None)[:, -1]

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append codes ``tokens [B, T]`` at raster ``positions [T]`` (or ``[B, T]``) to the cache.

        Returns logits ``[B, T, V]``: row t predicts the code at raster position
        ``positions[t] + 1``. ``mask`` is bool ``[T, cached + T]`` (default: causal in cache order).
        """
        if self._cond is None:
            raise RuntimeError("decode() needs prefill() first (it holds the rows' classes)")
        n = self.config.grid_size ** 2
        pos, tap = self.pos_embed[0], self.target_aware_pos_embed[0]
        nxt = positions + 1
        target = torch.where((nxt < n)[..., None], tap[2 + nxt.clamp(max=n - 1)], torch.zeros_like(tap[0]))
        x = self.embeddings(tokens) + pos[2 + positions] + target  # [B, T, dim]
        if self._classes is not None and positions.numel() and not torch.compiler.is_compiling():
            return self._run(x, None, mask, self._modulations(positions))
        ada = self._cond[:, None] + self.timesteps_embeddings[0, 2 + positions]  # [B, T, dim]
        return self._run(x, ada, mask)

    def _modulations(self, positions: torch.Tensor) -> list:
        """adaLN outputs ``[B', T, 6 dim]`` of every block (and ``[B', T, 2 dim]`` of the head) at raster
        ``positions [T]`` or ``[B', T]``. They depend only on the class and the position (condition =
        class row + timestep row), so they are computed for a chunk of positions ahead and for each
        distinct class once (one GEMM of about :attr:`modulation_rows` rows per layer instead of a
        B'-row one per step; the weights are read once per chunk), then gathered."""
        lo, hi = int(positions.min()), int(positions.max()) + 1
        if self._mods is None or lo < self._mods[0] or hi > self._mods[1]:
            distinct = self._classes[0]
            chunk = max(hi - lo, self.modulation_rows // distinct.shape[0], 1)
            end = min(lo + chunk, self.config.grid_size ** 2)
            ada = distinct[:, None] + self.timesteps_embeddings[0, 2 + lo:2 + end]  # [U, chunk, dim]
            layers = [b.adaLN_modulation for b in self.blocks] + [self.adaln_before_head.adaLN_modulation]
            self._mods = (lo, end, [f(ada) for f in layers])
        start, _, mods = self._mods
        rows = self._classes[1]
        at = positions - start
        at = at.expand(rows.shape[0], -1) if at.dim() == 1 else at  # [B', T]
        return [m[rows[:, None], at] for m in mods]


def convert_rar_checkpoint(state: dict) -> dict:
    """Official ``rar_*.bin`` -> vargen: same keys; the non-persistent ``attn_mask`` is dropped if
    present and the anneal's ``train_step`` clock added at 0 (a fine-tune starts a new schedule)."""
    out = {k: v for k, v in state.items() if k != "attn_mask"}
    out.setdefault("train_step", torch.zeros((), dtype=torch.long))
    return out


_HUB, _SRC = "yucornetto/RAR", "https://github.com/bytedance/1d-tokenizer/blob/main/README_RAR.md"
# name: (dim, layers, MLP, ImageNet-256 FID, guidance scale, pow, randomize_temperature) (README_RAR)
PRESETS = {
    "rar-b": (768, 24, 3072, 1.95, 16.0, 2.75, 1.0),      # 261M
    "rar-l": (1024, 24, 4096, 1.70, 15.5, 2.5, 1.02),     # 461M
    "rar-xl": (1280, 32, 5120, 1.50, 6.9, 1.5, 1.02),     # 955M
    "rar-xxl": (1408, 40, 6144, 1.48, 8.0, 1.2, 1.02),    # 1.5B
}
for _name, (_dim, _depth, _mlp, _fid, _g, _pow, _temp) in PRESETS.items():
    register_model(_name, RAR, RARConfig(dim=_dim, n_layer=_depth, intermediate_size=_mlp),
                   weights=Weights(hub_repo=_HUB, filename=_name.replace("-", "_") + ".bin", source=_SRC,
                                   converter=convert_rar_checkpoint, metrics={"imagenet256_fid": _fid}),
                   recipe=recipes.RAR, pipeline=dict(tokenizer="maskgit-vqgan", cfg_scale=_g,
                                                     cfg_schedule="pow-cosine", cfg_power=_pow, temperature=_temp))
register_model("rar-tiny", RAR, RARConfig(
    dim=64, n_layer=2, n_head=4, intermediate_size=128, vocab_size=64, grid_size=4, num_classes=10,
    dropout=0.0, attn_dropout=0.0, position_padding=4, timestep_padding=4, anneal_start=2, anneal_end=6),
    converter=convert_rar_checkpoint, recipe=recipes.RAR)
# Shipped: vq-mnist's 8x8 ids out of 256, the llamagen-mnist trunk size and steps (2000; random
# orders annealed to raster over steps 1000 -> 1500, the released 50% -> 75% of training).
RAR_MNIST = RARConfig(dim=128, n_layer=6, n_head=4, intermediate_size=512, vocab_size=256, grid_size=8,
                      num_classes=10, position_padding=2, timestep_padding=2, anneal_start=1000, anneal_end=1500)
register_model("rar-mnist", RAR, RAR_MNIST, recipe=recipes.RAR, pipeline=dict(tokenizer="vq-mnist", cfg_scale=2.0),
               weights=Weights.shipped("rar-mnist", "6d3d1e4ec2da9d67e36c06a4c2a45f41920b5257e7cd0b6de2b69dd1a3a3612f"))
