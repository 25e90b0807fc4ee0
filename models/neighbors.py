"""Next-neighbour prediction, shared by NAR's image and video models (:mod:`vargen.models.nar`,
:mod:`vargen.models.nar_video`): the grid geometry (diagonals, the proximity mask, which head of
which token predicts which target) for a grid of any rank, and :class:`NeighborHeads`, the
training forward and diagonal-decoding hooks over a family's Llama trunk and per-neighbour heads.

Paper: "Neighboring Autoregressive Modeling for Efficient Visual Generation" (He et al., 2025,
arXiv 2503.10696). Official code: https://github.com/ThisisBillhe/NAR (``NAR-images/.../gpt.py``,
``generate.py``; ``NAR-videos/models/larp_ar.py``).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Offsets = Tuple[Tuple[int, ...], ...]


# --------------------------------------------------------------------------------- geometry
def grid_coords(shape: Sequence[int]) -> torch.Tensor:
    """``[N, len(shape)]`` integer coordinates of every grid cell in raster order."""
    axes = [torch.arange(n) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def diagonal_index(shape: Sequence[int]) -> torch.Tensor:
    """``[N]`` Manhattan distance from the origin (the decoding step) of each raster cell."""
    return grid_coords(shape).sum(-1)


DECODE_ORDERS = ("diagonal", "frame")


def decode_steps(shape: Sequence[int], order: str = "diagonal") -> torch.Tensor:
    """``[N]`` decoding step of each raster cell.

    ``"diagonal"`` (the paper): the Manhattan distance, so a video plane t + h + w = c is drawn
    at once. ``"frame"`` (video, beyond the paper): frame after frame, image NAR's diagonals
    h + w = c inside each, step ``t * (H + W - 1) + h + w``; T * (H + W - 1) passes. A token
    still averages its right / down / time heads; the time head's input lies a frame back.
    """
    if order == "diagonal":
        return diagonal_index(shape)
    if order != "frame" or len(shape) != 3:
        raise ValueError(f"decode order must be one of {DECODE_ORDERS} ('frame' for a (T, H, W) grid), "
                         f"got {order!r} for a grid {tuple(shape)}")
    coords = grid_coords(shape)
    return coords[:, 0] * (shape[1] + shape[2] - 1) + coords[:, 1] + coords[:, 2]


def proximity_mask(shape: Sequence[int], cls_token_num: int = 1, order: str = "diagonal") -> torch.Tensor:
    """Bool ``[cls + N, cls + N]`` attention mask (True = attend), official layout.

    A grid token sees the condition tokens and every token whose step is <= its own
    (bidirectional inside a step, causal across). Condition tokens are causal among
    themselves and see no grid token.
    """
    step = torch.cat([torch.full((cls_token_num,), -1), decode_steps(shape, order)])
    mask = step[None, :] <= step[:, None]
    mask[:cls_token_num, :cls_token_num] = torch.ones(cls_token_num, cls_token_num).tril().bool()
    return mask


def neighbor_sources(shape: Sequence[int], offsets: Offsets,
                     order: str = "diagonal") -> Tuple[torch.Tensor, torch.Tensor]:
    """Which head of which input predicts each target, and with what averaging weight.

    Head k of the input at sequence index j (0 = condition, 1 + r = raster cell r) predicts the
    cell ``coords(r) + offsets[k]``. Returns ``src [N, K]`` (sequence index feeding target r
    through head k; 0 where undefined) and ``weight [N, K]`` (1 / number of heads used, 0 where
    unused). The origin is predicted by every head of the condition token. A target averages the
    heads of its neighbours drawn in the step just before it (all of them on the diagonals); one
    that has none (a frame's first token in the ``"frame"`` order) takes the heads that reach it.
    """
    coords = grid_coords(shape)
    off = torch.tensor(offsets)
    src_coords = coords[:, None, :] - off[None]  # [N, K, d]
    valid = (src_coords >= 0).all(-1)
    strides = torch.tensor([math.prod(shape[i + 1:]) for i in range(len(shape))])
    src = torch.where(valid, (src_coords.clamp(min=0) * strides).sum(-1) + 1, 0)
    step = decode_steps(shape, order)
    adjacent = valid & (step[(src - 1).clamp(min=0)] == step[:, None] - 1)
    used = torch.where(adjacent.any(-1, keepdim=True), adjacent, valid)
    origin = ~used.any(-1)
    used[origin] = True  # all heads of the condition token
    weight = used.float() / used.sum(-1, keepdim=True)
    return src, weight


class DiagonalStep(NamedTuple):
    """One forward pass of diagonal decoding.

    ``fed``: raster ids fed in this pass (``None``: the prefill, which feeds the condition);
    ``targets``: raster ids emitted from its logits; ``src [M, K]``: sequence index (0 = the
    condition, 1 + r = raster cell r, fed in this pass or an earlier one) of the input whose
    head k predicts each target; ``weight [M, K]``.
    """
    fed: Optional[torch.Tensor]
    targets: torch.Tensor
    src: torch.Tensor
    weight: torch.Tensor


def diagonal_schedule(shape: Sequence[int], offsets: Offsets, order: str = "diagonal") -> List[DiagonalStep]:
    """Steps for decoding ``shape`` in ``order`` (:func:`decode_steps`): ``sum(shape) - len(shape)
    + 1`` passes for the diagonals, ``T * (H + W - 1)`` frame by frame."""
    src, weight = neighbor_sources(shape, offsets, order)
    step_of = decode_steps(shape, order)
    steps = []
    for c in range(int(step_of.max()) + 1):
        targets = torch.nonzero(step_of == c).flatten()  # raster order = the official row order
        fed = None if c == 0 else torch.nonzero(step_of == c - 1).flatten()
        steps.append(DiagonalStep(fed, targets, src[targets], weight[targets]))
    return steps


# --------------------------------------------------------------------------------- shared model logic
class NeighborHeads:
    """Training forward and diagonal-decoding hooks shared by the image and video NAR models.

    The family holds a :class:`vargen.nn.llama.LlamaTrunk` (``self.trunk``) whose ``layers`` are
    the trunk's blocks followed by one extra block per additional head; it sets ``neighbor_offsets`` (the grid
    offset each head predicts) and ``head_modules()`` -> ``[(norm, linear)]`` in head order.
    Head k reads the hidden state after block ``n_layer - 1 + k``. Its decode contract is its
    own (per-head features and logits), not LlamaGen's next-token ``decode``.

    Both families also take :meth:`token_embedding` (GSD's code table) from here.
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
        key = (tuple(self.token_grid), self.config.decode_order)
        cached = getattr(self, "_schedule", None)
        if cached is None or cached[0] != key:
            self._schedule = (key, diagonal_schedule(key[0], self.neighbor_offsets, key[1]))
        return self._schedule[1]

    def token_embedding(self) -> torch.Tensor:
        """The ``[V, dim]`` input embedding table."""
        return self.tok_embeddings.weight

    def attention_mask(self) -> torch.Tensor:
        return proximity_mask(self.token_grid, self.config.cls_token_num, self.config.decode_order)

    # ----------------------------------------------------------------------------- training
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mixed logits ``[B, N, V]`` for all N codes; the input is ``[cls] + all N codes``."""
        tokens = self.check_tokens(tokens)  # [B, N]
        cls = self.config.cls_token_num
        positions = torch.arange(cls + tokens.shape[1], device=tokens.device)
        h, rope = self.trunk.embed_block(tokens, labels, positions)  # [B, cls + N, dim]
        feats = self.neighbor_features(h, rope, self.attention_mask().to(h.device))
        logits = self.head_logits(feats[:, cls - 1:])  # [B, 1 + N, K, V]; index 0 = last cond
        src, weight = neighbor_sources(self.token_grid, self.neighbor_offsets, self.config.decode_order)
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
        h, rope = self.trunk.embed_block(None, labels, torch.arange(cls, device=labels.device))
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
        h, rope = self.trunk.embed_block(tokens, None, positions + self.config.cls_token_num)
        return self.neighbor_features(h, rope, mask)

    def decode_head_logits(self, tokens: torch.Tensor, positions: torch.Tensor,
                           mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """As :meth:`decode_features`, projected: per-head logits ``[B, T, K, V]``.

        Head k at row t predicts the cell ``positions[t] + neighbor_offsets[k]``.
        """
        return self.head_logits(self.decode_features(tokens, positions, mask))
