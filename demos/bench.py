"""vargen's benchmark command: every generator family against its official code, side by side.

Each (family, implementation) pair samples one batch in its own worker process, on the same
config, the same weights (the official model's seeded init, loaded into vargen through its
converter), the same batch, CFG and dtype. Workers run interleaved, ``--repeats`` rounds of
A B / B A, so slow drift on a shared machine hits both sides; the tables give the minimum and
median seconds, peak memory above the worker's start, and the ratio official / vargen of the
minima. Then the evaluation sections (Inception and I3D features, SJD/GSD) run in this process.
A worker is demos/bench_worker.py; this file is the command: jobs, rounds, tables, the header.

    python demos/bench.py --official-root $OFFICIAL --quick          # <= 20 min on 2 CPU cores
    python demos/bench.py --official-root $OFFICIAL --size b --repeats 3
    python demos/bench.py --official-root $OFFICIAL --size b --device cuda --dtype bfloat16 --compile
    python demos/bench.py ... --update-doc [FILE.md]  # rewrite this run's block of docs/benchmarks.md (or FILE)

``--official-root`` is a scratch folder holding checkouts of the official repositories (see
demos/official.py); without it, or where one is missing, the official rows are skipped with a
message and vargen runs on its own seeded weights. Official code is never part of vargen.

The block's first line is the command that wrote it, without machine paths (relative to the
current directory, ``$OFFICIAL`` for the official root, else the file name).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import roofline
from bench_worker import FAMILIES, NO_OFFICIAL, run_worker

HERE = Path(__file__).resolve().parent
DEFAULT_DOC = HERE.parent / "docs" / "benchmarks.md"  # --update-doc without a path


# Trunk overrides (vargen's config names; demos/official.py maps them) per --size.
TRUNKS = {
    "tiny": {"raster": dict(n_layer=4, dim=256, n_head=4), "nar": dict(n_layer=4, dim=256, n_head=4),
             "xar": dict(dim=256, encoder_depth=2, decoder_depth=2, n_head=4),
             "video-nar": dict(n_layer=4, dim=256, n_head=4),
             "cont-ar": dict(n_layer=4, dim=256, n_head=4, vis_dim=256, head_width=256, head_depth=2),
             "rar": dict(n_layer=4, dim=256, n_head=4, intermediate_size=1024),
             "var": dict(depth=4, embed_dim=256, num_heads=4),  # VAR-d4 (width 64 d, d heads)
             "mar": dict(dim=256, decoder_dim=256, encoder_depth=2, decoder_depth=2, n_head=4, decoder_n_head=4,
                         head_width=256, head_depth=2)},
    "b": {"raster": {}, "nar": {}, "xar": {}, "video-nar": dict(n_layer=12, dim=768, n_head=12), "cont-ar": {},
          "rar": {}, "mar": {}, "var": {}},
}
EVAL_SECTIONS = ("inception", "i3d", "speculative")
PAPER_IMG_PER_S = {"nar": 419.7, "raster": 117.9, "var": 129.0}  # NAR paper, A100: NAR-B, LlamaGen-B, VAR-d16


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
        if args.prepack:
            impls.append("vargen-prepacked")
        for impl in impls:
            jobs.append(dict(family=family, impl=impl, trunk=TRUNKS[args.size][family], batch=args.batch,
                             cfg=args.cfg, xar_cfg=args.xar_cfg, top_k=args.top_k,
                             num_steps=args.xar_steps if family == "xar" else args.head_steps,
                             latent_shape=args.video_shape, dtype=args.dtype, device=args.device,
                             seed=args.seed, threads=args.threads, official_root=args.official_root,
                             compile=args.compile, var_cfg=args.var_cfg, var_decode=args.var_decode,
                             mar_iter=args.mar_iter, official_keep_memory=args.official_keep_memory))
    return jobs


def run_generators(args) -> List[dict]:
    jobs = generator_jobs(args)
    results: Dict[tuple, List[dict]] = {}
    for r in range(args.repeats):
        for job in (jobs if r % 2 == 0 else jobs[::-1]):  # A B, then B A
            row = run_worker({**job, "roofline": r == 0})  # the first round also counts FLOPs
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
            "tokens_per_image": rows[0].get("tokens_per_image"), "work": rows[0].get("work")}


def generator_table(rows: List[dict], args) -> str:
    by = {(r["family"], r["impl"]): r for r in rows if "profile" not in r}
    cuda = args.device.startswith("cuda")
    lines = ["| family | implementation | forward passes | s / batch (min) | median | img/s | peak MiB | "
             "official / vargen (min) | floor s (bound) | roofline % |" + (" paper img/s (A100) |" if cuda else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else "")]
    for family in args.families:
        ours, theirs = by.get((family, "vargen")), by.get((family, "official"))
        for r in (theirs, ours, by.get((family, "vargen-prepacked"))):
            if r is None:
                continue
            if r is theirs:
                ratio = "1.00×"
            elif theirs is not None:
                ratio = f"**{theirs['min_s'] / r['min_s']:.2f}×** (median {theirs['median_s'] / r['median_s']:.2f}×)"
            else:
                ratio = "no official run"
            paper = f" {PAPER_IMG_PER_S.get(family, '')} |" if cuda else ""
            work = (ours or {}).get("work")  # both sides do vargen's counted work: same config and weights
            floor, bound = roofline.floor_seconds(work, args.peaks) if work and args.peaks else (None, "")
            roof = f"{floor:.2f} ({bound}) | {100 * floor / r['min_s']:.0f}%" if floor else " | "
            lines.append(f"| {FAMILIES[family][2]} | {r['impl']} | {(ours or r)['passes']} | {r['min_s']:.2f} | "
                         f"{r['median_s']:.2f} | {args.batch / r['min_s']:.2f} | {r['peak_mib']:.0f} | {ratio} | "
                         f"{roof} |{paper}")
    lines.append("\n" + roofline.describe(args.peaks))
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
    lines += var_lines(by, args)
    return "\n".join(lines)


def var_lines(by: Dict[tuple, dict], args) -> List[str]:
    """What the VAR rows time, and img/s of vargen's VAR vs raster vs NAR at this run's batch (the NAR
    paper's A100 comparison: VAR-d16 129, LlamaGen-B 118, NAR-B 420 img/s)."""
    if not any(f == "var" for f, _ in by):
        return []
    work = ("the official `autoregressive_infer_cfg` decodes f_hat to pixels (VQVAE decoder, 256 px); "
            "vargen's rows decode too" if args.var_decode else "tokens: the official "
            "`autoregressive_infer_cfg` with its final `vae.fhat_to_img` (the VQVAE decoder) replaced by the "
            "identity; the quantizer's phi convs that build each scale's input run on both sides")
    lines = [f"\nVAR rows time {work}; VAR cfg {args.var_cfg} linear in the scale (vargen cfg_scale "
             f"{1 + args.var_cfg}), top-k 900, top-p 0.96 (README FID run), 680 ids in 10 passes."]
    rates = [(FAMILIES[f][2], args.batch / by[(f, "vargen")]["min_s"], PAPER_IMG_PER_S[f])
             for f in ("var", "raster", "nar") if (f, "vargen") in by]
    if len(rates) > 1:
        lines.append("\nimg/s at batch {} (vargen, this run; NAR paper on an A100): ".format(args.batch)
                     + ", ".join(f"{name} **{r:.2f}** ({paper:g})" for name, r, paper in rates))
    return lines


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


def _with_ratio(rows: List[dict], baseline: str, group: Sequence[str] = ()) -> List[dict]:
    """Add ``speed_up`` = baseline min seconds / row min seconds, within rows sharing the ``group`` keys."""
    for r in rows:
        base = next((b for b in rows if b["impl"] == baseline and b["seconds"]
                     and all(b.get(k) == r.get(k) for k in group)), None)
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
    rows = _with_ratio(rows, "vargen", group=("input",))
    return ("I3D features (FVD), 16-frame uint8 clips, batch 2",
            {"impl": "implementation", "input": "input", "items": "clips", "seconds": "s (min / median)",
             "per_s": "clips/s", "speed_up": "vs fp32", "peak_mib": "peak MiB",
             "max_abs_err_vs_fp32": "max |logit err|", "note": "note"}, rows)


def speculative_runner(args):
    import bench_speculative as spec
    samples = 16 if args.quick else 64
    # (generator, sampling batches, samples): the class-conditional rows, then the papers' setting at
    # batch 1 (text-to-image); the release-length model gets a quarter of the samples: 4x the codes
    # each, and random weights whose pass counts barely vary between samples
    settings = [("llamagen-mnist", (1, 16), samples), ("t2i-mnist", (1,), samples),
                (spec.RELEASE_T2I, (1,), samples // 4)]
    rows = [row for name, batches, n in settings
            for row in spec.speculative_section(name, batches=batches, samples=n, repeats=args.repeats,
                                                device=args.device)]
    rows = _with_ratio(rows, "raster", group=("model", "batch"))
    return (f"Speculative decoding, CFG 2.0, top-k 0: the shipped llamagen-mnist (class ids, 8×8 tokens), "
            f"t2i-mnist (prompt \"{spec.PROMPT}\" encoded once; 32 caption + 8×8 tokens) and "
            f"{spec.RELEASE_T2I} (random weights at the LlamaGen t2i release's 120 caption tokens of width 2048 "
            f"+ 16×16 tokens of 16384; its pass counts are those of random logits, not of a trained model)",
            {"model": "model", "condition": "condition", "impl": "sampler", "batch": "batch",
             "forward_passes_per_sample": "passes / sample", "forward_passes": "loop passes (all batches)",
             "seconds": "s (min / median)", "per_s": "samples/s", "speed_up": "vs raster", "peak_mib": "peak MiB"},
            rows)


EVAL_RUNNERS = {"inception": inception_runner, "i3d": i3d_runner, "speculative": speculative_runner}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def shown_path(value: str, placeholder: Optional[str] = None) -> str:
    """An absolute ``value`` as the header prints it: relative to the current directory when under
    it, else ``placeholder`` if given, else the file name. Other values are returned as they are."""
    if not os.path.isabs(value):
        return value
    path, cwd = Path(os.path.abspath(value)), Path(os.getcwd())
    if path.is_relative_to(cwd):
        return str(path.relative_to(cwd))
    return placeholder or path.name


def command_line(argv: Sequence[str]) -> str:
    """``python demos/bench.py ARGV`` with no absolute path in it (see :func:`shown_path`)."""
    words = ["python", "demos/bench.py"]
    for i, arg in enumerate(argv):
        option, value = arg.split("=", 1) if arg.startswith("--") and "=" in arg else (None, arg)
        official = (option or (argv[i - 1] if i else "")) == "--official-root"
        shown = shown_path(value, "$OFFICIAL" if official else None)
        words.append(shown if option is None else f"{option}={shown}")
    return " ".join(words)


def header(args) -> str:
    import torch
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else cpu_name()
    return (f"`{command_line(args.argv)}`: torch {torch.__version__}, {device}, "
            f"{args.threads} threads, {args.dtype}, compile {args.compile}, size {args.size}, batch {args.batch}, "
            f"CFG {args.cfg} (xAR {args.xar_cfg}, {args.xar_steps} SDE steps per cell; VAR {args.var_cfg}), "
            f"top-k {args.top_k}, MAR {args.mar_iter} iterations x {args.head_steps} head steps, "
            f"{args.repeats} rounds A B / B A; load average at the start {os.getloadavg()[0]:.2f}"
            f"{'; ' + args.note if args.note else ''}; {time.strftime('%Y-%m-%d')}")


def markers(block: str) -> tuple:
    return f"<!-- bench:{block} -->", f"<!-- /bench:{block} -->"


def update_doc(path: Path, block: str, text: str) -> None:
    """Replace what stands between the file's ``<!-- bench:BLOCK -->`` markers with ``text``."""
    from vargen.hub import atomic_write
    start, end = markers(block)
    doc = path.read_text()
    if start not in doc or end not in doc:
        raise ValueError(f"{path}: no {start} ... {end} block to replace")
    head, rest = doc.split(start, 1)
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
    p.add_argument("--var-cfg", type=float, default=1.5,
                   help="VAR's official cfg (README FID run 1.5; vargen's cfg_scale is 1 + it)")
    p.add_argument("--var-decode", action="store_true",
                   help="VAR rows include the VQVAE decoder (the official function's fhat_to_img)")
    p.add_argument("--xar-steps", type=int, default=None, help="flow steps per xAR cell (default 40; 10 quick)")
    p.add_argument("--head-steps", type=int, default=None, help="head steps of the continuous AR and MAR")
    p.add_argument("--mar-iter", type=int, default=64, help="MAR's iterations (the release's fast setting)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--video-shape", type=int, nargs=3, default=(4, 16, 16), metavar=("T", "H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prepack", action="store_true", help="also time vargen with its linear weights prepacked "
                   "for the CPU GEMM (vargen.speed.prepack_linears, 2 x batch rows)")
    p.add_argument("--official-keep-memory", action="store_true", help="the official side's processes keep "
                   "freed memory too (vargen.speed.keep_freed_memory, which vargen's CLI and side apply)")
    p.add_argument("--profile", default="", help="comma list of families to profile once more (both sides)")
    p.add_argument("--note", default="", help="what else ran on the machine, for the header")
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--update-doc", "--update-readme", dest="update_doc", nargs="?", const=str(DEFAULT_DOC),
                   default=None, metavar="PATH", help="write the tables into this file's bench block "
                   "(default: docs/benchmarks.md)")
    p.add_argument("--block", default=None, help="bench block name (default: quick, or SIZE-DTYPE)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv  # for the header
    args.peaks = None  # the roofline's, measured when generators run
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
    start = time.perf_counter()
    blocks = [header(args)]
    if args.families:
        import torch
        torch.set_num_threads(args.threads)  # peaks at the workers' threads and 2 rows per image (CFG)
        args.peaks = roofline.measure_peaks(getattr(torch, args.dtype), args.device, rows=2 * args.batch)
        blocks.append(generator_table(run_generators(args), args))
    blocks += run_eval_sections(args)
    blocks.append(f"(whole command: {(time.perf_counter() - start) / 60:.1f} min)")
    text = "\n\n".join(blocks)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.update_doc:
        update_doc(Path(args.update_doc), args.block, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
