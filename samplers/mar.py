"""MAR's masked random-order sampler with a per-token diffusion head.

Paper: "Autoregressive Image Generation without Vector Quantization" (arXiv 2406.11838).
Official loop: https://github.com/LTH14/mar ``models/mar.py`` (``MAR.sample_tokens``) and
``models/diffloss.py`` (``DiffLoss.sample``, ``SimpleMLPAdaLN.forward_with_cfg``).

Each sample draws a random order of its N tokens; iteration k of ``num_iter`` runs the whole
encoder-decoder once (``conditions``) and reveals the tokens that leave the masked prefix of the
order, which shrinks to ``floor(N cos(pi/2 (k+1)/num_iter))`` (at least one token per iteration,
all remaining ones at the last). Every revealed token is sampled by ancestral DDPM over the
model's respaced schedule (``num_steps`` of its training steps) starting from unit noise; the
per-step noise is scaled by ``temperature``. The head runs once per step for all revealed tokens
of all samples together.

CFG (the release's ``forward_with_cfg``): the transformer runs on ``[cond; uncond]`` (the null
class is ``fake_latent``), the head on both halves of the same x, ``eps = eps_u + s (eps_c -
eps_u)`` with the conditional half's learned variance. ``cfg_schedule="linear"`` ramps ``s`` as
``1 + (cfg - 1) (N - mask_len) / N`` with ``mask_len`` the tokens still masked after the
iteration ("follow Muse"); "constant" keeps ``cfg``.

Beyond the release (defaults off): ``clip_denoised=b`` clamps each step's predicted x0 to
``[-b, b]`` (ADM's ``clip_denoised`` at b = 1; MAR passes False), which keeps a small, briefly
trained head from diverging at the first step; ``solver="ddim"`` replaces the ancestral steps by
deterministic DDIM steps on the same epsilon (no per-step noise, so ``temperature`` is unused),
which holds up at fewer ``num_steps``, the cost that dominates MAR at small batch (MAR #60).

Randomness: sample i's order and every noise draw come from its own generator (``SampleRNG``), so
an image does not change with the batch; the release draws from the global RNG (and draws noise
for the unconditional half too, then discards it), so images match it in distribution only.
"""
from __future__ import annotations

import math
from typing import Any, Protocol, Tuple, runtime_checkable

import torch

from vargen import checks
from vargen.seeding import SampleRNG

from .base import Sampler
from .capabilities import Conditional, forward_pass
from .guidance import Guidance


@runtime_checkable
class MaskedDiffusionDecoding(Conditional, Protocol):
    """A bidirectional masked generator whose per-position outputs condition a diffusion head."""

    token_grid: Tuple[int, ...]
    latent_channels: int
    seq_len: int
    token_dim: int

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def diffusion(self, num_steps: int) -> Any:
        """The respaced schedule: ``timestep_map`` and ``p_sample(out, x, t, noise)``."""

    @forward_pass
    def conditions(self, tokens: torch.Tensor, known: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, N, D]`` of which ``known [B, N]`` are given -> conditions ``[B, N, Z]``."""

    @forward_pass
    def head_output(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Denoiser output ``[M, 2D]`` (epsilon, variance) for ``x [M, D]`` at steps ``t [M]``."""


def mask_schedule(n: int, num_iter: int) -> list:
    """``(mask_len, masked_after)`` per iteration: the release's ``mask_len`` (cosine rule, at
    least 1, at most the masked count - 1; it sets the linear CFG scale) and the tokens still
    masked afterwards (``mask_len``, or 0 after the last iteration, which reveals them all)."""
    masked, out = n, []
    for step in range(num_iter):
        mask_len = math.floor(n * math.cos(math.pi / 2 * (step + 1) / num_iter))
        mask_len = max(1, min(masked - 1, mask_len))
        masked = 0 if step == num_iter - 1 else mask_len
        out.append((mask_len, masked))
    return out


SOLVERS = ("ddpm", "ddim")


class MARSampler(Sampler):
    """Returns latents ``[B, C, h, w]``. ``stats``: ``forward_passes`` (transformer calls, a
    CFG-doubled batch counting once), ``head_evaluations`` (head calls), ``cfg_scales``."""

    name = "mar"
    capability = MaskedDiffusionDecoding
    target_options = ("cfg_scale", "cfg_schedule", "temperature", "clip_denoised")

    def __init__(self, num_iter: int = 64, num_steps: int = 100, cfg_scale: float = 1.0,
                 cfg_schedule: str = "linear", temperature: float = 1.0, clip_denoised: float = 0.0,
                 solver: str = "ddpm"):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.solver = solver
        self.clip_denoised = checks.number("clip_denoised", clip_denoised, minimum=0)
        self.num_iter = checks.number("num_iter", num_iter, minimum=1, integer=True)
        self.num_steps = checks.number("num_steps", num_steps, minimum=1, integer=True)
        self.temperature = checks.number("temperature", temperature, minimum=0)
        self.guidance = Guidance(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule)

    def scale(self, mask_len: int, n: int) -> float:
        if not self.guidance.uses_cfg:
            return 1.0
        if self.guidance.cfg_schedule == "linear":  # 1 + (cfg - 1) (N - mask_len) / N
            return self.guidance.guidance(n - mask_len, n + 1)
        return self.guidance.cfg_scale

    def denoise(self, model, schedule, z: torch.Tensor, noise: torch.Tensor, scale: float) -> torch.Tensor:
        """Ancestral sampling of ``M`` tokens: ``z [M', Z]`` (``[cond; uncond]`` under CFG),
        ``noise [S, M, D]`` (the start, then one draw per step with noise) -> ``[M, D]``."""
        x, d = noise[0], noise.shape[-1]
        for j, i in enumerate(reversed(range(schedule.num_steps))):
            t = torch.full((z.shape[0],), schedule.timestep_map[i], dtype=torch.long, device=z.device)
            out = model.head_output(self.guidance.double(x), t, z)
            if self.guidance.uses_cfg:  # guided epsilon, the conditional half's variance
                out = torch.cat([Guidance.mix(out[:, :d], scale), out[: x.shape[0], d:]], dim=1)
            if self.solver == "ddim":
                x = schedule.ddim_step(out, x, i, self.clip_denoised)
                continue
            step_noise = noise[j + 1] * self.temperature if i > 0 else None
            x = schedule.p_sample(out, x, i, step_noise, self.clip_denoised)
        return x

    def sample(self, model, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        b, n, d, dev = labels.shape[0], model.seq_len, model.token_dim, labels.device
        cond = self.guidance.labels(labels, model.null_class)
        schedule = model.diffusion(self.num_steps)
        order = rng.rand(n).argsort(dim=1).to(dev)                             # [B, N] per sample
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=dev).expand(b, n))
        tokens = torch.zeros(b, n, d, device=dev)
        masked, scales, passes = n, [], 0
        for mask_len, masked_after in mask_schedule(n, self.num_iter):
            known = rank >= masked                                             # the order's suffix
            reveal = (rank < masked) & (rank >= masked_after)                  # [B, N], k per row
            k = int(reveal[0].sum())
            masked = masked_after
            if k == 0:
                continue
            z = model.conditions(self.guidance.double(tokens), self.guidance.double(known), cond)
            passes += 1
            z = torch.cat([part[reveal] for part in z.chunk(2 if self.guidance.uses_cfg else 1)])
            noise = rng.randn(schedule.num_steps, k, d).to(dev)               # [B, S, k, D]
            noise = noise.permute(1, 0, 2, 3).reshape(schedule.num_steps, b * k, d)
            scales.append(self.scale(mask_len, n))
            x = self.denoise(model, schedule, z, noise, scales[-1])            # [B k, D], row-major
            tokens[reveal] = x.to(tokens.dtype)
        self.stats = {"forward_passes": passes, "head_evaluations": passes * schedule.num_steps,
                      "cfg_scales": scales}
        return model.unpatchify(tokens)
