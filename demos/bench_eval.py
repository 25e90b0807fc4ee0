"""Benchmark vargen.eval's Inception feature extraction.

1. Throughput against torch-fidelity's own ``calculate_metrics`` on the same uint8 images and the
   same weights (fid-helper conversion written to a temporary .pth for torch-fidelity): one run each.
2. Peak resident memory of a full streaming pass (``.npz`` -> features -> mu/sigma) for N and 4N
   images, each in a fresh process: it should stay flat in N.

    python demos/bench_eval.py --throughput-n 64 --memory-n 200 800
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3), dtype=np.uint8)


class UInt8Dataset(torch.utils.data.Dataset):
    """torch-fidelity wants a Dataset of bare uint8 CHW tensors."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def throughput(n: int, size: int, batch: int) -> dict:
    import torch_fidelity
    from vargen.eval.inception import InceptionFeatures, resolve_inception_weights
    from vargen.eval.metrics import extract
    images = random_images(n, size)
    extractor = InceptionFeatures()
    t = time.perf_counter()
    extract(images, extractor, batch_size=batch)
    ours = n / (time.perf_counter() - t)
    state, source = resolve_inception_weights()
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "inception.pth"
        torch.save(state, pth)
        t = time.perf_counter()
        # IS needs only input1 and no 2048x2048 matrix function: the time is feature extraction.
        torch_fidelity.calculate_metrics(input1=UInt8Dataset(images), isc=True, cuda=False, batch_size=batch,
                                         feature_extractor_weights_path=str(pth), cache=False, verbose=False,
                                         save_cpu_ram=True)
        theirs = n / (time.perf_counter() - t)
    return {"images": n, "size": size, "batch": batch, "weights": source, "vargen_img_per_s": round(ours, 2),
            "torch_fidelity_img_per_s": round(theirs, 2), "ratio_vargen_over_tf": round(ours / theirs, 3)}


def memory_child(path: str, batch: int) -> None:
    from vargen.eval.inception import InceptionFeatures
    from vargen.eval.metrics import extract
    feats = extract(path, InceptionFeatures(), batch_size=batch, spatial=True)
    print(json.dumps({"images": feats.n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_memory(n: int, size: int, batch: int) -> dict:
    from vargen.eval.stats import save_npz
    with tempfile.TemporaryDirectory() as tmp:
        path = save_npz(Path(tmp) / "images.npz", arr_0=random_images(n, size, seed=n))
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(path), "--batch", str(batch)],
                             check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--throughput-n", type=int, default=64)
    p.add_argument("--memory-n", type=int, nargs=2, default=(1000, 4000))
    p.add_argument("--size", type=int, default=32, help="input image size (the network resizes to 299)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.batch)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(json.dumps(throughput(args.throughput_n, args.size, args.batch)))
    for n in args.memory_n:
        print(json.dumps(peak_memory(n, args.size, args.batch)))


if __name__ == "__main__":
    main()
