"""Per-token flow sampling for continuous raster generators (Ming-UniVision's ``generate_image``).

Paper: "Ming-UniVision" (arXiv 2510.06590); official loop: github.com/inclusionAI/Ming-UniVision
``mingunivision/modeling_bailing_moe.py`` (``generate_image``) and ``diff_loss_rf_swiglu.py``
(``RectifiedFlowLoss.sample``).

One trunk forward per token (1 prefill + N - 1 decodes with the KV cache, N passes for N
tokens), and for each token an Euler ODE over the flow head from t = 1 (noise scaled by
``temperature``) to t = 0 on ``linspace(1, 0, num_steps + 1)``, ``x += v dt`` with the head's
velocity pointing toward data. ``time_shift`` s warps the grid to ``s t / (1 + (s - 1) t)``
(Ming's ``time_shifting_factor``; 1 = none). The loop is diffusers'
``FlowMatchEulerDiscreteScheduler`` with ``sigmas = linspace(1, 0, N + 1)[:-1]``, ``shift = s``
and ``model_output = -v``, which reproduces the official loop exactly (tests/test_cont_ar.py).

CFG: the trunk runs on ``[cond; uncond]`` (null class) for the whole image and the head's
velocity is guided as ``v_u + scale (v_c - v_u)``; both halves share the token's noise and the
sampled latent is fed back to both, as the official loop. ``cfg_schedule`` "constant" or
"linear" (``1 + (cfg - 1) i / (N - 1)`` for token i, MAR's ramp). Unlike the release, whose
``generate_image`` drops its own CFG arguments (they vanish into ``**kwargs`` and the head always
uses 3.0 / 1.1), the scale given here is the one applied. Ming's 3-way text/image CFG and its
"linear" ramp that *decreases* over tokens belong to text prompts and are not reproduced.
"""
from __future__ import annotations

from typing import Protocol, Tuple, runtime_checkable

import torch

from vargen import checks
from vargen.seeding import SampleRNG

from .base import Sampler
from .capabilities import Cached, Conditional, forward_pass
from .guidance import Guidance


@runtime_checkable
class TokenFlowDecoding(Conditional, Cached, Protocol):
    """A raster trunk over continuous latents whose hidden state conditions a per-token flow head."""

    token_grid: Tuple[int, ...]
    latent_channels: int

    @forward_pass
    def prefill_hidden(self, labels: torch.Tensor) -> torch.Tensor:
        """Feed the condition; the first token's head condition ``[B, D]``."""

    @forward_pass
    def decode_hidden(self, latents: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append latents ``[B, T, C]`` at raster ``positions``; head conditions ``[B, T, D]``."""

    @forward_pass
    def head_velocity(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The flow head's velocity toward data: ``x [M, C]``, ``t [M]``, ``z [M, D]`` -> ``[M, C]``."""


def euler_scheduler(num_steps: int, time_shift: float = 1.0):
    """diffusers' flow-matching Euler scheduler set to Ming's grid (``num_steps`` head calls).

    Built once per image batch (construction costs ~45 ms, 256 tokens would pay it 256 times);
    :func:`restart` rewinds it for the next token.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler  # lazy: only this sampler needs it

    return restart(FlowMatchEulerDiscreteScheduler(shift=time_shift), num_steps)


def restart(scheduler, num_steps: int):
    """Set ``scheduler`` to Ming's grid from t = 1, step index 0 (diffusers' public reset)."""
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, num_steps + 1)[:-1].tolist())
    return scheduler


class TokenFlowSampler(Sampler):
    """Raster decoding with a per-token flow head; returns latents ``[B, C, h, w]``.

    ``stats``: ``forward_passes`` (trunk calls, a CFG-doubled batch counting once),
    ``head_evaluations`` (flow-head calls per image), ``cfg_scales`` (per token).
    """

    name = "token-flow"
    capability = TokenFlowDecoding

    def __init__(self, num_steps: int = 16, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
                 temperature: float = 1.0, time_shift: float = 1.0):
        super().__init__()
        self.num_steps = checks.number("num_steps", num_steps, minimum=1, integer=True)
        self.temperature = checks.number("temperature", temperature, minimum=0)
        self.time_shift = checks.number("time_shift", time_shift, above=0)
        self.guidance = Guidance(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule)

    def sample_token(self, model, z: torch.Tensor, noise: torch.Tensor, scale: float,
                     scheduler) -> torch.Tensor:
        """One token: ``z [B', D]`` conditions (``[cond; uncond]`` under CFG), ``noise [B, C]``
        at t = 1 -> latent ``[B, C]``."""
        restart(scheduler, self.num_steps)
        x = noise
        for timestep, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1]):
            x_in = self.guidance.double(x)
            v = model.head_velocity(x_in, sigma.to(x).expand(x_in.shape[0]), z).float()
            if self.guidance.uses_cfg:
                v = Guidance.mix(v, scale)
            x = scheduler.step(-v, timestep, x).prev_sample
        return x

    def sample(self, model, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        h, w = model.token_grid
        n, b, channels = h * w, labels.shape[0], model.latent_channels
        cond = self.guidance.labels(labels, model.null_class)
        scales = [self.guidance.guidance(i, n) if self.guidance.uses_cfg else 1.0 for i in range(n)]
        tokens = torch.empty(b, n, channels, device=labels.device)
        model.setup_cache(cond.shape[0])
        z = model.prefill_hidden(cond)                                          # [B', D]
        scheduler = euler_scheduler(self.num_steps, self.time_shift)
        for i in range(n):
            noise = rng.randn(channels).to(labels.device) * self.temperature    # [B, C]
            tokens[:, i] = self.sample_token(model, z, noise, scales[i], scheduler)
            if i + 1 < n:
                step = self.guidance.double(tokens[:, i:i + 1])
                z = model.decode_hidden(step, torch.tensor([i], device=labels.device))[:, -1]
        self.stats = {"forward_passes": n, "head_evaluations": n * self.num_steps, "cfg_scales": scales}
        return tokens.transpose(1, 2).reshape(b, channels, h, w)
