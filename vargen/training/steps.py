"""One optimiser step's data and gradients, and the throughput the log reports.

``--accum k`` splits each rank's part of the global batch into ``k`` equal micro-batches and
scales each loss by ``1/k``, so the summed gradient equals the gradient of the whole batch: the
global batch (and so the run's results) does not change with ``k``, only the activation memory.
Under DDP the first ``k-1`` backward passes skip the all-reduce (``no_sync``); under FSDP every
micro-batch reduce-scatters into the sharded gradient (keeping unsharded gradients between
micro-batches would undo the sharding).
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

# Dense bf16 peak of known accelerators (TFLOP/s, no sparsity), for model FLOPs utilisation.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def local_positions(batches, step: int, rank: int, world_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(indices, epochs)`` of this rank's slice of global batch ``step``."""
    idx = batches.local_batch(step, rank, world_size)
    per_rank = len(idx)
    pos = step * batches.batch_size + rank * per_rank + torch.arange(per_rank)
    return idx, pos // batches.num_items


def fetch_batch(data: Dict[str, Any], batches, step: int, rank: int, world_size: int,
                device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """This rank's inputs and labels for ``step``: indexed tensors, or a streaming cache read per
    batch (which also draws each sample's per-epoch augmentation)."""
    idx, epochs = local_positions(batches, step, rank, world_size)
    inputs, labels = data["inputs"], data["labels"]
    if hasattr(inputs, "batch"):  # vargen.data.shards.ShardedTokens
        x, y = inputs.batch(idx, epochs)
    else:
        x, y = inputs[idx], labels[idx]
    return x.to(device), y.to(device)


def forward_backward(objective: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, accum: int,
                     autocast, step: int) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Forward and backward over ``accum`` micro-batches; returns the mean loss and logs."""
    if accum < 1 or len(inputs) % accum:
        raise ValueError(f"--accum {accum} does not split the per-process batch of {len(inputs)} evenly")
    no_sync = getattr(objective, "no_sync", None)  # DDP only
    total, sums = torch.zeros(()), {}
    for i, (x, y) in enumerate(zip(inputs.chunk(accum), labels.chunk(accum))):
        sync = no_sync() if no_sync is not None and i < accum - 1 else contextlib.nullcontext()
        with sync:
            with autocast:
                loss, logs = objective(x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr or "
                                         f"use --precision fp32")
            (loss / accum).backward()
        total += loss.detach().float().cpu() / accum
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / accum
    return total, sums


def tokens_per_sample(inputs: torch.Tensor) -> int:
    """Token positions of one sample: every id of a discrete grid; a continuous ``[C, ...]``
    latent counts its positions, not its channels."""
    one = inputs[0]
    return one.numel() if not torch.is_floating_point(one) else one[0].numel()


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def live_rss_mib() -> Optional[float]:
    """This process's resident memory now, after glibc returns freed heap pages (``malloc_trim``):
    what it holds, not what it once touched (Linux only; ``None`` elsewhere)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, AttributeError, ValueError):
        return None


def device_peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


class Meter:
    """Throughput since the last read: images/s and tokens/s of the global batch, peak memory
    (and on CPU the live resident memory) and parameter + gradient + optimiser state of the
    largest rank, and model FLOPs utilisation
    (6 x parameters x tokens per step, the usual dense transformer estimate without attention)
    against ``peak_tflops`` per device."""

    def __init__(self, num_params: int, batch_size: int, world_size: int, device: torch.device,
                 peak_tflops: Optional[float]):
        self.num_params, self.batch_size, self.world_size, self.device = num_params, batch_size, world_size, device
        self.peak = peak_tflops if peak_tflops else device_peak_tflops(device)
        self.start, self.steps, self.tokens = time.time(), 0, 0

    def add(self, inputs: torch.Tensor) -> None:
        self.steps += 1
        self.tokens += tokens_per_sample(inputs) * self.batch_size

    def read(self, state_mib: float) -> Dict[str, float]:
        elapsed = max(time.time() - self.start, 1e-9)
        live = live_rss_mib() if self.device.type == "cpu" else None
        memory = torch.tensor([peak_memory_mib(self.device), state_mib, live or 0.0], dtype=torch.float64)
        if self.world_size > 1:  # the largest rank's
            import torch.distributed as dist
            dist.all_reduce(memory, op=dist.ReduceOp.MAX)
        out = {"images_per_s": round(self.steps * self.batch_size / elapsed, 3),
               "tokens_per_s": round(self.tokens / elapsed, 1),
               "peak_mem_mib": round(float(memory[0]), 1),
               "state_mib": round(float(memory[1]), 3)}
        if live is not None:
            out["live_rss_mib"] = round(float(memory[2]), 1)
        if self.peak:
            flops = 6.0 * self.num_params * self.tokens / elapsed
            out["mfu"] = round(flops / (self.peak * 1e12 * self.world_size), 5)
        self.start, self.steps, self.tokens = time.time(), 0, 0
        return out
