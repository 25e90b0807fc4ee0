"""NAR: next-neighbour prediction with dimension-oriented heads (images).

Paper: "Neighboring Autoregressive Modeling for Efficient Visual Generation" (He et al., 2025,
arXiv 2503.10696). Official code: https://github.com/ThisisBillhe/NAR
(``NAR-images/autoregressive/models/gpt.py`` and ``generate.py``).

The image model is LlamaGen (same trunk, same key names) plus one extra ``TransformerBlock``
``layers.{n_layer}`` with its own ``medusa_norm`` / ``medusa_output`` head. The trunk head
(``norm`` / ``output``, hidden state after block ``n_layer - 1``) predicts the token to the
RIGHT of each input token; the extra block's head predicts the token BELOW. A token that both
heads reach (every interior token) gets the average of the two logits. Attention follows the
"proximity" mask: bidirectional inside a Manhattan anti-diagonal ``h + w = c``, causal across
diagonals, so an n x n grid is decoded in 2n - 1 forward passes (:mod:`vargen.samplers.neighbor`).

The geometry helpers here (diagonals, mask, which head of which token predicts which target)
are shared with the video model in :mod:`vargen.models.nar_video`; they work for any grid rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen.hub import WeightsError
from vargen.nn import RMSNorm
from vargen.registry import Weights, register_model
from vargen.training.recipes import NAR as NAR_RECIPE

from .llama import CodeEmbedding, LlamaTrunk
from .llamagen import LlamaGenConfig

Offsets = Tuple[Tuple[int, ...], ...]


# --------------------------------------------------------------------------------- geometry
def grid_coords(shape: Sequence[int]) -> torch.Tensor:
    """``[N, len(shape)]`` integer coordinates of every grid cell in raster order."""
    axes = [torch.arange(n) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def diagonal_index(shape: Sequence[int]) -> torch.Tensor:
    """``[N]`` Manhattan distance from the origin (the decoding step) of each raster cell."""
    return grid_coords(shape).sum(-1)


def proximity_mask(shape: Sequence[int], cls_token_num: int = 1) -> torch.Tensor:
    """Bool ``[cls + N, cls + N]`` attention mask (True = attend), official layout.

    A grid token sees the condition tokens and every token whose diagonal is <= its own
    (bidirectional inside a diagonal, causal across). Condition tokens are causal among
    themselves and see no grid token.
    """
    step = torch.cat([torch.full((cls_token_num,), -1), diagonal_index(shape)])
    mask = step[None, :] <= step[:, None]
    mask[:cls_token_num, :cls_token_num] = torch.ones(cls_token_num, cls_token_num).tril().bool()
    return mask


def neighbor_sources(shape: Sequence[int], offsets: Offsets) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which head of which input predicts each target, and with what averaging weight.

    Head k of the input at sequence index j (0 = condition, 1 + r = raster cell r) predicts the
    cell ``coords(r) + offsets[k]``. Returns ``src [N, K]`` (sequence index feeding target r
    through head k; 0 where undefined) and ``weight [N, K]`` (1 / number of defined heads, 0
    where undefined). The origin is predicted by every head of the condition token.
    """
    coords = grid_coords(shape)
    off = torch.tensor(offsets)
    src_coords = coords[:, None, :] - off[None]  # [N, K, d]
    valid = (src_coords >= 0).all(-1)
    strides = torch.tensor([math.prod(shape[i + 1:]) for i in range(len(shape))])
    src = torch.where(valid, (src_coords.clamp(min=0) * strides).sum(-1) + 1, 0)
    origin = ~valid.any(-1)
    valid[origin] = True  # all heads of the condition token
    weight = valid.float() / valid.sum(-1, keepdim=True)
    return src, weight


class DiagonalStep(NamedTuple):
    """One forward pass of diagonal decoding.

    ``fed``: raster ids fed in this pass (``None``: the prefill, which feeds the condition);
    ``targets``: raster ids emitted from its logits; ``src [M, K]``: index into the fed block
    (0 for the condition) of the input whose head k predicts each target; ``weight [M, K]``.
    """
    fed: Optional[torch.Tensor]
    targets: torch.Tensor
    src: torch.Tensor
    weight: torch.Tensor


def diagonal_schedule(shape: Sequence[int], offsets: Offsets) -> List[DiagonalStep]:
    """Steps for decoding ``shape`` diagonal by diagonal: ``sum(shape) - len(shape) + 1`` passes."""
    src, weight = neighbor_sources(shape, offsets)
    diag = diagonal_index(shape)
    n = diag.numel()
    steps = []
    for c in range(int(diag.max()) + 1):
        targets = torch.nonzero(diag == c).flatten()  # raster order = the official row order
        fed = None if c == 0 else torch.nonzero(diag == c - 1).flatten()
        local = torch.zeros(n + 1, dtype=torch.long)  # sequence index -> index in the fed block
        if fed is not None:
            local[fed + 1] = torch.arange(fed.numel())
        steps.append(DiagonalStep(fed, targets, local[src[targets]], weight[targets]))
    return steps


# --------------------------------------------------------------------------------- shared model logic
class NeighborHeads:
    """Training forward and diagonal-decoding hooks shared by the image and video NAR models.

    The subclass is a :class:`vargen.models.llama.LlamaTrunk` whose ``layers`` are the trunk
    followed by one extra block per additional head; it sets ``neighbor_offsets`` (the grid
    offset each head predicts) and ``head_modules()`` -> ``[(norm, linear)]`` in head order.
    Head k reads the hidden state after block ``n_layer - 1 + k``. Its decode contract is its
    own (per-head features and logits), not LlamaGen's next-token ``decode``.
    """

    neighbor_offsets: Offsets

    @property
    def num_heads(self) -> int:
        return len(self.neighbor_offsets)

    def neighbor_features(self, h: torch.Tensor, rope: Optional[torch.Tensor],
                          mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Run all blocks; ``[B, S, dim]`` -> normalised per-head features ``[B, S, K, dim]``."""
        first = self.config.n_layer - 1
        norms = [norm for norm, _ in self.head_modules()]
        feats = []
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, mask)
            if i >= first:
                feats.append(norms[i - first](h))
        return torch.stack(feats, dim=2)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Per-head logits: ``[..., K, dim]`` -> ``[..., K, V]``."""
        return torch.stack([lin(features[..., k, :]).float()
                            for k, (_, lin) in enumerate(self.head_modules())], dim=-2)

    def neighbor_logits(self, weighted: torch.Tensor) -> torch.Tensor:
        """``sum_k output_k(weighted[..., k, :])``: ``[..., K, dim]`` -> ``[..., V]``.

        The heads are linear, so averaging logits equals projecting weight-scaled features;
        samplers apply CFG to the features too and project once, for B rows instead of 2B.
        ``weighted`` may be float32 (guidance runs in float32) under bf16 heads.
        """
        out = None
        for k, (_, lin) in enumerate(self.head_modules()):
            part = lin(weighted[..., k, :].to(lin.weight.dtype)).float()
            out = part if out is None else out + part
        return out

    def neighbor_schedule(self) -> List[DiagonalStep]:
        key = tuple(self.token_grid)
        cached = getattr(self, "_schedule", None)
        if cached is None or cached[0] != key:
            self._schedule = (key, diagonal_schedule(key, self.neighbor_offsets))
        return self._schedule[1]

    def attention_mask(self) -> torch.Tensor:
        return proximity_mask(self.token_grid, self.config.cls_token_num)

    # ----------------------------------------------------------------------------- training
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mixed logits ``[B, N, V]`` for all N codes; the input is ``[cls] + all N codes``."""
        tokens = self.check_tokens(tokens)  # [B, N]
        cls = self.config.cls_token_num
        positions = torch.arange(cls + tokens.shape[1], device=tokens.device)
        h, rope = self.embed_block(tokens, labels, positions)  # [B, cls + N, dim]
        feats = self.neighbor_features(h, rope, self.attention_mask().to(h.device))
        logits = self.head_logits(feats[:, cls - 1:])  # [B, 1 + N, K, V]; index 0 = last cond
        src, weight = neighbor_sources(self.token_grid, self.neighbor_offsets)
        src, weight = src.to(h.device), weight.to(logits.device)
        picked = logits[:, src, torch.arange(self.num_heads, device=h.device)]  # [B, N, K, V]
        return (picked * weight[None, :, :, None]).sum(2)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One cross-entropy over the mixed logits (no per-head losses), as the official code."""
        logits = self(tokens, labels)
        return F.cross_entropy(logits.flatten(0, 1), self.check_tokens(tokens).flatten())

    # ----------------------------------------------------------------------------- inference hooks
    def prefill_features(self, labels: torch.Tensor) -> torch.Tensor:
        """Feed the condition; per-head features ``[B, 1, K, dim]`` of its last token."""
        cls = self.config.cls_token_num
        h, rope = self.embed_block(None, labels, torch.arange(cls, device=labels.device))
        return self.neighbor_features(h, rope, None)[:, -1:]

    def prefill_logits(self, labels: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` of the first code: the mean of all heads at the condition token."""
        feats = self.prefill_features(labels)
        return self.neighbor_logits(feats / self.num_heads)[:, 0]

    def decode_features(self, tokens: torch.Tensor, positions: torch.Tensor,
                        mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append a block of codes at raster ``positions [T]``; features ``[B, T, K, dim]``.

        The cache is append-only, so a whole diagonal goes in as one block. Default mask: every
        cached entry and every token of the block is visible (bidirectional inside a diagonal).
        """
        if mask is None:
            mask = torch.ones(tokens.shape[1], self.cache_length + tokens.shape[1],
                              dtype=torch.bool, device=tokens.device)
        h, rope = self.embed_block(tokens, None, positions + self.config.cls_token_num)
        return self.neighbor_features(h, rope, mask)

    def decode_head_logits(self, tokens: torch.Tensor, positions: torch.Tensor,
                           mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As :meth:`decode_features`, projected: per-head logits ``[B, T, K, V]``.

        Head k at row t predicts the cell ``positions[t] + neighbor_offsets[k]``.
        """
        return self.head_logits(self.decode_features(tokens, positions, mask))


# --------------------------------------------------------------------------------- image model
@dataclass
class NARConfig(LlamaGenConfig):
    """LlamaGen's config; NAR adds exactly one block (``medusa_attention_num = 1`` upstream)."""


class NAR(CodeEmbedding, NeighborHeads, LlamaTrunk):
    """Llama trunk + right head (``norm``/``output``) + extra block with below head (``medusa_*``)."""

    config_class = NARConfig
    default_sampler = "neighbor"
    neighbor_offsets: Offsets = ((0, 1), (1, 0))  # right, below

    def __init__(self, config: NARConfig):
        c = config
        # Upstream spreads the drop-path rates over n_layer + 1 blocks.
        rates = (torch.linspace(0, c.drop_path_rate, c.n_layer + 1).tolist() if c.drop_path_rate > 0
                 else [0.0] * (c.n_layer + 1))
        super().__init__(config, rates[:-1])
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.init_positions()
        self.initialize_weights(zero=[self.output])
        extra = self.block(rates[-1])
        self.layers.append(extra)  # key layers.{n_layer}
        self.medusa_norm = RMSNorm(c.dim, c.norm_eps)
        self.medusa_output = nn.Linear(c.dim, c.vocab_size, bias=False)
        # Upstream zero-inits only ``output``; the extra block and medusa_output are N(0, std).
        for m in [*extra.modules(), self.medusa_output]:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=c.initializer_range)

    def head_modules(self) -> List[Tuple[nn.Module, nn.Linear]]:
        return [(self.norm, self.output), (self.medusa_norm, self.medusa_output)]


def convert_nar_checkpoint(state: dict) -> dict:
    """Official ``last_version.pt`` (``{"model": sd}``) -> vargen: same keys, no ``freqs_cis``.

    A plain LlamaGen checkpoint has no ``medusa_*`` keys; upstream loads it with strict=False and
    silently keeps a random below-head. Here it is an error naming what is missing.
    """
    state = {k: v for k, v in state.items() if k != "freqs_cis"}
    if not any(k.startswith("medusa_") for k in state):
        n = len({k.split(".")[1] for k in state if k.startswith("layers.")})
        raise WeightsError(
            f"not a NAR checkpoint: missing keys medusa_norm.weight, medusa_output.weight and the "
            f"extra block layers.{n}.* (the below-neighbour head). It has {n} blocks and looks like "
            f"a plain LlamaGen checkpoint; load it with the llamagen-* model of that size.")
    return state


_SRC = "https://github.com/ThisisBillhe/NAR"
# name: (config, hub weights or None). Parameter counts from the paper; all are 16x16 (256px).
PRESETS = {
    "nar-b": (NARConfig(n_layer=12, n_head=12, dim=768),                                  # 130M
              Weights(hub_repo="chenfeng1271/NAR-imagenet-256-B", filename="last_version.pt",
                      source=_SRC, metrics={"imagenet256_fid": 4.65, "is": 212.3})),
    "nar-m": (NARConfig(n_layer=18, n_head=16, dim=1024), None),                          # 290M
    "nar-l": (NARConfig(n_layer=24, n_head=16, dim=1024), None),                          # 372M
    # The XL repo's file name was not visible in any index we could read (only its README is);
    # "last_version.pt" is the name the training script writes and the B repo uses: unverified.
    "nar-xl": (NARConfig(n_layer=36, n_head=20, dim=1280),                                # 816M
               Weights(hub_repo="yefly/NAR-imagenet-256-XL", filename="last_version.pt",
                       source=_SRC, metrics={"imagenet256_fid": 2.70, "is": 277.5})),
    "nar-xxl": (NARConfig(n_layer=48, n_head=24, dim=1536), None),                        # 1.46B
}
for _name, (_config, _weights) in PRESETS.items():
    register_model(_name, NAR, _config, weights=_weights, converter=convert_nar_checkpoint,
                   recipe=NAR_RECIPE)
register_model("nar-tiny", NAR, NARConfig(
    dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=64, num_classes=10, grid_size=4,
    token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0), converter=convert_nar_checkpoint,
    recipe=NAR_RECIPE)
