"""One measured sampling run of demos/bench.py, in a process of its own.

:func:`run_worker` starts this file with a JSON spec (family, implementation, trunk, batch, CFG,
dtype, device, seed, threads) and reads back one row: seconds and peak memory of one ``generate``
call, and for vargen the forward passes its sampler counted. The vargen side loads the official
model's seeded weights through the registry entry's converter when the official checkout exists
(:mod:`official`), so both sides sample the same network; ``profile`` adds the share of CPU time of
the top operators.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

HERE = Path(__file__).resolve().parent

# family: (vargen registry name, sampler, the paper's name for the row)
FAMILIES = {
    "raster": ("llamagen-b", "raster", "LlamaGen raster"),
    "nar": ("nar-b", "neighbor", "NAR"),
    "xar": ("xar-b", "flow", "xAR"),
    "cont-ar": ("cont-ar-b", "token-flow", "continuous-token AR"),
    "video-nar": ("nar-video-l", "neighbor", "NAR video"),
    "rar": ("rar-b", "raster", "RAR raster"),
    "mar": ("mar-b", "mar", "MAR"),
    "var": ("var-d16", "next-scale", "VAR next-scale"),
}
NO_OFFICIAL = {"cont-ar": "Ming-UniVision's generator is its 16B MoE language model (Ling); no "
                          "class-conditional continuous-token AR is released to run at this size"}


def sampler_options(family: str, spec: dict) -> dict:
    if family == "xar":
        return dict(num_steps=spec["num_steps"], method="sde", cfg_scale=spec["xar_cfg"], cfg_schedule="linear")
    if family == "cont-ar":
        return dict(num_steps=spec["num_steps"], cfg_scale=spec["cfg"])
    if family == "mar":  # MAR's linear CFG and DDPM head (sample_tokens), --head-steps steps
        return dict(num_iter=spec.get("mar_iter", 64), num_steps=spec["num_steps"], cfg_scale=spec["cfg"],
                    cfg_schedule="linear")
    if family == "rar":  # RAR-B's released pow-cosine schedule, no top-k (official generate)
        return dict(cfg_scale=spec["cfg"], cfg_schedule="pow-cosine", cfg_power=2.75)
    if family == "var":  # VAR README's FID run: cfg 1.5 (linear in the scale) = cfg_scale 2.5 here
        return dict(cfg_scale=1.0 + spec.get("var_cfg", 1.5), cfg_schedule="linear", top_k=spec.get("var_top_k", 900),
                    top_p=spec.get("var_top_p", 0.96), more_smooth=False)
    return dict(cfg_scale=spec["cfg"], top_k=spec["top_k"])


def vargen_generator(family: str, spec: dict, torch_dtype):
    """vargen's model (official weights when available) and its ``generate(labels)``."""
    import torch

    from vargen.hub import load_state_dict_strict
    from vargen.registry import create_model, get_entry
    from vargen import speed
    from vargen.samplers import create_sampler
    from vargen.seeding import SampleRNG

    import official
    name, sampler_name, _ = FAMILIES[family]
    overrides = dict(spec["trunk"])
    if family == "video-nar":
        overrides["latent_shape"] = tuple(spec["latent_shape"])
    model = create_model(name, **overrides)
    state, tokenizer = None, None
    if spec.get("official_root") and family not in NO_OFFICIAL:
        try:
            built = official.build(family, spec["official_root"], spec["trunk"], {**spec, "dtype": torch.float32})
            state, tokenizer = built.state_dict(), built.tokenizer
        except official.OfficialMissing:
            state = None
    if family == "var":  # the VQVAE: the official one's weights through vargen's converter, or seeded
        tokenizer = var_tokenizer(model, tokenizer, spec)
    if state is not None:
        converter = get_entry(name).weights.converter
        state = {k: v for k, v in state.items() if "kv_cache" not in k and k not in ("causal_mask", "mask")}
        load_state_dict_strict(model, converter(state) if converter else state, source=f"official {family}")
    else:
        torch.manual_seed(spec["seed"])
        official.randomise_zero_heads(model)
    model = model.eval().to(device=spec["device"], dtype=torch_dtype)
    if spec["device"] == "cpu":  # as vargen's CLI does (load_fast_pipeline); the official code does not
        speed.keep_freed_memory()
    if spec.get("compile", "off") != "off":  # CUDA graphs come with mode="reduce-overhead"
        speed.compile_steps(model, mode=None if spec["compile"] == "default" else spec["compile"])
    sampler = create_sampler(sampler_name, **sampler_options(family, spec))
    num_classes = model.num_classes

    def generate(labels):
        out = sampler(model, labels % num_classes, SampleRNG(spec["seed"], labels.shape[0], device="cpu"))
        if family == "var" and spec.get("var_decode"):  # the official's fhat_to_img, clamp and [0, 1]
            out = tokenizer.decode(out).clamp_(-1, 1).add_(1).mul_(0.5)
        return out, sampler.stats
    return model, generate


def var_tokenizer(model, official_vae, spec: dict):
    """vargen's ``var-vqvae`` at the trunk's patch_nums, attached to ``model``: the official VQVAE's
    weights through the registered converter (strict), else the seeded init."""
    import torch

    from vargen.hub import load_state_dict_strict
    from vargen.registry import create_model, get_entry
    torch.manual_seed(spec["seed"])
    tok = create_model("var-vqvae", patch_nums=tuple(model.patch_nums))
    if official_vae is not None:
        state = {k: v.float() for k, v in official_vae.state_dict().items()}
        load_state_dict_strict(tok, get_entry("var-vqvae").weights.converter(state), source="official VQVAE")
    tok = tok.eval().to(spec["device"])
    model.attach_tokenizer(tok)
    return tok


def worker(spec: dict) -> dict:
    import torch

    import official
    from benchlib import measure
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    family, impl = spec["family"], spec["impl"]
    labels = torch.arange(spec["batch"], device=spec["device"]) % (101 if family == "video-nar" else 1000)
    if impl == "official":
        if spec.get("official_keep_memory"):
            from vargen.speed import keep_freed_memory
            keep_freed_memory()
        run = official.build(family, spec["official_root"], spec["trunk"],
                             {**spec, "dtype": dtype, "cfg": spec["xar_cfg"] if family == "xar" else spec["cfg"]})
        seconds, peak, _ = measure(lambda: run.generate(labels), spec["device"])
        passes, tokens = None, None
    else:
        model, generate = vargen_generator(family, spec, dtype)
        if impl == "vargen-prepacked":
            from vargen.speed import prepack_linears
            prepack_linears(model, rows=2 * spec["batch"])  # a CFG-doubled decoding step's rows
        seconds, peak, (_, stats) = measure(lambda: generate(labels), spec["device"])
        passes, tokens = stats["forward_passes"], stats.get("tokens_per_image")
    row = {"family": family, "impl": impl, "seconds": seconds, "peak_mib": peak, "passes": passes}
    if impl == "vargen" and spec.get("roofline"):  # one more call, its FLOPs counted (demos/roofline.py)
        from roofline import count_work
        row["work"] = count_work(model, lambda: generate(labels)[1])
    if impl != "official" and tokens:
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
    proc = subprocess.run([sys.executable, __file__, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{spec['family']}/{spec['impl']} worker failed: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
