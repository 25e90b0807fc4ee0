"""Benchmark: xAR next-cell flow sampling vs LlamaGen raster and NAR neighbour decoding.

xAR (arXiv 2502.20388, https://github.com/OliverRensu/xAR) samples 4 cells of 8x8 latent tokens
with ``num_steps`` flow steps each (160 network calls for 40 steps); LlamaGen needs 256 calls
and NAR 31 for the same 16x16 grid. All run here with random weights, the same batch, grid and
CFG, one after the other in one process. Besides calls and seconds per image, the table gives
the tokens each image pushes through the network (CFG doubling and clean contexts included).

For xAR two rows: ``xar`` is vargen's scheme (linear CFG ramp; cell 0 has scale 1 and runs
undoubled), ``xar-doubled`` doubles every cell, which is exactly the official code's
token count (it doubles cell 0 although its scale is 1); the official count is also computed.

    python demos/bench_xar.py --size tiny --batch 8
    python demos/bench_xar.py --size b --batch 8 --device cuda
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from vargen.registry import create_model, list_models
from vargen.samplers import create_sampler
from vargen.seeding import SampleRNG

# Overrides per --size: 16x16 grid, 16 latent channels / 16384 codes as the released models.
SIZES = {
    "tiny": {"xar": dict(dim=256, encoder_depth=2, decoder_depth=2, n_head=4),
             "ar": dict(n_layer=4, dim=256, n_head=4)},
    "b": {"xar": {}, "ar": {}},
}


def official_tokens_per_image(sizes: list, num_steps: int) -> int:
    """Official sampler: every call CFG-doubled; the previous clean cell rides on the first step."""
    return 2 * (num_steps * sum(sizes) + sum(sizes[:-1]))


def run(name: str, overrides: dict, sampler_name: str, options: dict, args) -> dict:
    torch.manual_seed(0)
    model = create_model(name, **overrides).eval().to(args.device)
    with torch.no_grad():  # zero-initialised heads would give constant logits
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.02)
    sampler = create_sampler(sampler_name, **options)
    labels = torch.arange(args.batch) % model.num_classes
    rng = SampleRNG(args.seed, args.batch, device=args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    sampler(model, labels, rng)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"model": name, "params_m": model.num_params() / 1e6,
            "passes": sampler.stats["forward_passes"], "seconds": seconds,
            "tokens": sampler.stats.get("tokens_per_image"),
            "sizes": getattr(getattr(model, "partition", None), "sizes", None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cfg", type=float, default=2.7, help="xAR-B's official cfg")
    parser.add_argument("--ar-cfg", type=float, default=2.0, help="LlamaGen / NAR cfg")
    parser.add_argument("--num-steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = SIZES[args.size]
    flow = dict(num_steps=args.num_steps, cfg_scale=args.cfg)
    rows = [("xar", run("xar-b", size["xar"], "flow", {**flow, "cfg_schedule": "linear"}, args)),
            ("xar-doubled", run("xar-b", size["xar"], "flow",
                                {**flow, "cfg_schedule": "constant"}, args)),
            ("llamagen", run("llamagen-b", size["ar"], "raster", {"cfg_scale": args.ar_cfg}, args))]
    if "nar-b" in list_models("nar-b"):
        rows.append(("nar", run("nar-b", size["ar"], "neighbor", {"cfg_scale": args.ar_cfg}, args)))
    for _, r in rows:
        if r["tokens"] is None:  # raster / neighbour: every token once (+ class token), CFG-doubled
            r["tokens"] = 257 * (2 if args.ar_cfg != 1 else 1)
    official = official_tokens_per_image(rows[0][1]["sizes"], args.num_steps)
    print(f"size={args.size} batch={args.batch} device={args.device} grid=16x16 "
          f"xar: {args.num_steps} SDE steps, cfg {args.cfg}; ar cfg {args.ar_cfg}; "
          f"threads={os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'run':<13}{'params':>9}{'calls':>7}{'tokens/img':>12}{'s/img':>9}")
    for label, r in rows:
        print(f"{label:<13}{r['params_m']:>8.1f}M{r['passes']:>7}{r['tokens']:>12.0f}"
              f"{r['seconds'] / args.batch:>9.3f}")
    xar, doubled = rows[0][1], rows[1][1]
    print(f"official xAR scheme: {rows[0][1]['passes']} calls, {official} tokens/img; vargen "
          f"{xar['tokens']:.0f} ({100 * (1 - xar['tokens'] / official):.1f}% fewer); "
          f"wall-clock vargen vs doubled: {doubled['seconds'] / xar['seconds']:.2f}x")


if __name__ == "__main__":
    main()
