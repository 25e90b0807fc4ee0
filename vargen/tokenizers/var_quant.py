"""VAR's multi-scale residual quantizer (the ``quantize`` of ``var-vqvae``).

Tian et al., "Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale
Prediction" (NeurIPS 2024), official code github.com/FoundationVision/VAR, ``models/quant.py``
(``VectorQuantizer2``, ``Phi``, ``PhiPartiallyShared``).

A feature map ``f [B, C, H, W]`` (H = W = the last patch number) is quantized scale by scale,
small to large: the residual is area-downsampled to ``pn x pn``, each position takes its nearest
code (L2, or cosine with ``using_znorm``), the code map is bicubic-upsampled back to ``H x W``
(not at the last scale) and goes through one of the shared convs phi
(``x * (1 - r) + conv3x3(x) * r``, r = 0.5); the result is added to ``f_hat`` and subtracted from
the residual. ``share_quant_resi = K`` phis are shared across the scales: scale ``si`` of ``SN``
uses the phi whose tick of ``linspace(1/(3K), 1 - 1/(3K), K)`` (K = 4; ``1/(2K)`` otherwise) is
nearest ``si / (SN - 1)`` (numpy's argmin: the first on a tie).

Keys as released: ``embedding.weight``, ``quant_resi.qresi_ls.{k}.{weight,bias}`` and the buffer
``ema_vocab_hit_SV [SN, V]`` (per-scale code hits, an EMA kept for usage statistics).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Phi(nn.Conv2d):
    """3x3 conv mixed with the identity: ``x * (1 - r) + conv(x) * r``."""

    def __init__(self, dim: int, ratio: float):
        super().__init__(dim, dim, kernel_size=3, stride=1, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul(self.ratio)


def phi_indices(num_phis: int, num_scales: int) -> List[int]:
    """Which shared phi each scale uses (the released 4 phis over 10 scales: 0,0,1,1,1,2,2,3,3,3);
    numpy as upstream, so ties round the same way."""
    k = num_phis
    lo = 1 / 3 / k if k == 4 else 1 / 2 / k
    ticks = np.linspace(lo, 1 - lo, k)
    return [int(np.argmin(np.abs(ticks - si / max(num_scales - 1, 1)))) for si in range(num_scales)]


class PhiPartiallyShared(nn.Module):
    def __init__(self, phis: nn.ModuleList):
        super().__init__()
        self.qresi_ls = phis


class MultiScaleQuantizer(nn.Module):
    """Residual quantization over ``patch_nums`` (see the module docstring)."""

    def __init__(self, vocab_size: int, dim: int, patch_nums: Sequence[int], using_znorm: bool = False,
                 beta: float = 0.25, quant_resi: float = 0.5, share_quant_resi: int = 4,
                 eini: float = 0.0):
        super().__init__()
        if share_quant_resi < 2:
            raise ValueError("only the released partially shared phis (share_quant_resi >= 2) are built")
        self.vocab_size, self.dim, self.beta = vocab_size, dim, beta
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.using_znorm = using_znorm
        self.quant_resi = PhiPartiallyShared(nn.ModuleList(
            [Phi(dim, quant_resi) for _ in range(share_quant_resi)]))
        self.phi_of_scale = phi_indices(share_quant_resi, len(self.patch_nums))
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.embedding = nn.Embedding(vocab_size, dim)
        self.eini(eini)
        self.record_hit = 0

    @torch.no_grad()
    def eini(self, eini: float) -> None:
        """The released ``eini``: > 0 truncated normal of that std, < 0 uniform in
        ``+-|eini| / V``, 0 keeps ``nn.Embedding``'s N(0, 1)."""
        if eini > 0:
            nn.init.trunc_normal_(self.embedding.weight, std=eini)
        elif eini < 0:
            self.embedding.weight.uniform_(-abs(eini) / self.vocab_size, abs(eini) / self.vocab_size)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def scale_slices(self) -> List[Tuple[int, int]]:
        """``(begin, end)`` of each scale in the concatenated id sequence."""
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return out

    def phi(self, si: int) -> Phi:
        return self.quant_resi.qresi_ls[self.phi_of_scale[si]]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """``z [N, C]`` -> code ids ``[N]`` (L2 as released, or cosine with ``using_znorm``)."""
        w = self.embedding.weight.detach().float()
        z = z.float()
        if self.using_znorm:
            return torch.argmax(F.normalize(z, dim=-1) @ F.normalize(w, dim=-1).t(), dim=1)
        d = z.square().sum(1, keepdim=True) + w.square().sum(1)
        d = torch.addmm(d, z, w.t(), alpha=-2, beta=1)
        return torch.argmin(d, dim=1)

    def upsampled(self, si: int, h: torch.Tensor) -> torch.Tensor:
        """Scale ``si``'s code map ``[B, C, pn, pn]`` -> its f_hat increment ``[B, C, H, W]``."""
        size = self.patch_nums[-1]
        if si != self.num_scales - 1:
            h = F.interpolate(h, size=(size, size), mode="bicubic")
        phi = self.phi(si)
        return phi(h.to(phi.weight.dtype)).to(h.dtype)  # f_hat stays float32 under a bf16 tokenizer

    def _residual_pass(self, f: torch.Tensor):
        """The residual loop on ``f [B, C, H, W]``: yields ``(si, ids [B, pn*pn], f_hat)``."""
        b, c, hh, ww = f.shape
        if (hh, ww) != (self.patch_nums[-1],) * 2:
            raise ValueError(f"features must be {self.patch_nums[-1]}x{self.patch_nums[-1]} (the last "
                             f"patch number), got {hh}x{ww}")
        rest = f.detach().float().clone()
        f_hat = torch.zeros_like(rest)
        for si, pn in enumerate(self.patch_nums):
            z = rest if si == self.num_scales - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
            ids = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, c)).view(b, pn * pn)
            h = self.embedding(ids).transpose(1, 2).reshape(b, c, pn, pn)
            inc = self.upsampled(si, h)
            f_hat = f_hat + inc
            rest = rest - inc.detach()
            yield si, ids, f_hat

    def encode(self, f: torch.Tensor) -> List[torch.Tensor]:
        """Features ``[B, C, H, W]`` -> ids per scale ``[B, pn*pn]`` (small to large)."""
        return [ids for _, ids, _ in self._residual_pass(f)]

    def embed(self, ids: List[torch.Tensor]) -> torch.Tensor:
        """Ids per scale -> f_hat ``[B, C, H, W]`` (float32)."""
        b = ids[0].shape[0]
        size = self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(b, self.dim, size, size, dtype=torch.float32)
        for si, (pn, idx) in enumerate(zip(self.patch_nums, ids)):
            h = self.embedding(idx).transpose(1, 2).reshape(b, self.dim, pn, pn)
            f_hat = f_hat + self.upsampled(si, h.float())
        return f_hat

    def split(self, ids: torch.Tensor) -> List[torch.Tensor]:
        """Concatenated ids ``[B, L]`` -> per-scale ``[B, pn*pn]``."""
        return [ids[:, a:e] for a, e in self.scale_slices]

    def teacher_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """VAR's teacher-forcing input (``idxBl_to_var_input``): ids ``[B, L]`` -> the
        area-downsampled partial f_hat of every scale but the first, ``[B, L - pn0^2, C]``."""
        scales = self.split(ids)
        b = ids.shape[0]
        size = self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(b, self.dim, size, size, dtype=torch.float32)
        out = []
        for si in range(self.num_scales - 1):
            pn = self.patch_nums[si]
            h = self.embedding(scales[si]).transpose(1, 2).reshape(b, self.dim, pn, pn).float()
            f_hat = f_hat + self.upsampled(si, h)
            nxt = self.patch_nums[si + 1]
            out.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2))
        return torch.cat(out, dim=1) if out else f_hat.new_zeros(b, 0, self.dim)

    def next_input(self, si: int, f_hat: torch.Tensor, h: torch.Tensor):
        """One sampling step (``get_next_autoregressive_input``): add scale ``si``'s code map
        ``h [B, C, pn, pn]`` to ``f_hat``; return ``(f_hat, next scale's input [B, pn'^2, C])``
        (the input is None after the last scale)."""
        f_hat = f_hat + self.upsampled(si, h)
        if si == self.num_scales - 1:
            return f_hat, None
        nxt = self.patch_nums[si + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2)

    def forward(self, f: torch.Tensor):
        """Training pass (``VectorQuantizer2.forward``): ``(f_hat with straight-through
        gradients, vq_loss, ids per scale)``; the vq loss averages, over scales, beta * the
        commitment term and the codebook / phi term on the running f_hat."""
        f32 = f.float()
        f_no_grad = f32.detach()
        loss = f32.new_zeros(())
        ids_all = []
        f_hat = None
        for si, ids, f_hat in self._residual_pass(f32):
            ids_all.append(ids)
            loss = loss + F.mse_loss(f_hat.detach(), f32).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
            if self.training:
                self.record(si, ids)
        loss = loss / self.num_scales
        return (f_hat.detach() - f_no_grad) + f32, loss, ids_all

    @torch.no_grad()
    def record(self, si: int, ids: torch.Tensor) -> None:
        """EMA of the code hits of scale ``si`` (as released: copy, then 0.9, then 0.99)."""
        hit = ids.flatten().bincount(minlength=self.vocab_size).float()
        row = self.ema_vocab_hit_SV[si]
        if self.record_hit == 0:
            row.copy_(hit)
        elif self.record_hit < 100:
            row.mul_(0.9).add_(hit.mul(0.1))
        else:
            row.mul_(0.99).add_(hit.mul(0.01))
        self.record_hit += 1  # counted per scale, as released

    def usage(self, batch_positions: int) -> List[float]:
        """Percent of codes per scale whose EMA hit count reaches the released margin
        (``positions / V * 0.08``, positions = B * H * W of a training batch)."""
        margin = batch_positions / self.vocab_size * 0.08
        return [(row >= margin).float().mean().item() * 100 for row in self.ema_vocab_hit_SV]
