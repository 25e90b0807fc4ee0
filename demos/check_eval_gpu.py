"""GPU vs CPU Inception statistics: the same images through vargen.eval on both devices.

Features run in fp32 with TF32 off (``vargen.eval.inception.full_fp32``); the GPU uses its own
batch size (``default_batch_size``). Prints the largest differences of the pool3 and spatial means
and covariances, and FID / sFID between the CPU and GPU statistics (both should be ~0), plus
images per second on each device.

    python demos/check_eval_gpu.py --num-images 500 --weights random
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--weights", default=None, help="Inception weights (default resolution order), or 'random'")
    p.add_argument("--cpu-batch-size", type=int, default=50)
    args = p.parse_args()
    from vargen.eval.inception import InceptionFeatures, default_batch_size
    from vargen.eval.metrics import extract
    from vargen.eval.scores import frechet_distance
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    images = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (args.num_images, 3, args.size, args.size),
                                                               dtype=np.uint8))
    extractor = InceptionFeatures(args.weights, allow_random=args.weights == "random")
    out = {"weights": extractor.weights_source, "images": args.num_images, "size": args.size}
    feats = {}
    for device, batch in (("cpu", args.cpu_batch_size), ("cuda", default_batch_size("cuda"))):
        extractor.to(device)
        if device == "cuda":
            extract(images[:batch], extractor, batch_size=batch)  # warm-up (cuDNN init)
            torch.cuda.synchronize()
        start = time.perf_counter()
        feats[device] = extract(images, extractor, batch_size=batch, spatial=True)
        out[f"{device}_batch_size"] = batch
        out[f"{device}_img_per_s"] = round(args.num_images / (time.perf_counter() - start), 1)
    for name in ("pool", "spatial"):
        c, g = getattr(feats["cpu"], name), getattr(feats["cuda"], name)
        out[f"{name}_mu_max_abs_diff"] = float(np.abs(c.mu - g.mu).max())
        out[f"{name}_sigma_max_rel_diff"] = float(np.abs(c.sigma - g.sigma).max() / np.abs(c.sigma).max())
        out[f"{name}_frechet_cpu_vs_gpu"] = frechet_distance(c.mu, c.sigma, g.mu, g.sigma, method="eigvals")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
