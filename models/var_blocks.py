"""VAR's transformer blocks: AdaLN self-attention blocks and the AdaLN before the head.

Tian et al., "Visual Autoregressive Modeling" (NeurIPS 2024), github.com/FoundationVision/VAR
``models/basic_var.py`` (``SelfAttention``, ``FFN``, ``AdaLNSelfAttn``, ``AdaLNBeforeHead``) and
``models/var.py`` (``SharedAdaLin``). Key names are the released ones.

- Attention: one fused ``mat_qkv`` (no bias) plus ``q_bias`` / ``v_bias`` parameters and the
  persistent zero buffer ``zero_k_bias``. With ``attn_l2_norm`` q and k are l2-normalised and q
  is multiplied by ``exp(min(scale_mul_1H11, log 100))`` (init log 4), softmax scale 1; without
  it the scale is ``0.25 / sqrt(head_dim)``.
- Block: LayerNorm without affine (eps 1e-6), AdaLN chunks in the released order gamma1, gamma2,
  scale1, scale2, shift1, shift2 (``ada_lin`` = SiLU + Linear(D, 6C), or the d36 ``ada_gss``
  parameter added to one shared projection), tanh-GELU MLP (``fc1``, ``fc2``), drop path.
- KV cache: one preallocated buffer per block, appended one scale at a time (inference only).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vargen.nn import linear_gelu


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """AdaLN ``x * (1 + scale) + shift`` in one pass (a fused multiply-add: equal to the released
    product-then-sum up to one rounding): ``x [B, n, C]``, ``scale``, ``shift [B, 1, C]``."""
    return torch.addcmul(shift, x, scale.add(1))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_l2_norm: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop
        self.cache_k = self.cache_v = None
        self.cache_len = 0

    def setup_cache(self, batch: int, max_len: int, device, dtype) -> None:
        shape = (batch, self.num_heads, max_len, self.head_dim)
        # never read past cache_len, so left unfilled: zeroing [B, H, L, hd] twice per block costs a pass
        self.cache_k = torch.empty(shape, device=device, dtype=dtype)
        self.cache_v = torch.empty(shape, device=device, dtype=dtype)
        self.cache_len = 0

    def clear_cache(self) -> None:
        self.cache_k = self.cache_v = None
        self.cache_len = 0

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, n, hd]
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if self.cache_k is not None:  # inference: append this scale, attend to all so far
            end = self.cache_len + n
            self.cache_k[:, :, self.cache_len:end] = k
            self.cache_v[:, :, self.cache_len:end] = v
            self.cache_len = end
            k, v = self.cache_k[:, :, :end], self.cache_v[:, :, :end]
        p = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=p, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = linear_gelu(x, self.fc1, self.act.approximate)  # [B, n, 4C]
        return self.drop(self.fc2(h))


class AdaLNSelfAttn(nn.Module):
    def __init__(self, dim: int, cond_dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 shared_aln: bool = False, norm_eps: float = 1e-6, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, attn_l2_norm: bool = True):
        super().__init__()
        self.dim, self.drop_path_p = dim, drop_path
        self.attn = SelfAttention(dim, num_heads, attn_l2_norm, attn_drop, drop)
        self.ffn = FFN(dim, round(dim * mlp_ratio), drop)
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        # x [B, n, C]; cond [B, D] (or the shared [B, 1, 6, C] with shared_aln)
        if self.shared_aln:
            mods = (self.ada_gss + cond).unbind(2)
        else:
            mods = self.ada_lin(cond).view(-1, 1, 6, self.dim).unbind(2)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods  # each [B, 1, C]
        x = self.residual(x, self.attn(modulate(self.ln_wo_grad(x), scale1, shift1), attn_bias), gamma1)
        return self.residual(x, self.ffn(modulate(self.ln_wo_grad(x), scale2, shift2)), gamma2)

    def residual(self, x: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """``x + drop_path(h * gamma)``; one fused pass (``addcmul``, equal up to one rounding)
        unless drop path is active."""
        if self.training and self.drop_path_p > 0:
            return x + drop_path(h.mul(gamma), self.drop_path_p, self.training)
        return torch.addcmul(x, h, gamma)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, dim: int, cond_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)  # scale before shift
        return modulate(self.ln_wo_grad(x), scale, shift)


class SharedAdaLin(nn.Linear):
    """d36's ``shared_ada_lin.1``: one Linear(D, 6C) for all blocks, viewed ``[B, 1, 6, C]``."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.weight.shape[0] // 6)
