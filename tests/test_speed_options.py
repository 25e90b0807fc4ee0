"""Speed options (issue 18): bf16 generators sample with float32 / float64 math, and
``vargen.speed.compile_steps`` gives the eager path's tokens, falling back to eager with one
warning when compiling fails.

The compile tests trace with dynamo's ``eager`` backend (the traced path, guards, dynamic cache
lengths and the fallback) on llamagen-tiny. Tracing costs tens of seconds per family on this CPU,
so the other families (NAR, xAR, cont-AR, NAR-video) run with ``VARGEN_TEST_COMPILE=all``, and
``VARGEN_TEST_COMPILE_BACKEND=inductor`` runs the same checks through Inductor's generated code
(minutes of C++ compilation per family on a CPU).
"""
import copy
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import vargen
from vargen import speed
from vargen.data import MNISTDigits
from vargen.samplers import Guidance, LogitsProcessor, create_sampler
from vargen.seeding import SampleRNG, sample_from_probs

BACKEND = os.environ.get("VARGEN_TEST_COMPILE_BACKEND", "eager")
# Inductor fuses and reorders float ops: continuous latents agree to this, not bit for bit.
LATENT_TOL = dict(atol=1e-4, rtol=1e-4)
# (tiny model, sampler, options): every family and sampler
CASES = {
    "raster": ("llamagen-tiny", "raster", {}),
    "sjd": ("llamagen-tiny", "sjd", {"window": 4}),
    "gsd": ("llamagen-tiny", "gsd", {"window": 4}),
    "neighbor": ("nar-tiny", "neighbor", {}),
    "flow": ("xar-tiny", "flow", {"num_steps": 3}),
    "heun": ("xar-tiny", "flow", {"num_steps": 2, "method": "heun"}),
    "token-flow": ("cont-ar-tiny", "token-flow", {"num_steps": 2}),
    "video-neighbor": ("nar-video-tiny", "neighbor", {}),
    "video-raster": ("raster-video-tiny", "raster", {}),
}
# one sampler per family; all of them only on request (see the module docstring)
COMPILED = ("raster", "neighbor", "flow", "token-flow", "video-neighbor") \
    if os.environ.get("VARGEN_TEST_COMPILE") == "all" else ("raster",)


def tiny(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A tiny model with random weights large enough to give peaked logits / velocities."""
    torch.manual_seed(0)
    model = vargen.create_model(name).eval()
    for p in model.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.3)
    return model.to(dtype)


def run(case: str, model, n: int = 3, seed: int = 0) -> torch.Tensor:
    _, sampler, options = CASES[case]
    return create_sampler(sampler, cfg_scale=2.0, **options)(
        model, torch.arange(n) % model.num_classes, SampleRNG(seed, range(n)))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, **LATENT_TOL) if a.is_floating_point() else torch.equal(a, b)


# --------------------------------------------------------------------------------- bf16
def test_guidance_and_filtering_run_in_float32_for_half_precision_outputs():
    processor = LogitsProcessor(cfg_scale=3.0, top_k=5, top_p=0.9)
    logits = torch.randn(4, 64).to(torch.bfloat16)
    probs = processor.probs(logits, 0, 1)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs, processor.probs(logits.float(), 0, 1))
    assert Guidance.mix(logits, 2.0).dtype == torch.float32
    assert Guidance.mix(logits.double(), 2.0).dtype == torch.float64  # float64 is never lowered
    assert Guidance(cfg_scale=1.0).combine(logits).dtype == torch.float32


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_generator_samples_with_a_bf16_cache_and_float32_probabilities(case, monkeypatch):
    model = tiny(CASES[case][0], torch.bfloat16)
    cache_dtypes, prob_dtypes = set(), set()
    setup = model.setup_cache

    def spy_setup(*args, **kwargs):
        setup(*args, **kwargs)
        cache_dtypes.update(a.cache.k.dtype for a in model.attention_layers())
    monkeypatch.setattr(model, "setup_cache", spy_setup)
    import vargen.samplers.neighbor as neighbor, vargen.samplers.raster as raster, \
        vargen.samplers.speculative as speculative
    for module in (raster, neighbor, speculative):
        draw = module.sample_from_probs
        monkeypatch.setattr(module, "sample_from_probs",
                            lambda p, u, draw=draw: prob_dtypes.add(p.dtype) or draw(p, u))
    out = run(case, model)
    assert cache_dtypes == {torch.bfloat16}
    if out.is_floating_point():
        assert out.dtype == torch.float32 and out.isfinite().all()
    else:
        assert prob_dtypes == {torch.float32}
        assert 0 <= int(out.min()) and int(out.max()) < model.vocab_size


def test_xar_rope_table_stays_float32_in_bf16():
    model = vargen.create_model("xar-tiny").to(torch.bfloat16)
    assert model.rope.dtype == torch.float32  # rounding the rotation table would move every position


@pytest.mark.parametrize("pipeline", ["llamagen-mnist", "nar-mnist"])
def test_bf16_picks_the_fp32_token_at_most_steps_of_a_trained_model(pipeline):
    """Per-step agreement on the shipped MNIST models (informative logits): both dtypes see the
    same prefix (teacher forcing on held-out digits' codes) and draw with the same uniforms.
    Measured on 100 digits: 0.952 (llamagen-mnist) and 0.957 (nar-mnist), argmax 0.981 / 0.989
    (0.961 / 0.969 on the 10 here). Free-running samples share fewer tokens (0.58 / 0.66 over 40
    samples at the same seed): one flipped token changes every later step, so they are compared
    by accuracy and FID instead (demos/evaluate_mnist_zoo.py --dtype bfloat16)."""
    pipe = vargen.load_pipeline(pipeline)
    sampler, fp32 = pipe.make_sampler(), pipe.transformer
    digits = MNISTDigits("heldout")
    picks = torch.arange(10) * 100  # one digit per class
    labels = digits.labels[picks].long()
    tokens = pipe.tokenizer.encode(digits.images[picks]).flatten(1)
    uniform = SampleRNG(1, range(10)).rand(tokens.shape[1]).flatten()
    picked = []
    for model in (fp32, copy.deepcopy(fp32).to(torch.bfloat16)):
        if pipeline.startswith("nar"):
            logits = sampler.teacher_forced_logits(model, tokens, labels)  # guided, [B, N, V]
        else:
            with torch.no_grad():
                null = torch.full_like(labels, model.null_class)
                logits = sampler.logits.combine(torch.cat([model(tokens, labels), model(tokens, null)]))
        probs = sampler.logits.filter(logits).softmax(-1)
        picked.append(sample_from_probs(probs.flatten(0, 1), uniform))
    assert (picked[0] == picked[1]).float().mean() >= 0.9


def test_bf16_linear_gelu_is_one_rounding_from_float32():
    """VAR's FFN in bf16 inference: GELU in the GEMM's epilogue, rounded once, lands at least as
    close to the float32 result as the two bf16 ops; with gradients (or in float32) it is the
    two ops exactly."""
    from vargen.nn import linear_gelu
    torch.manual_seed(0)
    fc = torch.nn.Linear(64, 256)
    x = torch.randn(3, 40, 64)
    want = F.gelu(fc(x), approximate="tanh").detach()
    fc16, x16 = copy.deepcopy(fc).to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.no_grad():
        fused = linear_gelu(x16, fc16, "tanh")
        separate = F.gelu(fc16(x16), approximate="tanh")
        assert torch.equal(linear_gelu(x, fc, "tanh"), want)  # float32: the two ops
    assert fused.shape == (3, 40, 256) and fused.dtype == torch.bfloat16
    assert (fused.float() - want).abs().mean() <= (separate.float() - want).abs().mean()
    assert torch.allclose(fused.float(), want, atol=0.05)
    x16.requires_grad_(True)
    out = linear_gelu(x16, fc16, "tanh")  # training: autograd through the two ops
    assert torch.equal(out, F.gelu(fc16(x16), approximate="tanh"))
    out.sum().backward()
    assert x16.grad is not None and fc16.weight.grad is not None


# --------------------------------------------------------------------------------- compile
@pytest.mark.parametrize("case", COMPILED)
def test_compiled_steps_give_the_eager_tokens(case):
    model = tiny(CASES[case][0])
    eager = run(case, model)
    assert speed.compile_steps(model, backend=BACKEND) is model and speed.is_compiled(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the compiled path ran
        assert same(run(case, model), eager)
    assert speed.is_compiled(model)


def test_compile_unavailable_warns_once_and_stays_eager(monkeypatch):
    model = tiny("llamagen-tiny")
    eager = run("raster", model)

    def broken(*args, **kwargs):
        raise RuntimeError("no dynamo here")
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable") as caught:
        speed.compile_steps(model)
    assert len(caught) == 1 and not speed.is_compiled(model)
    assert torch.equal(run("raster", model), eager)


def test_compile_failure_mid_step_rolls_the_cache_back_and_falls_back_once(monkeypatch):
    """A step that fails to compile after part of it ran (a graph break, then a compile error):
    the KV cache is rolled back, the step reruns eagerly, one warning, the eager tokens."""
    model = tiny("nar-tiny")
    eager = run("neighbor", model)

    def failing_compile(fn, **options):
        def step(*args, **kwargs):
            fn(*args, **kwargs)  # appends to the cache, as a partly run step would
            raise torch._dynamo.exc.InternalTorchDynamoError("simulated compile failure")
        return step
    monkeypatch.setattr(torch, "compile", failing_compile)
    speed.compile_steps(model)
    with pytest.warns(RuntimeWarning, match="torch.compile failed for NAR") as caught:
        tokens = run("neighbor", model)
    assert len(caught) == 1 and not speed.is_compiled(model)
    assert torch.equal(tokens, eager)


def test_compiled_steps_pass_user_errors_through():
    model = speed.compile_steps(tiny("llamagen-tiny"), backend=BACKEND)
    with pytest.raises(ValueError, match="class"):
        model.prefill(torch.tensor([99]))
    assert speed.is_compiled(model)


def test_compile_steps_refuses_a_model_without_steps():
    with pytest.raises(TypeError, match="none of the step methods"):
        speed.compile_steps(torch.nn.Linear(2, 2))


def test_step_methods_derive_from_the_capabilities():
    # The methods compiled are exactly those the protocols mark @forward_pass (no list elsewhere).
    from vargen.samplers import capabilities
    from vargen.samplers.token_flow import TokenFlowDecoding
    protocols = [getattr(capabilities, n) for n in ("RasterDecoding", "NeighborDecoding", "EntityFlow")]
    members = {m for p in [*protocols, TokenFlowDecoding] for m in capabilities.members(p)}
    from vargen.samplers import SAMPLERS
    marked = {m for cls in SAMPLERS.values() for m in capabilities.step_methods(cls.capability)}
    assert set(speed.step_methods()) == marked  # every registered sampler's, and nothing else
    assert {"prefill", "decode", "prefill_features", "decode_features", "neighbor_logits", "velocity",
            "prefill_hidden", "decode_hidden", "head_velocity"} <= marked & members


def test_resolve_dtype():
    assert speed.resolve_dtype("bfloat16") is torch.bfloat16 and speed.resolve_dtype(None) is None
    assert speed.resolve_dtype("float16", "cuda") is torch.float16
    with pytest.raises(ValueError, match="float16 is not offered on CPU"):
        speed.resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="must be one of float32, bfloat16, float16"):
        speed.resolve_dtype("int8")


def test_cli_speed_flags(tmp_path, monkeypatch, capsys):
    """``vargen sample --dtype bfloat16 --compile`` samples (compiling made to fail: one warning,
    eager); ``--dtype float16`` on CPU is a one-line usage error before anything loads."""
    from vargen.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")
    monkeypatch.setattr(torch, "compile", broken)
    out = tmp_path / "grid.png"
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable for NAR"):
        assert main(["sample", "--model", "nar-mnist", "--classes", "3", "--dtype", "bfloat16",
                     "--compile", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", "--model", "nar-mnist", "--classes", "3", "--dtype", "float16",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "float16 is not offered on CPU" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_linears_give_the_same_tokens_and_leave_the_weights_alone(dtype):
    """Prepacking (issue 33) changes the GEMM's weight layout, not what it computes: the same tokens
    for the same seed at the packed row count (a CFG-doubled batch of 2, 4 rows); autograd, other row
    counts and in-place weight changes take the plain path; the state dict is untouched."""
    torch.manual_seed(0)
    model = vargen.create_model("llamagen-tiny").eval().to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = create_sampler("raster", cfg_scale=2.0, top_k=20)
    labels = torch.tensor([1, 7])
    with torch.no_grad():
        plain = sampler(model, labels, SampleRNG(0, 2))
        speed.prepack_linears(model, rows=4)
        assert torch.equal(sampler(model, labels, SampleRNG(0, 2)), plain)
        assert torch.equal(sampler(model, labels[:1], SampleRNG(0, 1)), plain[:1])  # 2 rows (fp32: plain path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    layer = model.output
    x = torch.randn(4, layer.in_features, dtype=dtype, requires_grad=True)
    layer(x).sum().backward()  # autograd on: plain F.linear, gradients flow
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad():
        layer.weight.mul_(2)  # changed in place: the packed copy is stale and is not used
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight))
    layer.to(torch.float64).to(dtype)  # new storage of the same version: the packed copy is stale
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight))
    speed.unpack_linears(model)
    assert "forward" not in vars(layer)


def test_prepacking_leaves_linear_subclasses_alone():
    """A subclass may reshape its output (VAR's SharedAdaLin): only exact nn.Linear is packed."""
    from vargen.models.var_blocks import SharedAdaLin
    model = torch.nn.Sequential(SharedAdaLin(8, 6 * 4), torch.nn.Linear(8, 8))
    speed.prepack_linears(model, rows=2)
    assert "forward" not in vars(model[0]) and "forward" in vars(model[1])
    with torch.no_grad():
        assert model[0](torch.randn(2, 8)).shape == (2, 1, 6, 4)


_FAULTS_SCRIPT = """
import resource, sys, torch
from vargen import speed
applied = speed.keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(4):  # 64 MiB, above glibc's default mmap threshold; the heap settles in a few
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.empty(16 << 20).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="glibc's malloc on Linux")
def test_kept_memory_is_reused_without_page_faults():
    """Eight 64 MiB allocations fault their 16k pages in each time by default; with freed memory
    kept nearly all reuse the pages of those before them (at most one of them faulted here) (counted in a subprocess: the setting is process-wide)."""
    import subprocess
    import sys

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
        applied, count = out.stdout.split()
        return applied, int(count)

    default, kept = faults("default"), faults("keep")
    pages = 8 * (64 << 20) // 4096
    if kept[0] != "True":
        pytest.skip("not glibc: keep_freed_memory does not apply")
    assert default[1] > pages * 9 // 10 and kept[1] < pages // 4, (default, kept)
