"""vargen's benchmark command: every generator family against its official code, side by side.

Each (family, implementation) pair samples one batch in its own worker process, on the same
config, the same weights (the official model's seeded init, loaded into vargen through its
converter), the same batch, CFG and dtype. Workers run interleaved, ``--repeats`` rounds of
A B / B A, so slow drift on a shared machine hits both sides; the tables give the minimum and
median seconds, peak memory above the worker's start, and the ratio official / vargen of the
minima. Then the evaluation sections (Inception and I3D features, SJD/GSD) run in this process.

    python demos/bench.py --official-root /path/to/official --quick          # <= 20 min on 2 CPU cores
    python demos/bench.py --official-root /path/to/official --size b --repeats 3
    python demos/bench.py --official-root /path/to/official --size b --device cuda --dtype bfloat16 --compile
    python demos/bench.py ... --update-readme README.md     # rewrite the README's block of this run

``--official-root`` is a scratch folder holding checkouts of the official repositories (see
demos/official.py); without it, or where one is missing, the official rows are skipped with a
message and vargen runs on its own seeded weights. Official code is never part of vargen.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent


# Trunk overrides (vargen's config names; demos/official.py maps them) per --size.
TRUNKS = {
    "tiny": {"raster": dict(n_layer=4, dim=256, n_head=4), "nar": dict(n_layer=4, dim=256, n_head=4),
             "xar": dict(dim=256, encoder_depth=2, decoder_depth=2, n_head=4),
             "video-nar": dict(n_layer=4, dim=256, n_head=4),
             "cont-ar": dict(n_layer=4, dim=256, n_head=4, vis_dim=256, head_width=256, head_depth=2)},
    "b": {"raster": {}, "nar": {}, "xar": {}, "video-nar": dict(n_layer=12, dim=768, n_head=12), "cont-ar": {}},
}
# family: (vargen registry name, sampler, the paper's name for the row)
FAMILIES = {
    "raster": ("llamagen-b", "raster", "LlamaGen raster"),
    "nar": ("nar-b", "neighbor", "NAR"),
    "xar": ("xar-b", "flow", "xAR"),
    "cont-ar": ("cont-ar-b", "token-flow", "continuous-token AR"),
    "video-nar": ("nar-video-l", "neighbor", "NAR video"),
}
NO_OFFICIAL = {"cont-ar": "Ming-UniVision's generator is its 16B MoE language model (Ling); no "
                          "class-conditional continuous-token AR is released to run at this size"}
EVAL_SECTIONS = ("inception", "i3d", "speculative")
PAPER_IMG_PER_S = {"nar": 419.7, "raster": 117.9}  # NAR paper, A100: NAR-B and LlamaGen-B


# ----------------------------------------------------------------------------- one worker
def sampler_options(family: str, spec: dict) -> dict:
    if family == "xar":
        return dict(num_steps=spec["num_steps"], method="sde", cfg_scale=spec["xar_cfg"], cfg_schedule="linear")
    if family == "cont-ar":
        return dict(num_steps=spec["num_steps"], cfg_scale=spec["cfg"])
    return dict(cfg_scale=spec["cfg"], top_k=spec["top_k"])


def vargen_generator(family: str, spec: dict, torch_dtype):
    """vargen's model (official weights when available) and its ``generate(labels)``."""
    import torch

    from vargen.hub import load_state_dict_strict
    from vargen.registry import create_model, get_entry
    from vargen.samplers import create_sampler
    from vargen.seeding import SampleRNG

    import official
    name, sampler_name, _ = FAMILIES[family]
    overrides = dict(spec["trunk"])
    if family == "video-nar":
        overrides["latent_shape"] = tuple(spec["latent_shape"])
    model = create_model(name, **overrides)
    state = None
    if spec.get("official_root") and family not in NO_OFFICIAL:
        try:
            state = official.build(family, spec["official_root"], spec["trunk"], {**spec, "dtype": torch.float32}
                                   ).state_dict()
        except official.OfficialMissing:
            state = None
    if state is not None:
        converter = get_entry(name).weights.converter
        state = {k: v for k, v in state.items() if "kv_cache" not in k and k not in ("causal_mask", "mask")}
        load_state_dict_strict(model, converter(state) if converter else state, source=f"official {family}")
    else:
        torch.manual_seed(spec["seed"])
        official.randomise_zero_heads(model)
    model = model.eval().to(device=spec["device"], dtype=torch_dtype)
    if spec.get("compile", "off") != "off":  # CUDA graphs come with mode="reduce-overhead"
        model.compile_steps(mode=None if spec["compile"] == "default" else spec["compile"])
    sampler = create_sampler(sampler_name, **sampler_options(family, spec))
    num_classes = model.num_classes

    def generate(labels):
        out = sampler(model, labels % num_classes, SampleRNG(spec["seed"], labels.shape[0], device="cpu"))
        return out, sampler.stats
    return model, generate


def worker(spec: dict) -> dict:
    import torch

    import official
    from benchlib import measure
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    family, impl = spec["family"], spec["impl"]
    labels = torch.arange(spec["batch"], device=spec["device"]) % (101 if family == "video-nar" else 1000)
    if impl == "official":
        run = official.build(family, spec["official_root"], spec["trunk"],
                             {**spec, "dtype": dtype, "cfg": spec["xar_cfg"] if family == "xar" else spec["cfg"]})
        seconds, peak, _ = measure(lambda: run.generate(labels), spec["device"])
        passes, tokens = None, None
    else:
        _, generate = vargen_generator(family, spec, dtype)
        seconds, peak, (_, stats) = measure(lambda: generate(labels), spec["device"])
        passes, tokens = stats["forward_passes"], stats.get("tokens_per_image")
    row = {"family": family, "impl": impl, "seconds": seconds, "peak_mib": peak, "passes": passes}
    if impl == "vargen" and tokens:
        row["tokens_per_image"] = tokens
    if spec.get("profile"):
        row["profile"] = profile(run.generate if impl == "official" else generate, labels)
    return row


def profile(fn, labels, top: int = 8) -> List[tuple]:
    """Share of self CPU time of the ``top`` operators in one more call of ``fn`` (the floor:
    how much of a run is matrix multiplication that no rewrite of the loop removes)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(labels)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [(e.key, round(100 * e.self_cpu_time_total / total, 1)) for e in events[:top]]


def run_worker(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{spec['family']}/{spec['impl']} worker failed: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the command
def generator_jobs(args) -> List[dict]:
    import official
    jobs = []
    for family in args.families:
        impls = ["vargen"]
        if family in NO_OFFICIAL:
            print(f"[{family}] official: skipped ({NO_OFFICIAL[family]})")
        elif not args.official_root:
            print(f"[{family}] official: skipped (no --official-root)")
        else:
            try:
                official.repo_path(args.official_root, family)
                impls.insert(0, "official")
            except official.OfficialMissing as e:
                print(f"[{family}] official: skipped ({e})")
        for impl in impls:
            jobs.append(dict(family=family, impl=impl, trunk=TRUNKS[args.size][family], batch=args.batch,
                             cfg=args.cfg, xar_cfg=args.xar_cfg, top_k=args.top_k,
                             num_steps=args.xar_steps if family == "xar" else args.head_steps,
                             latent_shape=args.video_shape, dtype=args.dtype, device=args.device,
                             seed=args.seed, threads=args.threads, official_root=args.official_root,
                             compile=args.compile))
    return jobs


def run_generators(args) -> List[dict]:
    jobs = generator_jobs(args)
    results: Dict[tuple, List[dict]] = {}
    for r in range(args.repeats):
        for job in (jobs if r % 2 == 0 else jobs[::-1]):  # A B, then B A
            row = run_worker(job)
            results.setdefault((job["family"], job["impl"]), []).append(row)
            print(f"  round {r + 1}: {job['family']:<10} {job['impl']:<8} {row['seconds']:8.2f} s "
                  f"peak {row['peak_mib']:7.1f} MiB", flush=True)
    summaries = [summarise(family, impl, rows) for (family, impl), rows in results.items()]
    if args.profile:
        for job in jobs:
            if job["family"] in args.profile:
                prof = run_worker({**job, "profile": True})["profile"]
                summaries.append({"family": job["family"], "impl": job["impl"], "profile": prof})
    return summaries


def summarise(family: str, impl: str, rows: List[dict]) -> dict:
    seconds = [r["seconds"] for r in rows]
    passes = next((r["passes"] for r in rows if r["passes"] is not None), None)
    return {"family": family, "impl": impl, "min_s": min(seconds), "median_s": statistics.median(seconds),
            "peak_mib": max(r["peak_mib"] for r in rows), "passes": passes, "runs": len(rows),
            "tokens_per_image": rows[0].get("tokens_per_image")}


def generator_table(rows: List[dict], args) -> str:
    by = {(r["family"], r["impl"]): r for r in rows if "profile" not in r}
    cuda = args.device.startswith("cuda")
    lines = ["| family | implementation | forward passes | s / batch (min) | median | img/s | peak MiB | "
             "official / vargen (min) |" + (" paper img/s (A100) |" if cuda else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if cuda else "")]
    for family in args.families:
        ours, theirs = by.get((family, "vargen")), by.get((family, "official"))
        for r in (theirs, ours):
            if r is None:
                continue
            if r is theirs:
                ratio = "1.00×"
            elif theirs is not None:
                ratio = f"**{theirs['min_s'] / ours['min_s']:.2f}×** (median {theirs['median_s'] / ours['median_s']:.2f}×)"
            else:
                ratio = "no official run"
            paper = f" {PAPER_IMG_PER_S.get(family, '')} |" if cuda else ""
            lines.append(f"| {FAMILIES[family][2]} | {r['impl']} | {(ours or r)['passes']} | {r['min_s']:.2f} | "
                         f"{r['median_s']:.2f} | {args.batch / r['min_s']:.2f} | {r['peak_mib']:.0f} | {ratio} |{paper}")
    for r in rows:
        if "profile" in r:
            ops = ", ".join(f"{name} {share}%" for name, share in r["profile"])
            lines.append(f"\nProfile, {FAMILIES[r['family']][2]} ({r['impl']}), share of self CPU time: {ops}")
    xar = by.get(("xar", "vargen"))
    if xar and xar.get("tokens_per_image"):
        steps = xar["passes"] // 4  # 4 cells of 64 tokens, as the official sampler
        official_tokens = 2 * (steps * 256 + 192)  # every call CFG-doubled; clean cells ride on a step
        lines.append(f"\nxAR token rows per image (CFG doubling and clean contexts included): official scheme "
                     f"{official_tokens:,}, vargen {xar['tokens_per_image']:,.0f} (cell 0 has CFG scale 1 under the "
                     f"linear ramp and runs undoubled)")
    raster, nar = by.get(("raster", "vargen")), by.get(("nar", "vargen"))
    if raster and nar:
        lines.append(f"\nNAR vs raster on the same trunk (vargen, this run): **{raster['min_s'] / nar['min_s']:.2f}×** "
                     f"(median {raster['median_s'] / nar['median_s']:.2f}×; {raster['passes']} vs {nar['passes']} passes)")
    return "\n".join(lines)


def rows_table(title: str, rows: List[dict], columns: Dict[str, str]) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns`` {key: header}; lists shown as min / median."""
    def cell(value) -> str:
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
            return f"{min(value):.3g} / {statistics.median(value):.3g}"
        if isinstance(value, float):
            return f"{value:.3g}"
        return "" if value is None or value == [] else str(value)
    lines = [f"**{title}**", "", "| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def run_eval_sections(args) -> List[str]:
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    out = []
    for name in [s for s in EVAL_SECTIONS if s in args.sections]:
        title, columns, rows = EVAL_RUNNERS[name](args)
        out.append(rows_table(title, rows, columns))
    return out


def _with_ratio(rows: List[dict], baseline: str, group: str = "") -> List[dict]:
    """Add ``speed_up`` = baseline min seconds / row min seconds, within rows sharing ``group``."""
    for r in rows:
        base = next((b for b in rows if b["impl"] == baseline and b.get(group) == r.get(group) and b["seconds"]), None)
        if base and r["seconds"]:
            r["speed_up"] = f"{min(base['seconds']) / min(r['seconds']):.2f}×"
            r["per_s"] = f"{r['items'] / min(r['seconds']):.2f}"
    return rows


def inception_runner(args):
    import bench_features
    n = 64 if args.quick else 256
    rows = _with_ratio(bench_features.inception_section(n=n, batch=32, repeats=args.repeats, device=args.device),
                       "torch-fidelity")
    memory = bench_features.inception_memory(ns=(100, 400) if args.quick else (1000, 4000))
    for m in memory:
        m["impl"] = f"vargen, {m['items']} images (fresh process)"
    return ("Inception features (FID / IS / KID), 32×32 uint8 images resized to 299, batch 32",
            {"impl": "implementation", "items": "images", "seconds": "s (min / median)", "per_s": "img/s",
             "speed_up": "vs torch-fidelity", "peak_mib": "peak MiB", "pass_peak_mib": "pass peak MiB",
             "process_peak_rss_mib": "process RSS MiB"}, rows + memory)


def i3d_runner(args):
    import bench_features
    rows = bench_features.i3d_section(n_clips=2 if args.quick else 8, batch=2, repeats=args.repeats,
                                      device=args.device, bf16=True)
    rows = _with_ratio(rows, "vargen", group="input")
    return ("I3D features (FVD), 16-frame uint8 clips, batch 2",
            {"impl": "implementation", "input": "input", "items": "clips", "seconds": "s (min / median)",
             "per_s": "clips/s", "speed_up": "vs fp32", "peak_mib": "peak MiB",
             "max_abs_err_vs_fp32": "max |logit err|", "note": "note"}, rows)


def speculative_runner(args):
    import bench_speculative
    rows = bench_speculative.speculative_section("llamagen-mnist", batches=(1, 16), samples=16 if args.quick else 64,
                                                 repeats=args.repeats, device=args.device)
    rows = _with_ratio(rows, "raster", group="batch")
    return ("Speculative decoding on the shipped llamagen-mnist (8×8 tokens), CFG 2.0",
            {"impl": "sampler", "batch": "batch", "forward_passes_per_sample": "passes / sample",
             "forward_passes": "loop passes (all batches)",
             "seconds": "s (min / median)", "per_s": "samples/s", "speed_up": "vs raster", "peak_mib": "peak MiB"},
            rows)


EVAL_RUNNERS = {"inception": inception_runner, "i3d": i3d_runner, "speculative": speculative_runner}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def header(args) -> str:
    import torch
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else cpu_name()
    return (f"`{' '.join(['python', 'demos/bench.py'] + sys.argv[1:])}`: torch {torch.__version__}, {device}, "
            f"{args.threads} threads, {args.dtype}, compile {args.compile}, size {args.size}, batch {args.batch}, "
            f"CFG {args.cfg} (xAR {args.xar_cfg}, {args.xar_steps} SDE steps per cell), top-k {args.top_k}, "
            f"{args.repeats} rounds A B / B A; load average at the start {os.getloadavg()[0]:.2f}"
            f"{'; ' + args.note if args.note else ''}; {time.strftime('%Y-%m-%d')}")


def readme_markers(block: str) -> tuple:
    return f"<!-- bench:{block} -->", f"<!-- /bench:{block} -->"


def update_readme(path: Path, block: str, text: str) -> None:
    """Replace what stands between the README's ``<!-- bench:BLOCK -->`` markers with ``text``."""
    from vargen.hub import atomic_write
    start, end = readme_markers(block)
    readme = path.read_text()
    if start not in readme or end not in readme:
        raise ValueError(f"{path}: no {start} ... {end} block to replace")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(f"{head}{start}\n{text}\n{end}{tail}"))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-root", default=None, help="scratch folder with the official checkouts")
    p.add_argument("--quick", action="store_true", help="tiny trunks, 2 rounds, small evaluation sets")
    p.add_argument("--size", choices=sorted(TRUNKS), default=None, help="trunk size (default: b; tiny with --quick)")
    p.add_argument("--sections", default=",".join([*FAMILIES, *EVAL_SECTIONS]),
                   help=f"comma list of {', '.join([*FAMILIES, *EVAL_SECTIONS])}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 2 quick, 3 otherwise)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="both sides' dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", choices=["off", "default", "reduce-overhead", "max-autotune"], default=None,
                   help="torch.compile vargen's step methods (default: off on CPU, reduce-overhead = "
                        "CUDA graphs on CUDA)")
    p.add_argument("--cfg", type=float, default=2.0, help="CFG of the discrete generators")
    p.add_argument("--xar-cfg", type=float, default=2.7, help="xAR-B's official CFG")
    p.add_argument("--xar-steps", type=int, default=None, help="flow steps per xAR cell (default 40; 10 quick)")
    p.add_argument("--head-steps", type=int, default=None, help="flow-head steps of the continuous AR")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--video-shape", type=int, nargs=3, default=(4, 16, 16), metavar=("T", "H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="", help="comma list of families to profile once more (both sides)")
    p.add_argument("--note", default="", help="what else ran on the machine, for the header")
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--update-readme", default=None, help="write the tables into this README's bench block")
    p.add_argument("--block", default=None, help="README block name (default: quick, or SIZE-DTYPE)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.compile = args.compile or ("reduce-overhead" if cuda else "off")
    args.size = args.size or ("tiny" if args.quick else "b")
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.xar_steps = args.xar_steps or (10 if args.quick else 40)
    args.head_steps = args.head_steps or (10 if args.quick else 25)
    args.threads = args.threads or os.cpu_count()
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(FAMILIES) - set(EVAL_SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {[*FAMILIES, *EVAL_SECTIONS]}")
    args.families = [s for s in args.sections if s in FAMILIES]
    args.profile = [s for s in args.profile.split(",") if s]
    args.block = args.block or ("quick" if args.quick else f"{args.size}-{args.dtype}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(HERE))
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    start = time.perf_counter()
    blocks = [header(args)]
    if args.families:
        blocks.append(generator_table(run_generators(args), args))
    blocks += run_eval_sections(args)
    blocks.append(f"(whole command: {(time.perf_counter() - start) / 60:.1f} min)")
    text = "\n\n".join(blocks)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.update_readme:
        update_readme(Path(args.update_readme), args.block, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
