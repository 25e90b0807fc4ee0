"""Flow-matching samplers for continuous next-X generators (xAR): Euler–Maruyama SDE (the
official default), Euler ODE and Heun ODE, with classifier-free guidance per AR step.

Paper: "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation" (arXiv
2502.20388); official sampler: https://github.com/OliverRensu/xAR ``models/sampler.py``.

The path is linear, ``x_t = (1 - t) x + t eps`` with velocity ``v = eps - x``; sampling runs t
from 1 (noise) to 0 for every entity in turn. For this path the score is
``s(x, t) = -(x + (1 - t) v) / t`` and the SDE (diffusion ``g^2 = 2t``) has drift
``v - t s``. Grids (``num_steps`` velocity evaluations per entity for ``sde``/``euler``,
``2 num_steps - 1`` for ``heun``):

- ``sde``: ``linspace(1, t_min, num_steps)`` then 0; Euler–Maruyama steps with noise
  ``sqrt(2t |dt|) eps``, the last step (t_min -> 0) deterministic (official default, t_min 0.04).
- ``euler`` / ``heun``: ``linspace(1, 0, num_steps + 1)`` (Heun skips the correction on the
  last step).

CFG: ``uncond + scale (cond - uncond)`` on the velocity. The drift is affine in v with the same
x in both halves, so this equals the official guidance on the drift. ``cfg_schedule="linear"``
is the official ramp over AR steps, ``1 + (cfg - 1) e / (E - 1)`` for entity e of E;
``"constant"`` uses ``cfg`` everywhere. Where an entity's scale is 1 its batch is not doubled
(the official code doubles it anyway); once later entities need the doubled batch, the clean
contexts are committed for both halves.
"""
from __future__ import annotations

from typing import Callable, List

import torch

from vargen import checks
from vargen.seeding import SampleRNG

from .base import Sampler
from .capabilities import EntityFlow
from .guidance import Guidance, cfg_labels

METHODS = ("sde", "euler", "heun")
Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def flow_timesteps(method: str, num_steps: int, t_min: float = 0.04) -> torch.Tensor:
    """The float64 time grid from 1 to 0 that ``method`` walks."""
    if method == "sde":
        return torch.cat([torch.linspace(1.0, t_min, num_steps, dtype=torch.float64),
                          torch.zeros(1, dtype=torch.float64)])
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)


def sde_drift(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """``v - 0.5 g^2 score`` with ``g^2 = 2t`` and the linear-path score from the velocity."""
    score = -(x + (1.0 - t) * v) / t
    return v - t * score


def integrate(method: str, velocity: Velocity, x: torch.Tensor, ts: torch.Tensor,
              noise: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Walk ``x`` (at ``ts[0]`` = 1) down the grid ``ts`` with ``velocity(x, t)``.

    ``noise()`` returns a standard normal like ``x`` (drawn per sample by the caller).
    """
    times = ts.tolist()
    if method == "euler":
        for t, t_next in zip(times[:-1], times[1:]):
            x = x + (t_next - t) * velocity(x, t)
        return x
    if method == "heun":
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            d = velocity(x, t)
            x_euler = x + (t_next - t) * d
            if i == len(times) - 2:
                return x_euler
            x = x + (t_next - t) * 0.5 * (d + velocity(x_euler, t_next))
        return x
    for t, t_next in zip(times[:-2], times[1:-1]):
        dt = t_next - t
        x = x + sde_drift(velocity(x, t), x, t) * dt + (2.0 * t * abs(dt)) ** 0.5 * noise()
    t, t_next = times[-2], times[-1]
    return x + sde_drift(velocity(x, t), x, t) * (t_next - t)  # last step: no noise


class FlowSampler(Sampler):
    """Entity-by-entity flow sampling for models with ``partition`` and ``velocity`` hooks.

    Returns latents ``[B, C, h, w]``. ``stats``: ``forward_passes`` (velocity evaluations, a
    CFG-doubled batch counting once), ``tokens_per_image`` (token rows run through the network
    per image, CFG doubling and clean contexts included).
    """

    name = "flow"
    capability = EntityFlow

    def __init__(self, num_steps: int = 40, method: str = "sde", cfg_scale: float = 1.0,
                 cfg_schedule: str = "linear", t_min: float = 0.04):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        num_steps = checks.number(f"num_steps ({method})", num_steps, minimum=2 if method == "sde" else 1,
                                  integer=True)
        t_min = checks.number("t_min", t_min, above=0, below=1)
        self.num_steps, self.method, self.t_min = num_steps, method, t_min
        self.guidance = Guidance(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule)

    def sample(self, model: EntityFlow, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        device = labels.device
        part = model.partition
        n_ent, b, channels = part.num_entities, labels.shape[0], model.latent_channels
        scales = [self.guidance.guidance(e, n_ent) if self.guidance.uses_cfg else 1.0
                  for e in range(n_ent)]
        # The cache rows are fixed once the first context is committed: double them if any
        # later entity is guided.
        doubled_context = any(s != 1.0 for s in scales[1:])
        both = cfg_labels(labels, model.null_class) if self.guidance.uses_cfg else labels
        ts = flow_timesteps(self.method, self.num_steps, self.t_min)
        calls, rows_tokens = 0, 0
        entities: List[torch.Tensor] = []
        for e in range(n_ent):
            size, scale = part.sizes[e], scales[e]
            doubled = scale != 1.0 or (e > 0 and doubled_context)
            if e == 1:
                model.setup_cache(2 * b if doubled_context else b)
            pending = None
            if e > 0:
                pending = entities[-1].repeat(2, 1, 1) if doubled else entities[-1]

            def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
                nonlocal pending, calls, rows_tokens
                x_in = x.repeat(2, 1, 1) if doubled else x
                context, pending = pending, None  # committed with the first evaluation only
                # t as a tensor: a compiled velocity (vargen.speed) then traces it as an input
                # instead of recompiling for every time step
                v = model.velocity(x_in.float(), torch.tensor(t, dtype=torch.float32, device=device),
                                   both if doubled else labels, e,
                                   context=None if context is None else context.float())
                calls += 1
                fed = x_in.shape[1] + (0 if context is None else context.shape[1])
                rows_tokens += x_in.shape[0] * fed
                # float64 guidance on the velocity (= the official guidance on the drift)
                return self.guidance.mix(v.double(), scale) if doubled else v.double()

            x0 = rng.randn(size, channels).to(device, torch.float64)
            entities.append(integrate(self.method, velocity, x0, ts,
                                      lambda: rng.randn(size, channels).to(device, torch.float64)))
        self.stats = {"forward_passes": calls, "tokens_per_image": rows_tokens / b,
                      "cfg_scales": scales}
        return part.to_grid(torch.cat(entities, dim=1).float())
