"""Run checkpoints: written atomically, checked against the run that resumes from them.

``OUT/checkpoint.pt`` holds model, EMA, optimizer, step, wall time, every rank's RNG states and
the train and model configs; it is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from vargen.hub import WeightsError, atomic_write
from vargen.loaders import torch_load
from vargen.seeding import sample_seed

from .config import RESUME_KEYS, TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
_CHECKPOINT_KEYS = ("model", "ema", "optimizer", "step", "wall_s", "rng", "train_config", "model_config")


class CheckpointError(WeightsError):
    """A run's ``checkpoint.pt`` that cannot be resumed from: truncated, corrupt or unsafe."""


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` of a run checkpoint, every failure a :class:`CheckpointError`
    that names the file and the fix."""
    fix = "delete it to start the run over, or pass a new --out"
    try:
        ckpt = torch_load(path)
    except pickle.UnpicklingError as e:  # weights_only refused a global: the pickle would run code
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"cannot resume from {path}: it holds a pickled object other than "
                              f"tensors{what}, refused by torch.load(weights_only=True); it is not a "
                              f"vargen checkpoint: {fix}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot resume from {path}: not a readable checkpoint (truncated or "
                              f"corrupt: {reason}); {fix}") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: not a vargen train checkpoint (missing "
                              f"{missing}); {fix}")
    return ckpt


def rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # betas: a list from the CLI or JSON


def save_checkpoint(path: Path, cfg: TrainConfig, model: nn.Module, ema: Optional[nn.Module],
                    optimizer: torch.optim.Optimizer, step: int, wall_s: float, device: torch.device,
                    rank: int, world_size: int) -> None:
    """Gather every rank's RNG state; rank 0 writes the checkpoint atomically."""
    rng: List[Any] = [rng_state(device)]
    if world_size > 1:
        rng = [None] * world_size
        dist.all_gather_object(rng, rng_state(device))
    if rank == 0:
        state = {"model": model.state_dict(), "ema": ema.state_dict() if ema else None,
                 "optimizer": optimizer.state_dict(), "step": step, "wall_s": wall_s,
                 "rng": [{k: v.cpu() for k, v in r.items()} for r in rng],
                 "train_config": dataclasses.asdict(cfg),
                 "model_config": dataclasses.asdict(model.config)}
        atomic_write(path, lambda p: torch.save(state, p))


def check_same_run(path: Path, ckpt: Dict[str, Any], cfg: TrainConfig, model: nn.Module) -> None:
    """Refuse a checkpoint (its ``train_config``, ``model_config`` and ``step``) of another run."""
    saved, now = ckpt["train_config"], dataclasses.asdict(cfg)
    keys = RESUME_KEYS + (("steps",) if cfg.schedule == "cosine" else ())
    changed = [k for k in keys if _as_tuple(saved.get(k)) != _as_tuple(now[k])]
    if ckpt["step"] > cfg.steps:
        changed.append(f"steps: the checkpoint is at step {ckpt['step']} > --steps {cfg.steps}")
    if changed or ckpt["model_config"] != dataclasses.asdict(model.config):
        raise ValueError(f"{path} was written by a different run (changed: "
                         f"{changed or 'model config'}); rerun with the same settings "
                         f"to resume, or pick a new --out")


def resume(path: Path, cfg: TrainConfig, model: nn.Module, ema: Optional[nn.Module],
           optimizer: torch.optim.Optimizer, device: torch.device, rank: int,
           world_size: int) -> tuple:
    """Restore a run from ``path`` if it exists (``(step, wall_s)``; ``(0, 0.0)`` otherwise) and
    seed the RNG the loop draws from."""
    if not path.exists():
        torch.manual_seed(sample_seed(cfg.seed, rank))
        return 0, 0.0
    ckpt = load_checkpoint(path)
    check_same_run(path, ckpt, cfg, model)
    model.load_state_dict(ckpt["model"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    step = ckpt["step"]
    if rank == 0:
        print(f"vargen train: resumed from step {step} ({path})", file=sys.stderr, flush=True)
    if len(ckpt["rng"]) == world_size:
        set_rng_state(ckpt["rng"][rank], device)
    else:  # a different process count cannot replay the old random streams
        torch.manual_seed(sample_seed(cfg.seed, 1_000_000 * step + rank))
    return step, ckpt["wall_s"]


def truncate_log(path: Path, step: int) -> Optional[float]:
    """Drop log lines past ``step`` (written after the checkpoint a resumed run restarts from) and
    a line cut short by a kill; returns the last kept loss."""
    if not path.exists():
        return None
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["step"] <= step:
            keep.append(record)
    atomic_write(path, lambda p: Path(p).write_text("".join(json.dumps(r) + "\n" for r in keep)))
    return keep[-1]["loss"] if keep else None
