"""Optimiser recipes of the official training scripts, attached to registry entries.

A :class:`Recipe` fills the optimiser options a ``vargen train`` run leaves unset. Each family
passes its recipe to ``register_model(..., recipe=...)``; an entry without one trains with
:data:`DEFAULT`. Ground floor: plain data, imports nothing (the registry, every family and ``vargen list`` read it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Recipe:
    """AdamW settings; ``blr`` (base lr) scales as ``blr * batch / 256`` when ``lr`` is None."""

    lr: Optional[float] = None
    blr: Optional[float] = None
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0          # 0 disables clipping
    ema_decay: float = 0.9999       # 0 disables EMA
    schedule: str = "constant"      # "constant" or "cosine"
    min_lr_ratio: float = 0.0       # cosine floor as a fraction of lr
    source: str = ""

    def __post_init__(self):
        if (self.lr is None) == (self.blr is None):
            raise ValueError("a Recipe sets exactly one of lr or blr")

    def learning_rate(self, batch_size: int) -> float:
        return self.lr if self.lr is not None else self.blr * batch_size / 256


# LlamaGen autoregressive/train/train_c2i.py (NAR-images trains with the same script).
LLAMAGEN = Recipe(lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0, ema_decay=0.9999,
                  source="LlamaGen autoregressive/train/train_c2i.py")
NAR = LLAMAGEN
# NAR-videos scripts/train_larp_ar.sh + cfgs/larp_ar.yaml: lr 6e-4, wd 0.05, betas (0.9, 0.95),
# cosine to 0.01 lr, no gradient clipping, no EMA (its 4-epoch warmup is --warmup-steps here).
LARP_AR = Recipe(lr=6e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=0.0, ema_decay=0.0,
                 schedule="cosine", min_lr_ratio=0.01,
                 source="NAR-videos scripts/train_larp_ar.sh, cfgs/larp_ar.yaml")
# xAR main_xar.py: AdamW betas (0.9, 0.96), wd 0.02, lr = blr * batch / 256, EMA 0.9999.
XAR = Recipe(blr=5e-5, weight_decay=0.02, betas=(0.9, 0.96), grad_clip=1.0, ema_decay=0.9999,
             source="xAR main_xar.py")
# RAR configs/training/generator/rar.yaml: AdamW lr 4e-4, betas (0.9, 0.96), wd 0.03, clip 1.0,
# cosine to end_lr 1e-5 after a 25% warmup (--warmup-steps here), no EMA (use_ema: False).
RAR = Recipe(lr=4e-4, weight_decay=0.03, betas=(0.9, 0.96), grad_clip=1.0, ema_decay=0.0,
             schedule="cosine", min_lr_ratio=0.025, source="1d-tokenizer configs/training/generator/rar.yaml")
# MAR main_mar.py + README: AdamW betas (0.9, 0.95), wd 0.02, lr = blr * batch / 256 (blr 1e-4),
# constant after warmup, grad clip 3.0, EMA 0.9999.
MAR = Recipe(blr=1e-4, weight_decay=0.02, betas=(0.9, 0.95), grad_clip=3.0, ema_decay=0.9999,
             source="MAR main_mar.py (README training command)")
# VAR train.py + utils/arg_util.py + README commands: AdamW betas (0.9, 0.95), wd 0.05, grad clip 2,
# lr = tblr * batch / 256 with tblr 1e-4 (d16, d20) or 8e-5 (d24+), no EMA. Upstream decays the lr
# linearly ('lin0') to wpe = 0.1 (d16, d20) / 0.01 of it; cosine to the same floor here.
VAR = Recipe(blr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=2.0, ema_decay=0.0,
             schedule="cosine", min_lr_ratio=0.1, source="VAR train.py, utils/arg_util.py, README")
VAR_LARGE = Recipe(blr=8e-5, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=2.0, ema_decay=0.0,
                   schedule="cosine", min_lr_ratio=0.01, source="VAR train.py, utils/arg_util.py, README")
TOKENIZER = Recipe(lr=1e-4, weight_decay=0.0, betas=(0.9, 0.95), grad_clip=1.0, ema_decay=0.999,
                   source="vargen tokenizer default")
CLASSIFIER = Recipe(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), grad_clip=1.0, ema_decay=0.999,
                    source="vargen digit classifier")
DEFAULT = Recipe(lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0, ema_decay=0.9999,
                 source="vargen default (LlamaGen's)")
