"""The model card (``OUT/final/README.md``) a run exports with its weights."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .config import TrainConfig, command_line


def device_name(device: torch.device, world_size: int) -> str:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} thread(s)")
    return f"{world_size} x {name}" if world_size > 1 else name


def model_card(cfg: TrainConfig, kind: str, num_items: int, wall_s: float, device: str,
               final_loss: Optional[float], metrics: Dict[str, Any]) -> str:
    epochs = cfg.steps * cfg.batch_size / num_items
    lines = ["---", "library_name: vargen", f"tags: [vargen, {kind}]", "---",
             f"# {cfg.model} trained with vargen", "",
             f"- Data: `{cfg.data}` split `{cfg.split}` ({num_items} items, {cfg.image_size} px)"
             + (f", tokens from `{cfg.tokenizer}`" if cfg.tokenizer else ""),
             f"- Steps: {cfg.steps} at global batch {cfg.batch_size} ({epochs:.1f} epochs), seed {cfg.seed}",
             f"- Optimiser: AdamW lr {cfg.lr:g} ({cfg.schedule}, warmup {cfg.warmup_steps}), "
             f"betas {cfg.betas}, weight decay {cfg.weight_decay:g}, grad clip {cfg.grad_clip:g}",
             "- Exported weights: " + (f"EMA (decay {cfg.ema_decay:g})" if cfg.ema_decay else "raw"),
             f"- Model config overrides: {cfg.overrides or 'none'}",
             f"- Wall time: {wall_s:.1f} s on {device}"]
    if final_loss is not None:
        lines.append(f"- Final training loss: {final_loss:.4f}")
    lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()]
    lines += ["", "Reproduce:", "", "```", command_line(cfg), "```", ""]
    return "\n".join(lines)
