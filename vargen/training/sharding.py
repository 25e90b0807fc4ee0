"""Data-parallel strategies on ``torch.distributed``: DDP replicas or FSDP2 shards.

``--strategy ddp`` (the default) keeps a full replica per rank and averages gradients.
``--strategy fsdp`` shards every parameter, gradient and optimiser state over the ranks with
FSDP2 (``torch.distributed.fsdp.fully_shard``): once per block, then at the root, as LlamaGen's
``train_c2i_fsdp.py`` (FULL_SHARD over each ``TransformerBlock``) and Infinity (zero-3) do for
their 1B-8B models. The blocks are found without knowing the family: a model may list them in
``fsdp_units()``; otherwise they are the children of each outermost ``nn.ModuleList`` (the
transformer stacks of every vargen family). The root is the :class:`Objective` around the
model, so the one ``training_loss`` call gathers the root's own weights (embeddings, heads).

Mixed precision (``--precision bf16`` on CUDA): FSDP's ``MixedPrecisionPolicy`` with bf16
parameters and compute and fp32 gradient reduction, the anchors' setting; the sharded master
weights and the optimiser stay fp32. ``--grad-checkpointing`` recomputes each block's activations
in the backward pass (``torch.distributed._composable.checkpoint``, applied before sharding so the
recomputation sees the gathered weights), for both strategies.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List

import torch
import torch.distributed as dist
import torch.nn as nn

STRATEGIES = ("ddp", "fsdp")


def units(model: nn.Module) -> List[nn.Module]:
    """The blocks to shard and checkpoint one by one: ``model.fsdp_units()`` if the model defines
    it, else the children of every outermost ``nn.ModuleList``."""
    hook = getattr(model, "fsdp_units", None)
    if callable(hook):
        return list(hook())
    found: List[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                found.extend(child)  # not its inside: a block's own lists stay in its unit
            else:
                visit(child)
    visit(model)
    return found


def checkpoint_blocks(model: nn.Module) -> int:
    """Activation checkpointing on every unit; returns how many."""
    from torch.distributed._composable import checkpoint
    blocks = units(model)
    for block in blocks:
        checkpoint(block)
    return len(blocks)


def fsdp_kwargs(device: torch.device, precision: str) -> Dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw: Dict[str, Any] = {"mesh": mesh}
    if device.type == "cuda" and precision == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return kw


def shard(root: nn.Module, model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """``fully_shard`` each unit of ``model``, then ``root`` (which holds ``model``)."""
    from torch.distributed.fsdp import fully_shard
    kw = fsdp_kwargs(device, precision)
    for block in units(model):
        fully_shard(block, **kw)
    fully_shard(root, **kw)
    return root


def wrap(objective: nn.Module, model: nn.Module, strategy: str, world_size: int,
         device: torch.device, precision: str, grad_checkpointing: bool) -> nn.Module:
    """``objective`` (holding ``model``) ready for the strategy: checkpointed blocks, then DDP or
    FSDP2 over the ranks (nothing on a single process)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if grad_checkpointing and checkpoint_blocks(model) == 0:
        raise ValueError(f"--grad-checkpointing: {type(model).__name__} has no blocks (no nn.ModuleList "
                         f"and no fsdp_units())")
    if world_size == 1:
        return objective
    if strategy == "fsdp":
        return shard(objective, model, device, precision)
    return nn.parallel.DistributedDataParallel(
        objective, device_ids=[device.index] if device.type == "cuda" else None)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float, sharded: bool) -> torch.Tensor:
    """The global gradient norm, clipped to ``max_norm``. Replicated gradients (single process,
    DDP) use ``nn.utils.clip_grad_norm_``; sharded ones sum the squares of every rank's shard
    before the square root, so each rank clips by the norm of the whole gradient."""
    params = [p for p in params if p.grad is not None]
    if not sharded:
        return nn.utils.clip_grad_norm_(params, max_norm)
    grads = [_local(p.grad) for p in params]
    total = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else "cpu")
    for g in grads:
        total += g.detach().double().pow(2).sum()
    dist.all_reduce(total)
    norm = total.sqrt().float()
    if math.isfinite(max_norm):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype))
    return norm


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds of parameters, gradients and optimiser state (local shards only)."""
    total = 0
    for p in model.parameters():
        total += _local(p).numel() * p.element_size()
        if p.grad is not None:
            total += _local(p.grad).numel() * p.grad.element_size()
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += _local(v).numel() * v.element_size()
    return total
