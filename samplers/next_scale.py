"""Next-scale sampling (VAR's ``autoregressive_infer_cfg``): one forward pass per scale.

Scale ``si`` of ``SN`` runs the generator once over a KV cache on the inputs of that scale (the
class for the first; the area-downsampled partial f_hat for the others), samples all its
``pn x pn`` ids at once, adds their codes to f_hat and builds the next scale's inputs.

Guidance grows linearly with the scale, as released: ``t = cfg * si / (SN - 1)`` and logits
``(1 + t) * cond - t * uncond``. vargen's shared :class:`~vargen.samplers.guidance.Guidance`
with ``cfg_schedule="linear"`` gives exactly that weight ``1 + (cfg_scale - 1) * si / (SN - 1)``
when ``cfg_scale = 1 + cfg``: **VAR's ``cfg`` 1.5 is ``cfg_scale`` 2.5 here** (the pipelines'
default, :data:`PRESETS`). Then top-k / top-p (:class:`~vargen.samplers.logits.LogitsFilter`)
and one draw per id from the sample's own generator (same image alone or in a batch).

``more_smooth`` (visualisation only upstream, never for FID): codes are a Gumbel-softmax mixture
``softmax((logits * (1 + r) + g) / tau) @ codebook`` with ``tau = max(0.27 (1 - 0.95 r), 0.005)``,
r = si / (SN - 1); the sampler then returns f_hat ``[B, Cvae, h, w]`` (floats, which the
tokenizer's ``decode`` takes) instead of ids.
"""
from __future__ import annotations

from typing import Optional, Protocol, Tuple, runtime_checkable

import torch

from vargen.seeding import SampleRNG, sample_from_probs

from .base import DiscreteSampler
from .capabilities import Cached, Conditional, forward_pass

# Named option sets, with their sources (docs/var.md):
PRESETS = {
    # VAR README "FID" runs (cfg=1.5, top_p=0.96, top_k=900, more_smooth=False); the paper's
    # appendix says cfg 2.0 (issue #86): cfg_scale 3.0 here.
    "fid": dict(cfg_scale=2.5, cfg_schedule="linear", top_k=900, top_p=0.96, more_smooth=False),
    # demo_sample.ipynb: cfg=4, top_k=900, top_p=0.95, more_smooth=False.
    "demo": dict(cfg_scale=5.0, cfg_schedule="linear", top_k=900, top_p=0.95, more_smooth=False),
}


@runtime_checkable
class NextScaleDecoding(Conditional, Cached, Protocol):
    patch_nums: Tuple[int, ...]
    vocab_size: int

    @forward_pass
    def scale_logits(self, x: Optional[torch.Tensor], labels: torch.Tensor, si: int) -> torch.Tensor:
        """Logits ``[B, pn^2, V]`` of scale ``si`` from its inputs (None for the first)."""

    def empty_fhat(self, batch: int) -> torch.Tensor: ...

    def code_embedding(self) -> torch.Tensor: ...

    def next_scale_input(self, si: int, f_hat: torch.Tensor, codes: torch.Tensor): ...


class NextScaleSampler(DiscreteSampler):
    name = "next-scale"
    capability = NextScaleDecoding
    target_options = DiscreteSampler.target_options + ("more_smooth",)

    def __init__(self, cfg_scale: float = 2.5, cfg_schedule: str = "linear", more_smooth: bool = False,
                 **options):
        super().__init__(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, **options)
        if not isinstance(more_smooth, bool):
            raise TypeError(f"more_smooth must be True or False, got {more_smooth!r}")
        self.more_smooth = more_smooth

    def sample(self, model: NextScaleDecoding, labels: torch.Tensor, rng: SampleRNG) -> torch.Tensor:
        b, sn = labels.shape[0], len(model.patch_nums)
        cond = self.logits.labels(labels, model.null_class)  # [B'] (2B under CFG)
        model.setup_cache(cond.shape[0])
        f_hat = model.empty_fhat(b)
        codebook = model.code_embedding()  # [V, Cvae]
        x, ids_all = None, []
        for si, pn in enumerate(model.patch_nums):
            logits = model.scale_logits(x, cond, si)                     # [B', pn^2, V]
            logits = self.logits.filter(self.logits.combine(logits, si, sn))  # [B, pn^2, V] float32
            if self.more_smooth:  # on the filtered logits, as upstream (its top-k/p masks in place)
                r = si / max(sn - 1, 1)
                tau = max(0.27 * (1 - r * 0.95), 0.005)
                u = rng.rand(pn * pn, logits.shape[-1]).to(logits.device)
                gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
                codes = ((logits * (1 + r) + gumbel) / tau).softmax(-1) @ codebook
            else:
                probs = logits.softmax(-1)
                ids = sample_from_probs(probs, rng.rand(pn * pn).to(probs.device))   # [B, pn^2]
                ids_all.append(ids)
                codes = codebook[ids]                                    # [B, pn^2, Cvae]
            f_hat, x = model.next_scale_input(si, f_hat, codes)
            if x is not None:
                x = self.logits.double(x)
        self.stats = {"forward_passes": sn}
        return f_hat if self.more_smooth else torch.cat(ids_all, dim=1)
