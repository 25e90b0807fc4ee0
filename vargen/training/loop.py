"""The training loop: one ``training_loss(inputs, labels) -> (loss, logs)`` call per step.

Determinism and resumption. Step ``s`` trains on positions ``[s*B, (s+1)*B)`` of a stream of
per-epoch permutations seeded by ``(seed, epoch)``; under ``torchrun`` rank ``r`` of ``W`` takes
the ``r``-th contiguous slice of that same global batch, and DDP's gradient mean over equal
slices equals the single-process gradient. Checkpoints are written atomically every
``ckpt_every`` steps and at the end, and the LR is a pure function of the step, so rerunning a
killed command continues and reaches the same weights as an uninterrupted run. On CPU
``torch.use_deterministic_algorithms(True, warn_only=True)`` is on by default (an op without a
deterministic kernel warns by name); on CUDA it is off by default for speed. Randomness inside a
model's loss (class dropout, noise) uses the global RNG, seeded per rank, so DDP matches
single-process training exactly only when the loss has no random draws.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from vargen import checks
from vargen.hub import atomic_write

from .card import device_name, model_card
from .checkpoint import CHECKPOINT_NAME, LOG_NAME, resume, save_checkpoint, truncate_log
from .config import TrainConfig
from .data import GlobalBatchSampler, check_data, load_data
from . import sharded_ckpt, sharding
from .steps import Meter, fetch_batch, forward_backward
from .heldout import heldout_metrics


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then constant or cosine to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.min_lr or 0.0  # None before resolved()
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema = d * ema + (1 - d) * model`` with d warmed up as (1 + step) / (10 + step), so short
    runs are not dominated by the initial weights (timm ModelEmaV3's warmup)."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class Objective(nn.Module):
    """``model.training_loss`` as a forward, so DDP sees the call that produces the gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, Any]]:
        return self.model.training_loss(inputs, labels)


def adamw(model: nn.Module, cfg: TrainConfig) -> Tuple[torch.optim.Optimizer, list]:
    """AdamW without weight decay on norms and biases (LlamaGen's configure_optimizers, xAR)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas), params


class _Logger:
    """Running means of the step logs, reduced over ranks every ``log_every`` steps."""

    def __init__(self, path: Optional[Path], world_size: int, last_loss: Optional[float]):
        self.file = open(path, "a") if path is not None else None
        self.world_size, self.sums, self.count, self.last_loss = world_size, {}, 0, last_loss

    def add(self, logs: Dict[str, Any]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        self.count += 1

    def flush(self, step: int, lr: float, wall_s: float, speed: Optional[Dict[str, float]] = None) -> float:
        keys = sorted(self.sums)
        means = torch.tensor([self.sums[k] / self.count for k in keys], dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(means)
            means /= self.world_size
        record = dict(zip(keys, means.tolist()))
        self.last_loss, self.sums, self.count = record["loss"], {}, 0
        if self.file is not None:
            timing = {"wall_s": round(wall_s, 3), **({"speed": speed} if speed else {})}
            self.file.write(json.dumps({"step": step, "lr": lr, **record, **timing}) + "\n")
            self.file.flush()
        return self.last_loss

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _device(cfg: TrainConfig, world_size: int) -> torch.device:
    device = checks.device(cfg.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def train(cfg: TrainConfig, on_step: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Train (or resume) ``cfg.model``; returns ``{"final", "steps", "wall_s", "loss", metrics}``.

    Unset optimiser options come from the registry entry's recipe. ``on_step(step)`` runs after
    each completed (and, when due, checkpointed) step on every rank.
    """
    from vargen.registry import get_entry

    entry = get_entry(cfg.model)
    cfg = cfg.resolved(entry.recipe)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(cfg, world_size)
    own_group = world_size > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    deterministic = device.type == "cpu" if cfg.deterministic is None else cfg.deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    out = Path(cfg.out)
    logger = None
    try:
        data = load_data(cfg, entry.trains_on, device, rank, world_size)
        batches = GlobalBatchSampler(len(data["labels"]), cfg.batch_size, cfg.seed)
        batches.local_batch(0, rank, world_size)  # fails early on an uneven split

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = _build(cfg).to(device).train()
        check_data(model, data, cfg.data)
        ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        num_params = sum(p.numel() for p in model.parameters())
        objective = sharding.wrap(Objective(model), model, cfg.strategy, world_size, device, cfg.precision,
                                  cfg.grad_checkpointing)
        sharded = sharding.is_sharded(model)
        if sharded and ema is not None:
            sharding.shard(ema, ema, device, cfg.precision)
        optimizer, params = adamw(model, cfg)  # after sharding: FSDP replaces the parameters
        ckpt_path = out / CHECKPOINT_NAME
        if cfg.strategy == "fsdp":
            step, wall_before = sharded_ckpt.resume(out, cfg, model, ema, optimizer, device, rank, world_size)
        else:
            sharded_ckpt.refuse(out)  # a sharded checkpoint resumes only under --strategy fsdp
            step, wall_before = resume(ckpt_path, cfg, model, ema, optimizer, device, rank, world_size)
        last_loss = truncate_log(out / LOG_NAME, step) if rank == 0 else None
        meter = Meter(num_params, cfg.batch_size, world_size, device, cfg.peak_tflops)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if device.type == "cuda" and cfg.precision == "bf16" else contextlib.nullcontext())
        out.mkdir(parents=True, exist_ok=True)
        logger = _Logger(out / LOG_NAME if rank == 0 else None, world_size, last_loss)
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0 or not cfg.progress,
                   desc=cfg.model, dynamic_ncols=True)
        start = time.time()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        while step < cfg.steps:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, labels = fetch_batch(data, batches, step, rank, world_size, device)
            with _out_of_memory_names(cfg, step):
                loss, logs = forward_backward(objective, inputs, labels, cfg.accum, autocast, step)
            grad_norm = sharding.clip_grad_norm(params, clip, sharded)
            state_mib = sharding.state_bytes(model, optimizer) / 2**20  # before zero_grad frees grads
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                update_ema(ema, model, cfg.ema_decay, step)
            step += 1
            logger.add({"loss": loss, "grad_norm": grad_norm, **logs})
            meter.add(inputs)
            if step % cfg.log_every == 0 or step == cfg.steps:
                speed = meter.read(state_mib)
                final_loss = logger.flush(step, lr, wall_before + time.time() - start, speed)
                bar.set_postfix(loss=f"{final_loss:.4f}", img_s=speed["images_per_s"],
                                mem=f"{speed['peak_mem_mib']:.0f}M")
            bar.update(1)
            if (step % cfg.ckpt_every == 0 or step == cfg.steps) and cfg.strategy == "fsdp":
                sharded_ckpt.save(out, cfg, model, ema, optimizer, step, wall_before + time.time() - start,
                                  device, rank, world_size)
            elif step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_checkpoint(ckpt_path, cfg, model, ema, optimizer, step,
                                wall_before + time.time() - start, device, rank, world_size)
                if cfg.keep_every and step % cfg.keep_every == 0 and rank == 0:
                    shutil.copyfile(ckpt_path, out / f"ckpt-{step}.pt")
            if on_step is not None:
                on_step(step)
        bar.close()
        logger.close()
        wall_s = wall_before + time.time() - start
        result = {"final": str(out / "final"), "steps": step, "wall_s": wall_s, "loss": logger.last_loss}
        export = ema if ema is not None else model.eval()
        if sharded:  # gather the shards into a plain model on rank 0
            full = sharded_ckpt.full_weights(export, world_size)
            export = _build(cfg).eval() if rank == 0 else None
            if export is not None:
                export.load_state_dict(full)
        if rank == 0:
            result.update(_export(export, cfg, entry.kind, len(data["labels"]), wall_s,
                                  device_name(device, world_size), logger.last_loss, out / "final"))
        if world_size > 1:
            dist.barrier()
        return result
    finally:
        if logger is not None:
            logger.close()
        torch.use_deterministic_algorithms(previous_deterministic)
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def _out_of_memory_names(cfg: TrainConfig, step: int):
    """An allocation failure in a step as one clear error naming the batch size."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError, or the CPU allocator's "can't allocate memory"
        if not (isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)):
            raise
        raise MemoryError(f"--batch-size {cfg.batch_size} does not fit in memory at step {step} "
                          f"({str(e).splitlines()[0][:120]}); use a smaller --batch-size") from None


def _build(cfg: TrainConfig) -> nn.Module:
    """``create_model`` with an error naming the overrides when they make no network (a zero
    width builds empty tensors that fail only inside the first step)."""
    from vargen.registry import create_model
    try:
        model = create_model(cfg.model, **cfg.overrides)
    except (RuntimeError, ArithmeticError, AssertionError, TypeError, ValueError, IndexError) as e:
        if not cfg.overrides:
            raise
        raise ValueError(f"--override {cfg.overrides}: cannot build {cfg.model}: {e}") from None
    empty = [name for name, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise ValueError(f"{cfg.model} with overrides {cfg.overrides} has empty weights ({empty[:3]}): a "
                         f"size in the config is 0 or negative")
    return model


def _export(model: nn.Module, cfg: TrainConfig, kind: str, num_items: int, wall_s: float,
            device: str, final_loss: Optional[float], final: Path) -> Dict[str, Any]:
    """Write ``final/`` (weights + model card); returns the model's held-out metrics."""
    metrics = heldout_metrics(model, cfg.data)
    card = model_card(cfg, kind, num_items, wall_s, device, final_loss, metrics)
    atomic_write(final / "README.md", lambda p: Path(p).write_text(card))
    model.save_pretrained(final)
    return metrics
