"""demos/bench.py, the benchmark command, and its speculative section: plumbing and pass counts, not
timings (tests never time)."""
import sys
from pathlib import Path

import pytest
import torch

from vargen.samplers import create_sampler
from vargen.seeding import SampleRNG

DEMOS = Path(__file__).resolve().parents[1] / "demos"
sys.path.insert(0, str(DEMOS))

import bench  # noqa: E402
import bench_speculative as spec  # noqa: E402
import bench_worker  # noqa: E402
import official  # noqa: E402


def test_quick_defaults_and_unknown_sections():
    args = bench.parse_args(["--quick"])
    assert (args.size, args.repeats, args.xar_steps) == ("tiny", 2, 10)
    assert args.families == list(bench.FAMILIES)
    assert bench.parse_args([]).size == "b"
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "raster,warp-drive"])


def test_missing_official_checkout_is_skipped_with_a_message(tmp_path, capsys):
    args = bench.parse_args(["--quick", "--sections", "raster,cont-ar", "--official-root", str(tmp_path)])
    jobs = bench.generator_jobs(args)
    assert [(j["family"], j["impl"]) for j in jobs] == [("raster", "vargen"), ("cont-ar", "vargen")]
    out = capsys.readouterr().out
    assert "[raster] official: skipped" in out and "LlamaGen" in out
    assert "[cont-ar] official: skipped" in out
    with pytest.raises(official.OfficialMissing, match="--official-root"):
        official.build("nar", str(tmp_path), {}, {})


def test_vargen_worker_samples_the_family_it_names(monkeypatch):
    """One worker at a micro trunk: the pass count is the family's (256 raster steps, 2n - 1 NAR diagonals)."""
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # a worker's setting, not the test run's
    base = dict(trunk=dict(n_layer=1, dim=32, n_head=2), batch=2, cfg=2.0, xar_cfg=2.7, top_k=0, num_steps=2,
                latent_shape=(2, 2, 2), dtype="float32", device="cpu", seed=0, threads=1, official_root=None)
    rows = {f: bench_worker.worker({**base, "family": f, "impl": "vargen"}) for f in ("raster", "nar")}
    assert rows["raster"]["passes"] == 256 and rows["nar"]["passes"] == 31
    assert all({"seconds", "peak_mib"} <= set(r) for r in rows.values())


def test_same_official_weights_load_strictly_into_vargen(monkeypatch):
    """vargen's side runs the official model's weights through the converter (a stand-in official
    builder here: the official repositories are not part of the test environment)."""
    import vargen
    source = vargen.create_model("llamagen-b", n_layer=1, dim=32, n_head=2)
    official.randomise_zero_heads(source)
    monkeypatch.setattr(official, "build", lambda *a, **k: official.Official(source, None))
    spec = dict(trunk=dict(n_layer=1, dim=32, n_head=2), cfg=2.0, top_k=0, seed=0, device="cpu",
                official_root="somewhere")
    model, _ = bench_worker.vargen_generator("raster", spec, torch.float32)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_update_doc_replaces_only_its_block(tmp_path):
    (a0, a1), (b0, b1) = bench.markers("quick"), bench.markers("b-float32")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"intro\n{a0}\nold\n{a1}\nmiddle\n{b0}\nother\n{b1}\noutro\n")
    bench.update_doc(doc, "quick", "new table")
    assert doc.read_text() == f"intro\n{a0}\nnew table\n{a1}\nmiddle\n{b0}\nother\n{b1}\noutro\n"
    with pytest.raises(ValueError, match="bench:b-bfloat16"):
        bench.update_doc(doc, "b-bfloat16", "x")
    assert bench.parse_args(["--size", "b", "--dtype", "bfloat16"]).block == "b-bfloat16"


def test_update_doc_defaults_to_docs_benchmarks_and_keeps_the_old_flag():
    default = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    assert bench.parse_args([]).update_doc is None
    assert bench.parse_args(["--update-doc", "--quick"]).update_doc == str(default)
    assert bench.parse_args(["--quick", "--update-doc"]).update_doc == str(default)
    assert bench.parse_args(["--update-readme", "README.md"]).update_doc == "README.md"
    assert bench.parse_args(["--update-doc=x.md"]).update_doc == "x.md"


def test_header_command_line_has_no_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    argv = ["--official-root", "/scratch/official", "--quick", "--note", "machine otherwise idle",
            "--update-readme", str(tmp_path / "docs" / "benchmarks.md"), "--markdown=/elsewhere/out/tables.md",
            "--official-root=/scratch/official"]
    line = bench.command_line(bench.parse_args(argv).argv)
    assert line == ("python demos/bench.py --official-root $OFFICIAL --quick --note machine otherwise idle "
                    "--update-readme docs/benchmarks.md --markdown=tables.md --official-root=$OFFICIAL")
    assert bench.command_line(["--official-root", str(tmp_path / "official")]).endswith("--official-root official")
    assert bench.command_line(["--update-doc", "--block", "quick"]).endswith("--update-doc --block quick")


def test_tables_give_ratios_of_minima():
    args = bench.parse_args(["--sections", "raster,nar", "--batch", "4"])
    rows = [dict(family="raster", impl="official", min_s=6.0, median_s=7.0, peak_mib=10, passes=None, runs=2),
            dict(family="raster", impl="vargen", min_s=2.0, median_s=2.0, peak_mib=5, passes=256, runs=2),
            dict(family="nar", impl="vargen", min_s=0.5, median_s=0.5, peak_mib=5, passes=31, runs=2)]
    table = bench.generator_table(rows, args)
    assert "**3.00×** (median 3.50×)" in table
    assert "no official run" in table
    assert "**4.00×**" in table  # NAR vs raster, same trunk
    # the roofline: 1e9 FLOPs at 1 GFLOP/s bind over 256 passes x 1 MB at 1 GB/s; both sides share the floor
    rows[1]["work"] = dict(flops=1e9, weight_bytes=1e6, passes=256)
    args.peaks = dict(flops=1e9, bandwidth=1e9, source="given")
    table = bench.generator_table(rows, args)
    assert "| 1.00 (compute) | 17% |" in table and "| 1.00 (compute) | 50% |" in table


# ----------------------------------------------------------------------------- speculative, text-to-image
ROW_KEYS = {"model", "condition", "impl", "batch", "items", "image_tokens", "forward_passes",
            "forward_passes_per_sample", "seconds", "peak_mib"}


def own_passes(model, conditions) -> dict:
    """Each sampler's own ``stats["forward_passes"]`` per sample, one sample per call (batch 1)."""
    out = {}
    for title, name, opts in spec.candidates():
        sampler = create_sampler(name, **opts)
        out[title] = []
        for i in range(len(conditions)):
            sampler(model, conditions[i:i + 1], SampleRNG(0, [i]))
            out[title].append(sampler.stats["forward_passes"])
    return out


@pytest.mark.parametrize("name", ["t2i-mnist", spec.RELEASE_T2I])
def test_speculative_rows_of_text_models_count_the_samplers_own_passes(name, monkeypatch):
    # the release-length model on a 4x4 grid of 64 codes: the same code path, a test's size
    monkeypatch.setitem(spec.RELEASE_T2I_CONFIG, "grid_size", 4)
    monkeypatch.setitem(spec.RELEASE_T2I_CONFIG, "vocab_size", 64)
    rows = spec.speculative_section(name, batches=(1,), samples=2, repeats=1)
    assert [r["impl"] for r in rows] == [title for title, _, _ in spec.candidates()]
    assert all(ROW_KEYS <= set(r) and r["batch"] == 1 and r["items"] == 2 and len(r["seconds"]) == 1 for r in rows)
    model, conditions, condition = spec.generator(name, 2)
    assert rows[0]["condition"] == condition and conditions.is_floating_point()  # caption features
    passes = own_passes(model, conditions)
    for r in rows:
        assert r["forward_passes"] == sum(passes[r["impl"]]), r["impl"]
        assert r["forward_passes_per_sample"] == sum(passes[r["impl"]]) / 2, r["impl"]
    assert rows[0]["forward_passes_per_sample"] == rows[0]["image_tokens"] == (64 if name == "t2i-mnist" else 16)


def test_release_length_text_model_has_the_release_sequence():
    model, captions, condition = spec.generator(spec.RELEASE_T2I, 2)
    assert (model.config.cls_token_num, tuple(model.token_grid), model.config.vocab_size) == (120, (16, 16), 16384)
    assert captions.shape == (2, 120, 2048) and "16 of 120" in condition
    assert not captions[:, :104].any() and captions[:, 104:].ne(0).all()  # left padded, as released
    assert model.output.weight.any()  # random logits, not a zero head's uniform ones


def test_speculative_table_puts_text_models_beside_the_class_model_at_batch_1(monkeypatch):
    calls = []

    def section(name, batches, samples, repeats, device):
        calls.append((name, tuple(batches)))
        seconds = {"raster": [2.0], "sjd random": [1.0 if name == "t2i-mnist" else 0.5]}
        return [dict(model=name, impl=impl, batch=b, items=samples, seconds=s) for b in batches
                for impl, s in seconds.items()]
    monkeypatch.setattr(spec, "speculative_section", section)
    title, columns, rows = bench.speculative_runner(bench.parse_args(["--quick", "--sections", "speculative"]))
    assert calls == [("llamagen-mnist", (1, 16)), ("t2i-mnist", (1,)), (spec.RELEASE_T2I, (1,))]
    assert "model" in columns and spec.PROMPT in title
    ratios = {(r["model"], r["batch"], r["impl"]): r["speed_up"] for r in rows}  # vs raster of the same model
    assert ratios[("t2i-mnist", 1, "sjd random")] == "2.00×" and ratios[("llamagen-mnist", 16, "sjd random")] == "4.00×"


def test_roofline_counts_the_products_and_weights_of_a_run():
    """FLOPs of one run are the products' (2 m k n each); weights are read once per counted pass;
    the floor is the larger of compute and streaming time and names which binds."""
    import roofline

    from vargen.nn import linear_gelu
    layer = torch.nn.Linear(64, 32, bias=False)

    def run():
        x = torch.randn(4, 64)
        for _ in range(3):  # three passes of 4 rows
            layer(x)
        return {"forward_passes": 3}
    work = roofline.count_work(layer, run)
    assert work == {"flops": 3 * 2 * 4 * 64 * 32, "weight_bytes": 64 * 32 * 4, "kv_bytes": 0.0, "passes": 3}
    assert roofline.floor_seconds(work, {"flops": 1.0, "bandwidth": 1e9}) == (work["flops"], "compute")
    assert roofline.floor_seconds(work, {"flops": 1e12, "bandwidth": 1.0}) == (3 * 64 * 32 * 4, "memory")
    # attention reads its keys and values: 2 x [2, 3, 10, 8] float32
    q, kv = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 10, 8)

    def attend():
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
        return {"forward_passes": 1}
    attention = roofline.count_work(layer, attend)
    assert attention["kv_bytes"] == 2 * kv.numel() * 4 and attention["flops"] == 4 * 2 * 3 * 1 * 10 * 8
    work["kv_bytes"] = 1e9
    assert roofline.floor_seconds(work, {"flops": 1e12, "bandwidth": 1.0})[0] == 3 * 64 * 32 * 4 + 1e9
    # the fused GEMM + GELU that bf16 VAR blocks run (vargen.nn.linear_gelu) counts as its product
    fc = torch.nn.Linear(64, 32).to(torch.bfloat16)

    def fused():
        with torch.no_grad():
            linear_gelu(torch.randn(2, 4, 64, dtype=torch.bfloat16), fc, "tanh")
        return {"forward_passes": 1}
    assert roofline.count_work(fc, fused)["flops"] == 2 * 8 * 64 * 32
    peaks = roofline.measure_peaks(torch.float32, size=128, repeats=1)
    assert peaks["flops"] > 0 and peaks["bandwidth"] > 0 and "measured" in peaks["source"]


def test_worker_reports_the_work_of_its_run_for_the_roofline(monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    spec = dict(trunk=dict(n_layer=1, dim=32, n_head=2), batch=2, cfg=2.0, xar_cfg=2.7, top_k=0, num_steps=2,
                latent_shape=(2, 2, 2), dtype="float32", device="cpu", seed=0, threads=1, official_root=None,
                family="raster", impl="vargen", roofline=True)
    work = bench_worker.worker(spec)["work"]
    model = bench_worker.vargen_generator("raster", spec, torch.float32)[0]
    assert work["passes"] == 256
    assert work["weight_bytes"] == sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()))
    # every pass runs the output head on the 2 x 2 CFG rows at least: 2 * rows * dim * vocab FLOPs
    assert work["flops"] >= 256 * 2 * 4 * model.output.weight.numel()


def test_prepack_adds_a_vargen_row_per_family():
    args = bench.parse_args(["--quick", "--sections", "raster,var", "--prepack"])
    assert [(j["family"], j["impl"]) for j in bench.generator_jobs(args)] == [
        ("raster", "vargen"), ("raster", "vargen-prepacked"), ("var", "vargen"), ("var", "vargen-prepacked")]
