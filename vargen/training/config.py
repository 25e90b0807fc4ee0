"""``TrainConfig``: one run's settings; unset optimiser options come from the entry's recipe."""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from vargen import checks

from vargen.recipes import Recipe

# Fields that must not change when a run resumes from its checkpoint.
# "steps" too under a cosine schedule (it sets the schedule); a constant-lr run may be extended.
RESUME_KEYS = ("model", "overrides", "data", "split", "image_size", "tokenizer", "captions", "text_encoder",
               "batch_size", "seed",
               "lr", "min_lr", "schedule", "warmup_steps", "weight_decay", "betas", "grad_clip",
               "ema_decay", "precision")
_FROM_RECIPE = ("weight_decay", "betas", "grad_clip", "ema_decay", "schedule")
MAX_BATCH_SIZE = 65536  # global batch; papers train with at most 2048


@dataclass
class TrainConfig:
    model: str
    out: str
    data: str = "mnist"              # dataset name, image folder, or a token .safetensors file
    split: str = "train"
    image_size: int = 32
    tokenizer: Optional[str] = None  # registered name (with weights) or save_pretrained folder
    captions: Optional[str] = None   # text-to-image: labels -> captions (vargen.data.captions)
    text_encoder: Optional[str] = None  # text-to-image: encoder of the captions (vargen.text)
    overrides: Dict[str, Any] = field(default_factory=dict)  # model config fields
    steps: int = 1000
    batch_size: int = 64             # global batch, split evenly over DDP ranks
    lr: Optional[float] = None       # None: the entry's recipe
    weight_decay: Optional[float] = None
    betas: Optional[Tuple[float, float]] = None
    grad_clip: Optional[float] = None   # 0 disables clipping
    ema_decay: Optional[float] = None   # 0 disables EMA (the raw weights are exported)
    warmup_steps: int = 0
    schedule: Optional[str] = None   # "constant" or "cosine" (to min_lr after warmup)
    min_lr: Optional[float] = None   # None: the recipe's min_lr_ratio * lr
    seed: int = 0
    ckpt_every: int = 500
    keep_every: int = 0              # also keep the checkpoint as ckpt-STEP.pt every this many steps; 0: off
    log_every: int = 10
    precision: str = "bf16"          # autocast dtype on CUDA ("fp32" disables); CPU is fp32
    device: Optional[str] = None
    deterministic: Optional[bool] = None  # None: on for CPU, off for CUDA
    cache_dir: Optional[str] = None
    progress: bool = True
    strategy: str = "ddp"            # "ddp" (replicas) or "fsdp" (FSDP2 shards, sharded checkpoints)
    accum: int = 1                   # micro-batches per rank and step (same global batch, less memory)
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass
    peak_tflops: Optional[float] = None  # per device, for MFU in the log (CUDA: known devices)

    def resolved(self, recipe: Recipe) -> "TrainConfig":
        """Fill unset optimiser fields from ``recipe``; check the rest."""
        for name, minimum in (("steps", 0), ("batch_size", 1), ("ckpt_every", 1), ("keep_every", 0), ("log_every", 1),
                              ("warmup_steps", 0), ("seed", 0), ("image_size", 1), ("accum", 1)):
            checks.number(name, getattr(self, name), minimum=minimum, integer=True)
        for name in ("lr", "weight_decay", "grad_clip", "min_lr"):
            checks.number(name, getattr(self, name), minimum=0, optional=True)
        checks.number("peak_tflops", self.peak_tflops, minimum=0, optional=True)
        if self.keep_every % self.ckpt_every:  # a kept step must be a checkpointed one
            raise ValueError(f"keep_every ({self.keep_every}) must be a multiple of ckpt_every ({self.ckpt_every})")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        filled = {name: getattr(recipe, name) if getattr(self, name) is None else getattr(self, name)
                  for name in _FROM_RECIPE}
        if filled["schedule"] not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {filled['schedule']!r}")
        filled["betas"] = tuple(checks.number("betas", b, minimum=0, below=1) for b in filled["betas"])
        checks.number("ema_decay", filled["ema_decay"], minimum=0, below=1)
        checks.image_size("image_size", self.image_size)
        if self.batch_size > MAX_BATCH_SIZE:
            raise ValueError(f"batch_size {self.batch_size} is above {MAX_BATCH_SIZE} (one step would not fit "
                             f"in memory); use a smaller --batch-size")
        lr = recipe.learning_rate(self.batch_size) if self.lr is None else self.lr
        min_lr = recipe.min_lr_ratio * lr if self.min_lr is None else self.min_lr
        if min_lr > lr:
            raise ValueError(f"min_lr {min_lr:g} is above lr {lr:g}: the schedule decays from --lr down to "
                             f"--min-lr; pass --min-lr <= --lr")
        return dataclasses.replace(self, lr=lr, min_lr=min_lr, **filled)


def command_line(cfg: TrainConfig) -> str:
    """The ``vargen train`` command that reproduces a resolved ``cfg``."""
    parts = ["vargen train", f"--model {cfg.model}", f"--data {cfg.data}"]
    defaults = TrainConfig(model="", out="")
    parts += [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in ("split", "image_size")
              if getattr(cfg, name) != getattr(defaults, name)]
    parts += [f"--override {shlex.quote(f'{k}={v!r}'.replace(' ', ''))}" for k, v in cfg.overrides.items()]
    if cfg.tokenizer:
        parts.append(f"--tokenizer {cfg.tokenizer}")
    if cfg.captions:
        parts.append(f"--captions {cfg.captions} --text-encoder {cfg.text_encoder}")
    parts += [f"--steps {cfg.steps}", f"--batch-size {cfg.batch_size}", f"--lr {cfg.lr:g}",
              f"--weight-decay {cfg.weight_decay:g}", f"--betas {cfg.betas[0]:g} {cfg.betas[1]:g}",
              f"--grad-clip {cfg.grad_clip:g}", f"--ema-decay {cfg.ema_decay:g}",
              f"--seed {cfg.seed}", f"--out {cfg.out}"]
    parts += [f"--strategy {cfg.strategy}"] * (cfg.strategy != "ddp") + [f"--accum {cfg.accum}"] * (cfg.accum > 1)
    parts += ["--grad-checkpointing"] * cfg.grad_checkpointing
    if cfg.warmup_steps or cfg.schedule != "constant":
        parts += [f"--warmup-steps {cfg.warmup_steps}", f"--schedule {cfg.schedule}",
                  f"--min-lr {cfg.min_lr:g}"]
    return " ".join(parts)
