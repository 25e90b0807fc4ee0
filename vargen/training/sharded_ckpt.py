"""Sharded run checkpoints (``--strategy fsdp``) with ``torch.distributed.checkpoint``.

``OUT/checkpoint-sharded/step-NNNNNNNN/`` holds one ``.distcp`` file per rank (each rank writes
its own shards of model, EMA and optimiser state, from ``get_state_dict``) and DCP's ``.metadata``;
rank 0 then writes ``meta.pt`` (step, wall time, every rank's RNG state, train and model configs)
and last the empty ``COMPLETE`` marker, after a barrier that every rank reaches only once its
shard is on disk. A folder without ``COMPLETE`` (a run killed while writing) is never read and is
removed by the next save; after a complete save the older steps are removed. Resuming reads the
newest complete folder with ``set_state_dict``; DCP reshards on load, so a checkpoint saved by 2
processes resumes on 1 (or 4) and reaches the same weights. The output folder must be on a
filesystem every node sees (as with LlamaGen's ``train_c2i_fsdp.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from vargen.hub import atomic_write
from vargen.loaders import checkpoint_reader, torch_load
from vargen.seeding import sample_seed

from .checkpoint import CHECKPOINT_NAME, CheckpointError, check_same_run, rng_state, set_rng_state
from .config import TrainConfig

SHARDED_NAME = "checkpoint-sharded"
MARKER = "COMPLETE"


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def complete_steps(out: Path) -> List[Path]:
    root = Path(out) / SHARDED_NAME
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / MARKER).is_file())


def _state(model: nn.Module, ema: Optional[nn.Module], optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    if ema is not None:
        state["ema"] = get_model_state_dict(ema)
    return state


def save(out: Path, cfg: TrainConfig, model: nn.Module, ema: Optional[nn.Module],
         optimizer: torch.optim.Optimizer, step: int, wall_s: float, device: torch.device,
         rank: int, world_size: int) -> Path:
    """Every rank writes its shards of step ``step``; rank 0 marks the folder complete."""
    import torch.distributed.checkpoint as dcp
    folder = Path(out) / SHARDED_NAME / f"step-{step:08d}"
    if rank == 0 and folder.exists():  # left by a killed save of the same step
        shutil.rmtree(folder)
    _barrier(world_size)
    rng: List[Any] = [rng_state(device)]
    if world_size > 1:
        rng = [None] * world_size
        dist.all_gather_object(rng, rng_state(device))
    with _single_process_quiet():
        dcp.save(_state(model, ema, optimizer), checkpoint_id=str(folder))
    _barrier(world_size)  # every shard is written
    if rank == 0:
        meta = {"step": step, "wall_s": wall_s, "world_size": world_size,
                "rng": [{k: v.cpu() for k, v in r.items()} for r in rng],
                "train_config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model.config)}
        atomic_write(folder / "meta.pt", lambda p: torch.save(meta, p))
        atomic_write(folder / MARKER, lambda p: Path(p).write_text(f"{step}\n"))
        for old in (Path(out) / SHARDED_NAME).glob("step-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    _barrier(world_size)
    return folder


def refuse(out: Path) -> None:
    """A DDP run must not start over beside a sharded checkpoint."""
    done = complete_steps(out)
    if done:
        raise CheckpointError(f"{done[-1]} was written by --strategy fsdp; resume it with --strategy fsdp, "
                              f"or pick a new --out")


def resume(out: Path, cfg: TrainConfig, model: nn.Module, ema: Optional[nn.Module],
           optimizer: torch.optim.Optimizer, device: torch.device, rank: int,
           world_size: int) -> Tuple[int, float]:
    """Restore the newest complete sharded checkpoint under ``out`` (``(step, wall_s)``, or
    ``(0, 0.0)`` when there is none) and seed the RNG the loop draws from."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict
    if (Path(out) / CHECKPOINT_NAME).exists():
        raise CheckpointError(f"{Path(out) / CHECKPOINT_NAME} was written by --strategy ddp; resume it with "
                              f"--strategy ddp, or pick a new --out")
    done = complete_steps(out)
    if not done:
        torch.manual_seed(sample_seed(cfg.seed, rank))
        return 0, 0.0
    folder = done[-1]
    try:
        meta = torch_load(folder / "meta.pt")
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise CheckpointError(f"cannot resume from {folder}: meta.pt is unreadable ({e}); delete the "
                              f"folder to resume from an older step or start over") from None
    check_same_run(folder, meta, cfg, model)
    state = _state(model, ema, optimizer)
    if ema is not None and "ema" not in _saved_keys(folder):
        state.pop("ema")
    with _single_process_quiet():
        dcp.load(state, storage_reader=checkpoint_reader(folder))  # .metadata read without pickle.load
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if ema is not None:
        set_model_state_dict(ema, state.get("ema", state["model"]))
    if rank == 0:
        print(f"vargen train: resumed from step {meta['step']} ({folder}, saved by {meta['world_size']} "
              f"process{'es' if meta['world_size'] > 1 else ''})", file=sys.stderr, flush=True)
    if len(meta["rng"]) == world_size:
        set_rng_state(meta["rng"][rank], device)
    else:  # a different process count cannot replay the old random streams
        torch.manual_seed(sample_seed(cfg.seed, 1_000_000 * meta["step"] + rank))
    return meta["step"], meta["wall_s"]


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it 'assumes the intent' of a single process when no group exists: it is."""
    with warnings.catch_warnings():
        if not dist.is_initialized():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _saved_keys(folder: Path) -> set:
    metadata = checkpoint_reader(folder).read_metadata()
    return {k.split(".", 1)[0] for k in metadata.state_dict_metadata}


def full_weights(module: nn.Module, world_size: int) -> Optional[Dict[str, torch.Tensor]]:
    """The whole (unsharded) state dict on rank 0's CPU (``None`` on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if world_size == 1:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return full if dist.get_rank() == 0 else None
