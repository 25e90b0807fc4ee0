"""MAR's per-token diffusion head (DiffLoss) and its Gaussian diffusion: a shared part (MAR uses
all of it; the continuous-token AR's SwiGLU flow head, ``models/cont_ar.py``, shares ``modulate``,
``FinalLayer`` and ``init_adaln_head``).

Paper: "Autoregressive Image Generation without Vector Quantization" (Li et al., NeurIPS 2024,
arXiv 2406.11838). Official code: https://github.com/LTH14/mar ``models/diffloss.py`` and
``diffusion/`` (ADM/DiT's ``gaussian_diffusion.py`` and ``respace.py``).

- :class:`SimpleMLPAdaLN`: ``input_proj`` (C -> w), ``time_embed`` (DiT's, shared with vargen) +
  ``cond_embed`` (z -> w), ``depth`` AdaLN ResBlocks (LN, Linear-SiLU-Linear MLP, gate) and DiT's
  final layer to ``2 C`` outputs: epsilon and the learned-range variance interpolation ``v``.
- :class:`GaussianDiffusion`: the cosine schedule (Nichol & Dhariwal, ``max_beta`` 0.999) over
  ``num_train_steps``, optionally respaced to ``num_steps`` evenly strided steps (ADM's
  ``space_timesteps`` with one section; the kept steps' betas are recomputed from
  ``alphas_cumprod`` and the network sees the original step index). Tables in float64 as the
  official numpy ones, gathered as float32 (the official ``_extract_into_tensor``).

A diffusers ``DDPMScheduler`` was not used: it has no learned-range variance ("learned_range"
interpolates between ``beta_t`` and the *unclipped* posterior variance and respaces with
``set_timesteps``' own spacing), so it does not reproduce these steps; the formulas here are
checked against values recorded from the official code (tests/test_mar.py).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from vargen.nn import TimestepEmbedder


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def init_adaln_head(head: nn.Module) -> None:
    """The release's ``SimpleMLPAdaLN.initialize_weights`` (also Ming-UniVision's SwiGLU variant,
    ``models/cont_ar.py``): xavier linears with zero bias, N(0, 0.02) time MLP, zero adaLN
    modulations and output layer. ``head`` has ``time_embed``, ``res_blocks``, ``final_layer``."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for layer in (head.time_embed.mlp[0], head.time_embed.mlp[2]):
        nn.init.normal_(layer.weight, std=0.02)
    for block in (*head.res_blocks, head.final_layer):
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)
    nn.init.zeros_(head.final_layer.linear.weight)


class ResBlock(nn.Module):
    """``x + gate * mlp(modulate(LN(x), shift, scale))``; (shift, scale, gate) from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """DiT's final layer: weightless LN, adaLN (shift, scale), Linear to the output channels."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """The denoiser: ``x [M, C]`` at integer steps ``t [M]`` under conditions ``c [M, z]`` ->
    ``[M, 2C]`` (epsilon, then the variance interpolation in [-1, 1])."""

    def __init__(self, channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.channels = channels
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = FinalLayer(width, 2 * channels)
        init_adaln_head(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(t) + self.cond_embed(c)                   # [M, width]
        h = self.input_proj(x)
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)                                 # [M, 2C]


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (ADM ``betas_for_alpha_bar``), float64."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                         for i in range(num_steps)], dtype=torch.float64)


def space_timesteps(num_train_steps: int, num_steps: int) -> List[int]:
    """ADM's ``space_timesteps(T, str(n))``: ``n`` steps strided evenly over ``[0, T)``, rounded."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"cannot take {num_steps} sampling steps of {num_train_steps}")
    stride = 1 if num_steps <= 1 else (num_train_steps - 1) / (num_steps - 1)
    return sorted({round(i * stride) for i in range(num_steps)})


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """ADM's decoder NLL term (a 255-bin grid over [-1, 1]), as MAR's vb loss at step 0 uses it."""
    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    inv = torch.exp(-log_scales)
    cdf_plus, cdf_min = cdf(inv * (x - means + 1 / 255)), cdf(inv * (x - means - 1 / 255))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    mid = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_one_minus, mid))


class GaussianDiffusion:
    """Epsilon prediction with learned-range variance over (respaced) cosine steps."""

    def __init__(self, num_train_steps: int = 1000, num_steps: Optional[int] = None):
        base = torch.cumprod(1 - cosine_betas(num_train_steps), 0)
        self.timestep_map = space_timesteps(num_train_steps, num_steps or num_train_steps)
        ac = base[self.timestep_map]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        betas = 1 - ac / prev
        self.num_steps = len(self.timestep_map)
        post_var = betas * (1 - prev) / (1 - ac)
        clipped = torch.cat([post_var[1:2], post_var[1:]]) if self.num_steps > 1 else post_var
        self.tables: Dict[str, torch.Tensor] = dict(
            sqrt_ac=ac.sqrt(), sqrt_1m_ac=(1 - ac).sqrt(), sqrt_recip_ac=(1 / ac).sqrt(),
            sqrt_recipm1_ac=(1 / ac - 1).sqrt(), post_logvar=clipped.log(), log_betas=betas.log(),
            coef1=betas * prev.sqrt() / (1 - ac), coef2=(1 - prev) * (1 - betas).sqrt() / (1 - ac),
            sqrt_prev=prev.sqrt(), sqrt_1m_prev=(1 - prev).sqrt())

    def _get(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        table = self.tables[name]
        if table.device != t.device:
            self.tables = {k: v.to(t.device) for k, v in self.tables.items()}
            table = self.tables[name]
        return table[t].float().to(like.dtype)[:, None]

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Respaced indices ``t`` -> the original step the network was trained on."""
        return torch.tensor(self.timestep_map, device=t.device)[t]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._get("sqrt_ac", t, x0) * x0 + self._get("sqrt_1m_ac", t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        mean = self._get("coef1", t, x_t) * x0 + self._get("coef2", t, x_t) * x_t
        return mean, self._get("post_logvar", t, x_t)

    def p_mean_variance(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip: float = 0.0):
        """Network output ``out [M, 2C]`` at ``x [M, C]``, step ``t [M]`` -> (mean, log variance,
        predicted x0) of p(x_{t-1} | x_t) (ADM ``p_mean_variance``, LEARNED_RANGE). ``clip > 0``
        clamps the predicted x0 to ``[-clip, clip]`` (ADM's ``clip_denoised`` at bound 1; MAR
        passes ``clip_denoised=False``, the default 0 here)."""
        eps, v = out.split(x.shape[1], dim=1)
        frac = (v + 1) / 2
        log_var = frac * self._get("log_betas", t, x) + (1 - frac) * self._get("post_logvar", t, x)
        x0 = self._get("sqrt_recip_ac", t, x) * x - self._get("sqrt_recipm1_ac", t, x) * eps
        if clip > 0:
            x0 = x0.clamp(-clip, clip)
        mean, _ = self.q_posterior(x0, x, t)
        return mean, log_var, x0

    def p_sample(self, out: torch.Tensor, x: torch.Tensor, t: int, noise: Optional[torch.Tensor],
                 clip: float = 0.0) -> torch.Tensor:
        """One ancestral step from respaced step ``t``; ``noise`` already scaled by temperature
        (unused at ``t = 0``, which adds none)."""
        steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        mean, log_var, _ = self.p_mean_variance(out, x, steps, clip)
        return mean if t == 0 else mean + torch.exp(0.5 * log_var) * noise

    def ddim_step(self, out: torch.Tensor, x: torch.Tensor, t: int, clip: float = 0.0) -> torch.Tensor:
        """DDIM (eta 0) from respaced step ``t`` on the same epsilon: deterministic, so fewer
        steps hold up better than ancestral ones (not in the release; an option of the sampler)."""
        steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        _, _, x0 = self.p_mean_variance(out, x, steps, clip)
        eps = (self._get("sqrt_recip_ac", steps, x) * x - x0) / self._get("sqrt_recipm1_ac", steps, x)
        return x0 * self._get("sqrt_prev", steps, x) + self._get("sqrt_1m_prev", steps, x) * eps

    def training_losses(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                        **kwargs) -> Dict[str, torch.Tensor]:
        """Per-row ``mse`` (epsilon) + ``vb`` (the variance's bound, mean frozen) = ``loss``."""
        x_t = self.q_sample(x0, t, noise)
        out = net(x_t, self.model_timesteps(t), **kwargs)
        eps, v = out.split(x0.shape[1], dim=1)
        mean, log_var, _ = self.p_mean_variance(torch.cat([eps.detach(), v], 1), x_t, t)
        true_mean, true_logvar = self.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, true_logvar, mean, log_var).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean(1) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        mse = ((noise - eps) ** 2).mean(1)
        return {"mse": mse, "vb": vb, "loss": mse + vb}
