"""Distributed, resumable sample generation for FID (the ADM ``.npz`` protocol).

    python -m vargen.eval.sample --model nar-mnist --num-samples 50000 --out runs/nar
    python -m vargen.eval.sample --model t2i-mnist --prompts captions.txt --out runs/t2i   # text-to-image
    torchrun --nproc_per_node 8 -m vargen.eval.sample --model ... --num-samples 50000 --out runs/nar

Follows the DiT / LlamaGen ``sample_ddp.py`` and MAR ``evaluate`` pattern (torchrun, per-rank files,
barrier, rank 0 writes ``arr_0`` uint8 NHWC) with three changes that make runs reproducible:
labels are class-balanced by index (sample ``i`` has class ``i % num_classes``, MAR/xAR style);
sample ``i`` draws its noise from ``(seed, i)`` (``Pipeline.generate(..., sample_offset=i0)``), so
images do not depend on the number of processes or the batch size; and work is cut into shards
written atomically, so a killed run resumes by skipping finished shards. Inside a shard every batch
is kept as a part file (``part-START-STOP.npz``) until the shard is whole, so a kill loses at most
one batch; a resumed shard continues at the batch boundaries of an uninterrupted run, so its file is
byte-identical.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from vargen import checks
from vargen.cli_args import ArgumentParser, add_sampling_arguments, add_speed_arguments, run_command, sampling_options
from vargen.eval.stats import load_npz, save_npz
from vargen.hub import atomic_write
from vargen.images import to_uint8

MANIFEST = "manifest.json"


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:06d}.npz"


def class_balanced_labels(start: int, stop: int, num_classes: int) -> torch.Tensor:
    return torch.arange(start, stop) % num_classes


def _dist_info(rank: Optional[int], world_size: Optional[int]) -> tuple:
    if rank is not None and world_size is not None:
        return rank, world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def part_path(out_dir: Path, start: int, stop: int) -> Path:
    return out_dir / f"part-{start:09d}-{stop:09d}.npz"


def _parts(out_dir: Path) -> Dict[int, Path]:
    """Part files by their first sample index (stop from the name)."""
    found = {}
    for path in out_dir.glob("part-*-*.npz"):
        start, _, stop = path.stem[len("part-"):].partition("-")
        if start.isdigit() and stop.isdigit():
            found[int(start)] = path
    return found


def _has_results(out_dir: Path) -> bool:
    return any(out_dir.glob("shard-*.npz")) or bool(_parts(out_dir))


def _check_manifest(out_dir: Path, manifest: Dict[str, Any], rank: int) -> None:
    """Rank 0 writes the manifest of a new run (or over one that left no shard); every rank then
    checks that the folder belongs to this run."""
    path = out_dir / MANIFEST
    if rank == 0:
        saved = json.loads(path.read_text()) if path.exists() else None
        if saved != manifest and (saved is None or not _has_results(out_dir)):
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2, sort_keys=True)))
    _barrier()
    saved = json.loads(path.read_text())
    if saved != manifest:
        diff = {k: (saved.get(k), manifest.get(k)) for k in set(saved) | set(manifest) if saved.get(k) != manifest.get(k)}
        raise ValueError(f"{out_dir} holds shards of a different run (saved vs requested: {diff}); "
                         "use another --out folder")


def merge_shards(out_dir: Path, num_shards: int, out: Path) -> Path:
    """Stream all shards into one ADM ``.npz`` (``arr_0`` uint8 NHWC, ``labels``) without holding
    every image in memory: the ``.npy`` member is written header first, then shard by shard."""
    first = load_npz(shard_path(out_dir, 0))["images"]
    sizes = [int(np.load(shard_path(out_dir, j))["labels"].shape[0]) for j in range(num_shards)]
    shape = (sum(sizes),) + first.shape[1:]

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            labels = []
            with z.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                         "fortran_order": False, "shape": shape})
                for j in range(num_shards):
                    shard = load_npz(shard_path(out_dir, j))
                    images = shard["images"]
                    if images.shape[1:] != shape[1:] or images.dtype != np.uint8:
                        raise ValueError(f"shard {j} has images {images.dtype} {images.shape}, expected {shape[1:]}")
                    f.write(np.ascontiguousarray(images).tobytes())
                    labels.append(shard["labels"])
            with z.open("labels.npy", "w") as f:
                np.lib.format.write_array(f, np.concatenate(labels))
    atomic_write(out, write)
    return out


def generate_samples(pipeline: Any, num_samples: int, out_dir: Union[str, Path], *, seed: int = 0,
                     batch_size: int = 32, shard_size: int = 1000, num_classes: Optional[int] = None,
                     sampler: Any = None, rank: Optional[int] = None, world_size: Optional[int] = None,
                     max_shards: Optional[int] = None, progress: bool = True, out_name: str = "samples.npz",
                     **sampling_options: Any) -> Optional[Path]:
    """Generate ``num_samples`` class-balanced images of ``pipeline`` into ``out_dir`` and merge them.

    Shard ``j`` holds samples ``[j * shard_size, (j + 1) * shard_size)`` and belongs to rank
    ``j % world_size``; finished shards are skipped, and a killed shard continues after its last
    finished batch (part files, joined into the shard once it is whole). ``max_shards`` stops this
    process after writing that many shards (an interrupted run, for tests). Returns the merged
    ``.npz`` path on rank 0 once every shard exists, else None.
    """
    for name, value in (("num_samples", num_samples), ("shard_size", shard_size), ("batch_size", batch_size)):
        checks.number(name, value, minimum=1, integer=True)
    seed = checks.seed(seed)
    checks.number("num_classes", num_classes, minimum=1, integer=True, optional=True)
    # Everything is checked before the manifest is written: a refused run leaves nothing behind.
    if hasattr(pipeline, "make_sampler"):
        pipeline.make_sampler(sampler, **sampling_options)
    model_classes = getattr(pipeline.transformer, "num_classes", None)
    num_classes = num_classes or model_classes
    if not num_classes:
        raise ValueError("cannot tell the number of classes from the pipeline; pass num_classes")
    if model_classes and num_classes > model_classes:
        raise ValueError(f"--num-classes {num_classes} exceeds the {model_classes} classes of "
                         f"{getattr(pipeline, 'name', '') or 'the generator'}; pass at most {model_classes}")
    rank, world_size = _dist_info(rank, world_size)
    out_dir = Path(out_dir)
    sampler_name = sampler if isinstance(sampler, str) or sampler is None else type(sampler).__name__
    manifest = {"pipeline": getattr(pipeline, "name", ""), "num_samples": num_samples, "seed": seed,
                "shard_size": shard_size, "num_classes": int(num_classes), "sampler": sampler_name,
                "sampling_options": {k: v for k, v in sorted(sampling_options.items())}}
    dtype = getattr(pipeline, "dtype", torch.float32)
    if dtype != torch.float32:  # other images: a bf16 run never resumes a float32 one (or back)
        manifest["dtype"] = str(dtype).replace("torch.", "")
    _check_manifest(out_dir, manifest, rank)

    num_shards = -(-num_samples // shard_size)
    bounds = {j: (j * shard_size, min((j + 1) * shard_size, num_samples)) for j in range(num_shards)}
    mine = [j for j in range(rank, num_shards, world_size)]
    finished = [j for j in mine if shard_path(out_dir, j).exists()]
    parts = _parts(out_dir)
    kept = {j: _kept_parts(out_dir, parts, *bounds[j], batch_size, finished=j in finished) for j in mine}
    kept = {j: kept[j] for j in mine if j not in finished}
    done = sum(bounds[j][1] - bounds[j][0] for j in finished) + sum(stop - bounds[j][0] for j, (_, stop) in kept.items())
    total = sum(bounds[j][1] - bounds[j][0] for j in mine)
    if done and rank == 0:
        partial = [f"shard {j} continues at sample {stop}" for j, (_, stop) in kept.items() if stop > bounds[j][0]]
        print(f"vargen.eval.sample: resuming {out_dir}: {len(finished)} of {len(mine)} shard(s) done "
              f"(skipped)" + (f"; {', '.join(partial)}" if partial else ""), file=sys.stderr, flush=True)
    bar = tqdm(total=total, initial=done, desc=f"sampling {manifest['pipeline'] or 'pipeline'}", unit="img",
               disable=not progress or rank != 0, dynamic_ncols=True)
    written = 0
    for j in mine:
        if j in finished:
            continue
        if max_shards is not None and written >= max_shards:
            bar.close()
            return None  # simulated interruption
        start, stop = bounds[j]
        files, at = kept[j]
        for a in range(at, stop, batch_size):
            b = min(a + batch_size, stop)
            labels = class_balanced_labels(a, b, num_classes)
            images = pipeline.generate(labels, seed=seed, sample_offset=a, sampler=sampler,
                                       batch_size=batch_size, progress=False, **sampling_options)
            files.append(part_path(out_dir, a, b))
            save_npz(files[-1], images=to_uint8(images).permute(0, 2, 3, 1).numpy())
            bar.update(b - a)
        images = np.concatenate([_part_images(f) for f in files])
        save_npz(shard_path(out_dir, j), images=images, labels=class_balanced_labels(start, stop, num_classes).numpy(),
                 indices=np.arange(start, stop))
        for f in files:
            f.unlink()
        written += 1
    bar.close()

    _barrier()
    if rank != 0:
        return None
    missing = [j for j in range(num_shards) if not shard_path(out_dir, j).exists()]
    if missing:
        # Another rank was interrupted; a rerun finishes its shards.
        print(f"vargen.eval.sample: {len(missing)} shard(s) still missing (e.g. {missing[:5]}); rerun to resume")
        return None
    return merge_shards(out_dir, num_shards, out_dir / out_name)


def _part_images(path: Path) -> np.ndarray:
    with load_npz(path) as part:
        return part["images"]


def _kept_parts(out_dir: Path, parts: Dict[int, Path], start: int, stop: int, batch_size: int,
                finished: bool = False) -> tuple:
    """The part files of a killed shard that an uninterrupted run would have written (batches of
    ``batch_size`` from ``start``), and where the shard continues. Other parts of the shard (another
    batch size; all of them once the shard is whole) are deleted, so the shard's batches, hence its
    bytes, are an uninterrupted run's."""
    files, at = [], start
    while not finished and at in parts and parts[at] == part_path(out_dir, at, min(at + batch_size, stop)):
        files.append(parts[at])
        at = min(at + batch_size, stop)
    for first, path in parts.items():
        if start <= first < stop and path not in files:
            path.unlink()
    return files, at


def init_distributed() -> tuple:
    """(rank, world_size, device) under torchrun (gloo on CPU, nccl on GPU), or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world_size, torch.device("cuda", local)
    return rank, world_size, torch.device("cpu")


# ----------------------------------------------------------------------------- prompt files (text-to-image)
def read_prompts(path: str) -> List[str]:
    """Prompts of a ``.txt`` (one a line) or ``.json`` (a list of strings or of caption records)."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of prompts")
        prompts = [item["caption"] if isinstance(item, dict) else item for item in items]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"{path}: no prompts, or an entry that is not a non-empty string")
    return prompts


class PromptPipeline:
    """A text-to-image pipeline seen by :func:`generate_samples` as a class-conditional one:
    class ``c`` is prompt ``c`` (``generate(labels, ...)`` samples ``prompts[labels]``)."""

    def __init__(self, pipeline: Any, prompts: Sequence[str], tag: str = ""):
        if getattr(pipeline, "text_encoder", None) is None:
            raise ValueError(f"{getattr(pipeline, 'name', '') or 'the pipeline'} is class-conditional; "
                             f"use python -m vargen.eval.sample")
        self.pipeline, self.prompts = pipeline, list(prompts)
        self.name = f"{pipeline.name}+prompts:{tag}" if tag else pipeline.name
        self.transformer = SimpleNamespace(num_classes=len(self.prompts))
        self.dtype = pipeline.dtype

    def make_sampler(self, sampler: Any = None, **options: Any):
        return self.pipeline.make_sampler(sampler, **options)

    def generate(self, labels: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.pipeline.generate(prompt=[self.prompts[int(i)] for i in labels], **kwargs)


def generate_prompt_samples(pipeline: Any, prompts: Sequence[str], out_dir, *, num_samples: Optional[int] = None,
                            tag: str = "", **kwargs: Any) -> Optional[Path]:
    """:func:`generate_samples` over ``prompts``: sample ``i`` is prompt ``i % len(prompts)``."""
    if not tag:
        tag = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    wrapped = PromptPipeline(pipeline, prompts, tag)
    return generate_samples(wrapped, num_samples or len(prompts), out_dir, num_classes=len(prompts), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    positive = checks.cli_number(integer=True, minimum=1)
    p = ArgumentParser(prog="python -m vargen.eval.sample", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline name (vargen list)")
    p.add_argument("--num-samples", type=positive, default=None,
                   help="required for class-conditional models; with --prompts, default one per prompt")
    p.add_argument("--prompts", default=None, help="text-to-image: prompt file, .txt (one a line) or .json "
                   "list; sample i is prompt i %% P (vargen.eval.sample_prompts)")
    p.add_argument("--out", required=True, help="folder for shards and the merged samples.npz")
    p.add_argument("--seed", type=checks.cli_number(integer=True, minimum=0), default=0)
    p.add_argument("--batch-size", type=positive, default=32, help="per-process batch")
    p.add_argument("--shard-size", type=positive, default=1000, help="samples per resumable shard")
    p.add_argument("--num-classes", type=positive, default=None, help="default: the generator's")
    add_sampling_arguments(p)
    add_speed_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-long-run", action="store_true",
                   help=f"allow more than {MAX_SAMPLES:,} samples (4x the 50k of the FID protocol)")
    p.set_defaults(resumable=True)  # Ctrl-C: a rerun continues from the written shards
    return p


# The most samples without --allow-long-run: 4x the 50k of ADM's FID protocol.
MAX_SAMPLES = 200_000


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns its exit status (2 with one line on stderr for a user error)."""
    def run(args: argparse.Namespace) -> None:
        prompts = None
        if args.prompts is not None:
            prompts = read_prompts(args.prompts)
            args.num_samples = args.num_samples or len(prompts)
        elif args.num_samples is None:
            raise ValueError("--num-samples is required (or --prompts FILE for a text-to-image model)")
        if args.num_samples > MAX_SAMPLES and not args.allow_long_run:
            raise ValueError(f"--num-samples {args.num_samples:,} is more than {MAX_SAMPLES:,} (4x the FID "
                             f"protocol's 50k) and may run for days; pass --allow-long-run to start it anyway")
        checks.output_folder(args.out, "--out")
        rank, world_size, device = init_distributed()
        try:
            from vargen.speed import load_fast_pipeline
            pipeline = load_fast_pipeline(args.model, device, args.dtype, args.compile)
            common = dict(seed=args.seed, batch_size=args.batch_size, shard_size=args.shard_size, sampler=args.sampler,
                          rank=rank, world_size=world_size, progress=not args.no_progress, **sampling_options(args))
            if prompts is not None:
                out = generate_prompt_samples(pipeline, prompts, args.out, num_samples=args.num_samples, **common)
            else:
                out = generate_samples(pipeline, args.num_samples, args.out, num_classes=args.num_classes, **common)
            if out is not None:
                print(f"wrote {out} ({args.num_samples} images)")
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    return run_command(build_parser(), argv, run)


if __name__ == "__main__":
    sys.exit(main())
