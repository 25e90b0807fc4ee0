"""Entity partitions for next-X prediction (xAR).

Paper: "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation" (Ren et al.,
2025, arXiv 2502.20388). Official code: https://github.com/OliverRensu/xAR (releases only
``cell`` with 8x8 cells on a 16x16 grid).

An entity partition of an ``h x w`` token grid is an ordered list of groups of raster token
indices (``r * w + c``) covering every token exactly once. Group ``i`` is the i-th AR step. The
model runs on the tokens in *sequence order* (the groups concatenated), so ``order[p]`` is the
raster index of sequence position ``p``.

Kinds:

- ``cell`` (k): k x k squares of neighbouring tokens; cells in raster order of cells, tokens in
  raster order inside a cell. k=8 on 16x16 gives the released TL, TR, BL, BR order.
- ``token``: ``cell`` with k=1 (raster next-token order).
- ``subsample`` (s): s*s strided, non-local groups; group ``(i, j)`` (raster order of (i, j))
  holds tokens ``(i::s, j::s)`` in raster order.
- ``scale``: coarse to fine on one grid. With ``L = ceil(log2(max(h, w)))`` and strides
  ``2**L, 2**(L-1), ..., 1``, level ``l`` holds the tokens ``(r, c)`` with ``r`` and ``c``
  multiples of ``2**(L-l)`` that no coarser level holds (raster order inside a level). On 16x16
  the levels have 1, 3, 12, 48, 192 tokens: the 1x1, 2x2, 4x4, 8x8 and 16x16 lattices, each
  minus the coarser one. (A single-grid analogue; VAR-style residual token maps are a
  different tokenisation.)
- ``image``: one group, the whole grid in raster order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import List, Optional, Sequence, Tuple

import torch

ENTITY_KINDS = ("cell", "subsample", "scale", "image", "token")


@dataclass(frozen=True)
class EntityPartition:
    kind: str
    grid: Tuple[int, int]
    groups: Tuple[Tuple[int, ...], ...]

    def __post_init__(self):
        h, w = self.grid
        flat = [i for g in self.groups for i in g]
        if any(len(g) == 0 for g in self.groups):
            raise ValueError(f"{self.kind} partition has an empty group")
        if sorted(flat) != list(range(h * w)):
            raise ValueError(f"{self.kind} partition does not cover the {h}x{w} grid exactly once")

    @property
    def num_entities(self) -> int:
        return len(self.groups)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @cached_property
    def sizes(self) -> List[int]:
        return [len(g) for g in self.groups]

    @cached_property
    def starts(self) -> List[int]:
        """Sequence offset of every entity, plus the total length at the end."""
        out = [0]
        for n in self.sizes:
            out.append(out[-1] + n)
        return out

    @cached_property
    def order(self) -> torch.Tensor:
        """``[N]`` raster index of each sequence position."""
        return torch.tensor([i for g in self.groups for i in g], dtype=torch.long)

    @cached_property
    def inverse_order(self) -> torch.Tensor:
        """``[N]`` sequence position of each raster index."""
        return torch.argsort(self.order)

    @cached_property
    def entity_ids(self) -> torch.Tensor:
        """``[N]`` entity index of each sequence position."""
        return torch.tensor([e for e, n in enumerate(self.sizes) for _ in range(n)], dtype=torch.long)

    def span(self, entity: int) -> slice:
        if not 0 <= entity < self.num_entities:
            raise IndexError(f"entity {entity} out of range for {self.num_entities} entities")
        return slice(self.starts[entity], self.starts[entity + 1])

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, N, C]`` in sequence order."""
        if x.dim() != 4 or tuple(x.shape[-2:]) != tuple(self.grid):
            raise ValueError(f"expected [B, C, {self.grid[0]}, {self.grid[1]}], got {tuple(x.shape)}")
        return x.flatten(2).transpose(1, 2)[:, self.order.to(x.device)]

    def to_grid(self, seq: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` in sequence order -> ``[B, C, h, w]``."""
        if seq.dim() != 3 or seq.shape[1] != self.num_tokens:
            raise ValueError(f"expected [B, {self.num_tokens}, C], got {tuple(seq.shape)}")
        raster = seq[:, self.inverse_order.to(seq.device)]
        return raster.transpose(1, 2).reshape(seq.shape[0], seq.shape[2], *self.grid)


def entity_causal_mask(partition: EntityPartition) -> torch.Tensor:
    """``[N, N]`` bool in sequence order: entity i attends to entities 0..i (True = attend)."""
    ids = partition.entity_ids
    return ids[None, :] <= ids[:, None]


def cell_partition(h: int, w: int, k: int) -> EntityPartition:
    if k < 1 or h % k or w % k:
        raise ValueError(f"cell size {k} must divide the {h}x{w} grid")
    groups = tuple(tuple((cr * k + r) * w + cc * k + c for r in range(k) for c in range(k))
                   for cr in range(h // k) for cc in range(w // k))
    return EntityPartition("token" if k == 1 else "cell", (h, w), groups)


def subsample_partition(h: int, w: int, s: int) -> EntityPartition:
    if not 1 <= s <= min(h, w):
        raise ValueError(f"subsample stride must be in [1, {min(h, w)}] for a {h}x{w} grid, got {s}")
    groups = tuple(tuple(r * w + c for r in range(i, h, s) for c in range(j, w, s))
                   for i in range(s) for j in range(s))
    return EntityPartition("subsample", (h, w), groups)


def scale_partition(h: int, w: int) -> EntityPartition:
    levels = math.ceil(math.log2(max(h, w))) if max(h, w) > 1 else 0
    seen, groups = set(), []
    for level in range(levels + 1):
        stride = 2 ** (levels - level)
        group = tuple(r * w + c for r in range(0, h, stride) for c in range(0, w, stride)
                      if r * w + c not in seen)
        seen.update(group)
        groups.append(group)
    return EntityPartition("scale", (h, w), tuple(groups))


def image_partition(h: int, w: int) -> EntityPartition:
    return EntityPartition("image", (h, w), (tuple(range(h * w)),))


def make_partition(kind: str, grid: Sequence[int], size: Optional[int] = None) -> EntityPartition:
    """Build a partition by name; ``size`` is the cell side (``cell``) or stride (``subsample``)."""
    h, w = grid
    if kind == "cell":
        if size is None:
            raise ValueError("a cell partition needs size=k (cell side)")
        return cell_partition(h, w, size)
    if kind == "token":
        return cell_partition(h, w, 1)
    if kind == "subsample":
        if size is None:
            raise ValueError("a subsample partition needs size=s (stride)")
        return subsample_partition(h, w, size)
    if kind == "scale":
        return scale_partition(h, w)
    if kind == "image":
        return image_partition(h, w)
    raise ValueError(f"unknown entity kind {kind!r}; expected one of {ENTITY_KINDS}")
