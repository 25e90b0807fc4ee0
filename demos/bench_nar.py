"""Benchmark: NAR diagonal decoding vs LlamaGen raster decoding of the same trunk.

NAR (arXiv 2503.10696, https://github.com/ThisisBillhe/NAR) decodes a 16 x 16 grid in 31 forward
passes where LlamaGen (https://github.com/FoundationVision/LlamaGen) needs 256. Both run here
with random weights, the same batch, the same grid and CFG, each in its own subprocess so that
peak memory is measured separately (CPU: peak RSS growth during sampling; GPU: peak allocated).

    python demos/bench_nar.py --size tiny --batch 8          # 4-layer, 256-wide trunk
    python demos/bench_nar.py --size b --batch 8 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

# trunk overrides per --size; vocab 16384 and the 16 x 16 grid as in the released models
SIZES = {"tiny": dict(n_layer=4, dim=256, n_head=4), "b": {}}
PAIRS = {"raster": ("llamagen-b", "raster"), "neighbor": ("nar-b", "neighbor")}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> dict:
    """Build one generator, sample one batch, report passes / time / memory as JSON."""
    import torch

    from vargen.registry import create_model
    from vargen.samplers import create_sampler
    from vargen.seeding import SampleRNG

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, sampler_name = PAIRS[args.worker]
    model = create_model(name, **SIZES[args.size]).eval().to(args.device)
    with torch.no_grad():  # heads are zero-initialised: give them random weights so logits vary
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.02)
    sampler = create_sampler(sampler_name, cfg_scale=args.cfg, top_k=args.top_k)
    labels = torch.arange(args.batch) % model.num_classes
    rng = SampleRNG(args.seed, args.batch, device="cpu")
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    start = time.perf_counter()
    tokens = sampler(model, labels, rng)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:  # ru_maxrss is the process high-water mark, in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"model": name, "params_m": model.num_params() / 1e6, "tokens": list(tokens.shape),
            "forward_passes": sampler.stats["forward_passes"], "seconds": seconds,
            "peak_mib": max(peak, 0) / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--worker", choices=sorted(PAIRS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = {}
    for kind in ("raster", "neighbor"):
        cmd = [sys.executable, __file__, "--worker", kind] + sys.argv[1:]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[kind] = json.loads(out.strip().splitlines()[-1])
    print(f"size={args.size} batch={args.batch} cfg={args.cfg} top_k={args.top_k} device={args.device} "
          f"grid=16x16 vocab=16384 threads={args.threads}")
    print(f"{'generator':<16}{'params':>9}{'passes':>8}{'seconds':>10}{'img/s':>8}{'peak MiB':>10}")
    for kind, r in results.items():
        print(f"{r['model'] + '/' + args.size:<16}{r['params_m']:>8.1f}M{r['forward_passes']:>8}{r['seconds']:>10.2f}"
              f"{args.batch / r['seconds']:>8.2f}{r['peak_mib']:>10.1f}")
    ratio = results["raster"]["seconds"] / results["neighbor"]["seconds"]
    print(f"speed-up NAR vs raster: {ratio:.2f}x wall-clock, "
          f"{results['raster']['forward_passes'] / results['neighbor']['forward_passes']:.2f}x fewer passes")


if __name__ == "__main__":
    main()
