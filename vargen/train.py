"""Train any registered network: generators on cached tokens, tokenizers and classifiers on images.

The recipe follows the official training scripts: LlamaGen ``autoregressive/train/train_c2i.py``
(https://github.com/FoundationVision/LlamaGen) and NAR-images (same recipe): AdamW lr 1e-4,
wd 0.05, betas (0.9, 0.95), grad clip 1.0, bf16 autocast; xAR ``main_xar.py``
(https://github.com/OliverRensu/xAR): AdamW betas (0.9, 0.96), wd 0.02, lr = blr * batch / 256,
EMA 0.9999. ``RECIPES`` holds those per-family defaults; every one is a command-line option.

    vargen train --model llamagen-tiny --data mnist --tokenizer runs/vq/final \\
        --steps 2000 --batch-size 64 --out runs/llamagen-mnist
    torchrun --nproc_per_node 2 -m vargen.train --model ... (same options)

Generators train with ``model.loss(tokens, labels) -> scalar`` on tokens pre-extracted once by
:mod:`vargen.data.cache` (or a token ``.safetensors`` file given as ``--data``); tokenizers with
``model.loss(images) -> (loss, logs)``; classifiers with ``model.loss(images, labels)``. A model
may define ``heldout_metrics(data) -> dict``; its result goes into the exported model card.

Determinism and resumption. Step ``s`` trains on positions ``[s*B, (s+1)*B)`` of a stream of
per-epoch permutations seeded by ``(seed, epoch)``; under ``torchrun`` rank ``r`` of ``W`` takes
the ``r``-th contiguous slice of that same global batch, and DDP's gradient mean over equal
slices equals the single-process gradient. Checkpoints (``OUT/checkpoint.pt``, written
atomically every ``ckpt_every`` steps and at the end) hold model, EMA, optimizer, step, every
rank's RNG states and the configs, and the LR is a pure function of the step, so rerunning a
killed command continues and reaches the same weights as an uninterrupted run. On CPU
``torch.use_deterministic_algorithms(True, warn_only=True)`` is on by default (an op without a
deterministic kernel warns by name); on CUDA it is off by default for speed. Randomness inside a
model's loss (class dropout, noise) uses the global RNG, seeded per rank, so DDP matches
single-process training exactly only when the loss has no random draws.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import fnmatch
import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from vargen.cli import command
from vargen.hub import atomic_write
from vargen.seeding import sample_seed

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
# (name pattern or "kind:<kind>", defaults); the first match wins. ``blr`` scales with batch/256.
RECIPES: List[Tuple[str, Dict[str, Any]]] = [
    ("llamagen*", dict(lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0, ema_decay=0.9999)),
    ("nar*", dict(lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0, ema_decay=0.9999)),
    ("xar*", dict(blr=5e-5, weight_decay=0.02, betas=(0.9, 0.96), grad_clip=1.0, ema_decay=0.9999)),
    ("digit-classifier", dict(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), grad_clip=1.0, ema_decay=0.999)),
    ("kind:tokenizer", dict(lr=1e-4, weight_decay=0.0, betas=(0.9, 0.95), grad_clip=1.0, ema_decay=0.999)),
    ("*", dict(lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=1.0, ema_decay=0.9999)),
]
# Fields that must not change when a run resumes from its checkpoint.
# "steps" too under a cosine schedule (it sets the schedule); a constant-lr run may be extended.
RESUME_KEYS = ("model", "overrides", "data", "split", "image_size", "tokenizer", "batch_size", "seed",
               "lr", "min_lr", "schedule", "warmup_steps", "weight_decay", "betas", "grad_clip",
               "ema_decay", "precision")


@dataclass
class TrainConfig:
    model: str
    out: str
    data: str = "mnist"              # dataset name, image folder, or a token .safetensors file
    split: str = "train"
    image_size: int = 32
    tokenizer: Optional[str] = None  # registered name (with weights) or save_pretrained folder
    overrides: Dict[str, Any] = field(default_factory=dict)  # model config fields
    steps: int = 1000
    batch_size: int = 64             # global batch, split evenly over DDP ranks
    lr: Optional[float] = None       # None: the family recipe (RECIPES)
    weight_decay: Optional[float] = None
    betas: Optional[Tuple[float, float]] = None
    grad_clip: Optional[float] = None   # 0 disables clipping
    ema_decay: Optional[float] = None   # 0 disables EMA (the raw weights are exported)
    warmup_steps: int = 0
    schedule: str = "constant"       # "constant" or "cosine" (to min_lr after warmup)
    min_lr: float = 0.0
    seed: int = 0
    ckpt_every: int = 500
    log_every: int = 10
    precision: str = "bf16"          # autocast dtype on CUDA ("fp32" disables); CPU is fp32
    device: Optional[str] = None
    deterministic: Optional[bool] = None  # None: on for CPU, off for CUDA
    cache_dir: Optional[str] = None
    progress: bool = True

    def resolved(self, kind: str) -> "TrainConfig":
        """Fill unset optimiser fields from the first matching recipe; check the rest."""
        if self.steps < 0 or self.batch_size < 1 or self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError(f"need steps >= 0, batch_size, ckpt_every, log_every >= 1; got "
                             f"{self.steps}, {self.batch_size}, {self.ckpt_every}, {self.log_every}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        recipe = next(r for pattern, r in RECIPES if pattern == f"kind:{kind}"
                      or (not pattern.startswith("kind:") and fnmatch.fnmatch(self.model, pattern)))
        lr = recipe["lr"] if "lr" in recipe else recipe["blr"] * self.batch_size / 256
        filled = {name: recipe[name] if getattr(self, name) is None else getattr(self, name)
                  for name in ("weight_decay", "betas", "grad_clip", "ema_decay")}
        filled["betas"] = tuple(float(b) for b in filled["betas"])
        if not 0 <= filled["ema_decay"] < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {filled['ema_decay']}")
        return dataclasses.replace(self, lr=lr if self.lr is None else self.lr, **filled)


class GlobalBatchSampler:
    """Step ``s`` -> the dataset indices of global batch ``s``, a pure function of (seed, s).

    The index stream is the concatenation of per-epoch permutations, epoch ``e`` drawn from a
    generator seeded with ``(seed, e)``; a rank takes its contiguous slice of the global batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int):
        if num_items < 1:
            raise ValueError("the training set is empty")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.num_items, generator=g)
        return self._perm

    def global_batch(self, step: int) -> torch.Tensor:
        start, parts = step * self.batch_size, []
        for pos in range(start, start + self.batch_size):
            epoch, i = divmod(pos, self.num_items)
            parts.append(int(self.permutation(epoch)[i]))
        return torch.tensor(parts)

    def local_batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        if self.batch_size % world_size:
            raise ValueError(f"global batch {self.batch_size} does not split evenly over "
                             f"{world_size} processes")
        per_rank = self.batch_size // world_size
        return self.global_batch(step)[rank * per_rank:(rank + 1) * per_rank]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then constant or cosine to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema = d * ema + (1 - d) * model`` with d warmed up as (1 + step) / (10 + step), so short
    runs are not dominated by the initial weights (timm ModelEmaV3's warmup)."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class _Objective(nn.Module):
    """``model.loss`` as a forward, so DDP sees the call that produces the gradients."""

    def __init__(self, model: nn.Module, with_labels: bool):
        super().__init__()
        self.model, self.with_labels = model, with_labels

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor):
        return self.model.loss(inputs, labels) if self.with_labels else self.model.loss(inputs)


def load_tokenizer(spec: str, device: torch.device) -> nn.Module:
    """A tokenizer from a ``save_pretrained`` folder or a registered name with weights."""
    from vargen.registry import get_entry, list_models
    if os.path.isdir(spec):
        config = Path(spec) / "config.json"
        class_name = json.loads(config.read_text()).get("_class_name") if config.exists() else None
        classes = {get_entry(n).model_cls.__name__: get_entry(n).model_cls
                   for n in list_models(kind="tokenizer")}
        if class_name not in classes:
            raise ValueError(f"{spec} does not hold a registered tokenizer (config.json class "
                             f"{class_name!r}; known: {sorted(classes)})")
        model = classes[class_name].from_pretrained(spec)
    else:
        entry = get_entry(spec)
        if entry.kind != "tokenizer":
            raise ValueError(f"--tokenizer {spec!r} is a {entry.kind}, not a tokenizer")
        if entry.weights is None:
            raise ValueError(f"tokenizer {spec!r} has no registered weights: train it first "
                             f"(vargen train --model {spec} ...) and pass its OUT/final folder")
        from vargen.registry import create_model
        model = create_model(spec, pretrained=True)
    return model.to(device).eval()


def load_data(cfg: TrainConfig, kind: str, device: torch.device, rank: int,
              world_size: int) -> Dict[str, torch.Tensor]:
    """``{"inputs", "labels"}``: token grids for generators, images otherwise (all on CPU)."""
    from vargen.data import cache, get_dataset
    if str(cfg.data).endswith(".safetensors"):
        if kind != "generator":
            raise ValueError(f"{cfg.data} is a token file, but a {kind} trains on images: pass a "
                             f"dataset name (mnist) or an image folder")
        data = cache.load_token_file(cfg.data)
        return {"inputs": data["tokens"], "labels": data["labels"]}
    if kind != "generator":
        data = cache.dataset_tensors(get_dataset(cfg.data, cfg.split, cfg.image_size))
        return {"inputs": data["images"], "labels": data["labels"]}
    if cfg.tokenizer is None:
        raise ValueError(f"generator {cfg.model!r} trains on tokens: pass --tokenizer NAME_OR_FOLDER "
                         f"or --data TOKENS.safetensors (a vargen token file)")
    tokenizer = load_tokenizer(cfg.tokenizer, device)
    args = (tokenizer, cfg.data, cfg.split, cfg.image_size, cfg.cache_dir)
    if rank == 0:  # rank 0 extracts (or reads) the cache; the others wait, then read it
        data = cache.cached_tokens(*args, device=device)
    if world_size > 1:
        dist.barrier()
    if rank != 0:
        data = cache.cached_tokens(*args, device=device, create=False)
    return {"inputs": data["tokens"], "labels": data["labels"]}


def _rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _device_name(device: torch.device, world_size: int) -> str:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} thread(s)")
    return f"{world_size} x {name}" if world_size > 1 else name


def command_line(cfg: TrainConfig) -> str:
    """The ``vargen train`` command that reproduces ``cfg``."""
    parts = ["vargen train", f"--model {cfg.model}", f"--data {cfg.data}"]
    defaults = TrainConfig(model="", out="")
    parts += [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in ("split", "image_size")
              if getattr(cfg, name) != getattr(defaults, name)]
    parts += [f"--override {shlex.quote(f'{k}={v!r}'.replace(' ', ''))}" for k, v in cfg.overrides.items()]
    if cfg.tokenizer:
        parts.append(f"--tokenizer {cfg.tokenizer}")
    parts += [f"--steps {cfg.steps}", f"--batch-size {cfg.batch_size}", f"--lr {cfg.lr:g}",
              f"--weight-decay {cfg.weight_decay:g}", f"--betas {cfg.betas[0]:g} {cfg.betas[1]:g}",
              f"--grad-clip {cfg.grad_clip:g}", f"--ema-decay {cfg.ema_decay:g}",
              f"--seed {cfg.seed}", f"--out {cfg.out}"]
    if cfg.warmup_steps or cfg.schedule != "constant":
        parts += [f"--warmup-steps {cfg.warmup_steps}", f"--schedule {cfg.schedule}",
                  f"--min-lr {cfg.min_lr:g}"]
    return " ".join(parts)


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


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # betas: a list from the CLI or JSON


def _truncate_log(path: Path, step: int) -> Optional[float]:
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


def train(cfg: TrainConfig, on_step: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Train (or resume) ``cfg.model``; returns ``{"final", "steps", "wall_s", "loss", metrics}``.

    ``on_step(step)`` runs after each completed (and, when due, checkpointed) step on every rank.
    """
    from vargen.registry import create_model, get_entry
    from tqdm import tqdm

    kind = get_entry(cfg.model).kind
    cfg = cfg.resolved(kind)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    own_group = world_size > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    deterministic = device.type == "cpu" if cfg.deterministic is None else cfg.deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    out = Path(cfg.out)
    files = contextlib.ExitStack()
    try:
        data = load_data(cfg, kind, device, rank, world_size)
        sampler = GlobalBatchSampler(len(data["labels"]), cfg.batch_size, cfg.seed)
        sampler.local_batch(0, rank, world_size)  # fails early on an uneven split

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = create_model(cfg.model, **cfg.overrides).to(device).train()
        ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        params = [p for p in model.parameters() if p.requires_grad]
        # No weight decay on norms and biases (LlamaGen's configure_optimizers, xAR).
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)

        step, wall_before = 0, 0.0
        ckpt_path = out / CHECKPOINT_NAME
        if ckpt_path.exists():
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            saved = ckpt["train_config"]
            now = dataclasses.asdict(cfg)
            keys = RESUME_KEYS + (("steps",) if cfg.schedule == "cosine" else ())
            changed = [k for k in keys if _as_tuple(saved.get(k)) != _as_tuple(now[k])]
            if ckpt["step"] > cfg.steps:
                changed.append(f"steps: the checkpoint is at step {ckpt['step']} > --steps {cfg.steps}")
            if changed or ckpt["model_config"] != dataclasses.asdict(model.config):
                raise ValueError(f"{ckpt_path} was written by a different run (changed: "
                                 f"{changed or 'model config'}); rerun with the same settings "
                                 f"to resume, or pick a new --out")
            model.load_state_dict(ckpt["model"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            step, wall_before = ckpt["step"], ckpt["wall_s"]
            if len(ckpt["rng"]) == world_size:
                _set_rng_state(ckpt["rng"][rank], device)
            else:  # a different process count cannot replay the old random streams
                torch.manual_seed(sample_seed(cfg.seed, 1_000_000 * step + rank))
        else:
            torch.manual_seed(sample_seed(cfg.seed, rank))
        last_loss = _truncate_log(out / LOG_NAME, step) if rank == 0 else None

        objective = _Objective(model, with_labels=kind != "tokenizer")
        if world_size > 1:
            objective = nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if device.type == "cuda" and cfg.precision == "bf16" else contextlib.nullcontext())

        def save_checkpoint(wall_s: float) -> None:
            rng = [_rng_state(device)]
            if world_size > 1:
                rng = [None] * world_size
                dist.all_gather_object(rng, _rng_state(device))
            if rank == 0:
                state = {"model": model.state_dict(), "ema": ema.state_dict() if ema else None,
                         "optimizer": optimizer.state_dict(), "step": step, "wall_s": wall_s,
                         "rng": [{k: v.cpu() for k, v in r.items()} for r in rng],
                         "train_config": dataclasses.asdict(cfg),
                         "model_config": dataclasses.asdict(model.config)}
                atomic_write(ckpt_path, lambda p: torch.save(state, p))

        out.mkdir(parents=True, exist_ok=True)
        log_file = files.enter_context(open(out / LOG_NAME, "a")) if rank == 0 else None
        bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0 or not cfg.progress,
                   desc=cfg.model, dynamic_ncols=True)
        start, sums, count, final_loss = time.time(), {}, 0, last_loss
        while step < cfg.steps:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = sampler.local_batch(step, rank, world_size)
            inputs, labels = data["inputs"][idx].to(device), data["labels"][idx].to(device)
            with autocast:
                result = objective(inputs, labels)
            loss, logs = result if isinstance(result, tuple) else (result, {})
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower --lr or "
                                         f"use --precision fp32")
            loss.backward()
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            grad_norm = nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                update_ema(ema, model, cfg.ema_decay, step)
            step += 1
            for k, v in {"loss": loss, "grad_norm": grad_norm, **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
            count += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                means = torch.tensor([sums[k] / count for k in sorted(sums)], dtype=torch.float64)
                if world_size > 1:
                    dist.all_reduce(means)
                    means /= world_size
                record = dict(zip(sorted(sums), means.tolist()))
                final_loss, sums, count = record["loss"], {}, 0
                if log_file is not None:
                    log_file.write(json.dumps({"step": step, "lr": lr, **record,
                                               "wall_s": round(wall_before + time.time() - start, 3)}) + "\n")
                    log_file.flush()
                bar.set_postfix(loss=f"{final_loss:.4f}")
            bar.update(1)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_checkpoint(wall_before + time.time() - start)
            if on_step is not None:
                on_step(step)
        bar.close()
        files.close()
        wall_s = wall_before + time.time() - start
        result = {"final": str(out / "final"), "steps": step, "wall_s": wall_s, "loss": final_loss}
        if rank == 0:
            export = ema if ema is not None else model.eval()
            metrics = export.heldout_metrics(cfg.data) if hasattr(export, "heldout_metrics") else {}
            result.update(metrics)
            card = model_card(cfg, kind, len(data["labels"]), wall_s,
                              _device_name(device, world_size), final_loss, metrics)
            final = out / "final"
            atomic_write(final / "README.md", lambda p: Path(p).write_text(card))
            export.save_pretrained(final)
        if world_size > 1:
            dist.barrier()
        return result
    finally:
        files.close()
        torch.use_deterministic_algorithms(previous_deterministic)
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _parse_override(text: str) -> Tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--override expects key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare string


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig(model="", out="")
    p.add_argument("--model", required=True, help="registered model name (vargen list)")
    p.add_argument("--override", type=_parse_override, action="append", default=[],
                   metavar="KEY=VALUE", help="model config field, e.g. class_dropout_prob=0")
    p.add_argument("--data", default=d.data, help="dataset (mnist, mnist:heldout), image folder, "
                   "or token .safetensors file")
    p.add_argument("--split", default=d.split)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--tokenizer", default=None, help="tokenizer for generators: registered name "
                   "with weights or save_pretrained folder")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=None, help="default: the family recipe")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--betas", type=float, nargs=2, default=None)
    p.add_argument("--grad-clip", type=float, default=None, help="0 disables")
    p.add_argument("--ema-decay", type=float, default=None, help="0 disables EMA")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--schedule", choices=("constant", "cosine"), default=d.schedule)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--precision", choices=("bf16", "fp32"), default=d.precision)
    p.add_argument("--device", default=None)
    p.add_argument("--no-deterministic", dest="deterministic", action="store_false", default=None)
    p.add_argument("--cache-dir", default=None, help="token cache (default ~/.cache/vargen/tokens)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.jsonl, final/")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"overrides"}
    values = {k: v for k, v in vars(args).items() if k in names}
    return TrainConfig(overrides=dict(args.override), **values)


@command("train")
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a registered model (resumes from OUT/checkpoint.pt)")
    add_arguments(p)

    def run(args):
        result = train(config_from_args(args))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
    p.set_defaults(run=run)


def main(argv: Optional[List[str]] = None) -> int:
    import sys
    from vargen.cli import main as cli_main
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
