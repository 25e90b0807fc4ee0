"""Building blocks shared by the generators: RMSNorm, the SwiGLU feed-forward, a GELU linear,
the class embedding with its null row, and DiT's timestep embedding."""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen import checks


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def swiglu_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: Optional[float] = None) -> int:
    """LlamaGen's FFN width: 2/3 of 4*dim, optionally scaled, rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return find_multiple(hidden, multiple_of)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as LlamaGen); ``elementwise_affine=False`` drops the weight."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        out = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out * self.weight if self.weight is not None else out


@functools.lru_cache(maxsize=None)
def _fused_bf16_gelu_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def linear_gelu(x: torch.Tensor, linear: nn.Linear, approximate: str = "none") -> torch.Tensor:
    """``gelu(linear(x))``. Without gradients, in bfloat16 on CPU: one oneDNN GEMM with the bias
    and GELU in its epilogue, applied to the float32 accumulator and rounded once (closer to the
    float32 result than the two ops; a separate bf16 GELU costs as much as the GEMM at VAR's
    widths). Otherwise the two ops, GELU in place when no gradient is needed."""
    if (not torch.is_grad_enabled() and x.dtype == torch.bfloat16 and x.device.type == "cpu"
            and linear.weight.dtype == torch.bfloat16 and _fused_bf16_gelu_available()):
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), linear.weight, linear.bias,
                                                 "gelu", [], approximate)
        return out.view(*x.shape[:-1], out.shape[-1])
    h = linear(x)
    return F.gelu(h, approximate=approximate) if h.requires_grad else torch.ops.aten.gelu_(h, approximate=approximate)


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``, no biases (LlamaGen key names w1/w2/w3)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row (index ``num_classes``) as the null class for CFG.

    During training labels are replaced by the null class with probability ``dropout_prob``.
    Key name ``embedding_table`` as in DiT / LlamaGen. The official LabelEmbedder builds the null
    row only when ``dropout_prob > 0``; whether a loaded checkpoint has it is read from its table
    size (:meth:`fit_state_dict`), not from a training option, and CFG needs it.
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    @property
    def has_null(self) -> bool:
        return self.embedding_table.num_embeddings > self.num_classes

    def fit_state_dict(self, state_dict: dict, prefix: str = "") -> None:
        """Drop (or restore) the null row to match a checkpoint's table of ``num_classes`` (or
        ``num_classes + 1``) rows; any other size is left to the strict loader's shape check."""
        weight = state_dict.get(prefix + "embedding_table.weight")
        table = self.embedding_table.weight
        if weight is not None and weight.shape[0] != table.shape[0] and \
                weight.shape[0] in (self.num_classes, self.num_classes + 1) and weight.shape[1:] == table.shape[1:]:
            self.embedding_table = nn.Embedding(weight.shape[0], table.shape[1], device=table.device,
                                                dtype=table.dtype)

    def check(self, labels: torch.Tensor, allow_null: bool = True) -> torch.Tensor:
        """Integer ids in ``[0, num_classes)`` (``num_classes``, the null class, too if ``allow_null``
        and the table has a null row) as long."""
        return checks.class_labels(labels, self.num_classes, allow_null=allow_null and self.has_null)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        # The range check reads the labels on the host: free on the CPU, a device sync elsewhere,
        # where samplers, pipelines and the trainer have checked them on the host already.
        labels = self.check(labels) if labels.device.type == "cpu" else labels.long()
        if self.training and self.dropout_prob > 0:
            if not self.has_null:
                raise ValueError(f"class dropout {self.dropout_prob} needs the null class, but "
                                 f"embedding_table has only the {self.num_classes} class rows (loaded "
                                 f"from a checkpoint trained with class_dropout_prob=0)")
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class TimestepEmbedder(nn.Module):
    """DiT's time embedding: 256-d sinusoid (cos, sin) then Linear-SiLU-Linear."""

    def __init__(self, dim: int, frequency_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim, self.max_period = frequency_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: [M] (integer steps) -> [M, dim]
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype))
