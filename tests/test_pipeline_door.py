"""One pipeline door (issue 24 item 4): ``generate`` and ``pipe(...)`` share arguments, defaults and
one check of the class labels (on the host); the network is ``pipe.transformer``; a sampler says
which of its options carry over and the pipeline reads nothing else of it."""
import inspect
import json

import pytest
import torch

import vargen
import vargen.pipeline
from vargen.pipeline import PIPELINE_INDEX, Pipeline
from vargen.samplers import (SAMPLERS, FlowSampler, GSDSampler, Guidance, LogitsFilter, LogitsProcessor,
                             RasterSampler, Sampler, TokenFlowSampler, create_sampler)
from vargen.samplers import base as sampler_base
from vargen.seeding import SampleRNG


def raster_pipeline(sampler="raster", **options):
    """Random llamagen-tiny (10 classes, 4 x 4 ids of 64) on llamagen-vq-tiny, as test_pipeline.py."""
    torch.manual_seed(0)
    transformer = vargen.create_model("llamagen-tiny")
    torch.nn.init.normal_(transformer.output.weight, std=0.3)
    return Pipeline(vargen.create_model("llamagen-vq-tiny"), transformer, sampler,
                    options or {"cfg_scale": 2.0, "top_k": 16}, name="tiny")


def flow_pipeline():
    torch.manual_seed(0)
    return Pipeline(vargen.create_model("mar-kl-tiny", embed_dim=4), vargen.create_model("xar-tiny"),
                    "flow", {"cfg_scale": 2.0, "num_steps": 3}, name="tiny-flow")


# ------------------------------------------------------------------------------ one door
def test_generate_is_the_call_with_output_type_pt():
    pipe = raster_pipeline()
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(pipe.generate([1, 2, 3], seed=4), pipe([1, 2, 3], seed=4, output_type="pt").images)
    # The same defaults: no seed draws one from torch's global RNG in both doors.
    torch.manual_seed(7)
    unseeded = pipe.generate([1, 2])
    torch.manual_seed(7)
    assert torch.equal(pipe([1, 2], output_type="pt").images, unseeded)
    # The same arguments: diffusers' names in generate, sample_offset in the call.
    assert torch.equal(pipe.generate([2], seed=4, sample_offset=1, guidance_scale=3.0),
                       pipe([2], seed=4, sample_offset=1, cfg_scale=3.0, output_type="pt").images)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    same = [torch.Generator().manual_seed(s) for s in (5, 6)]
    assert torch.equal(pipe.generate([3, 4], generator=gens), pipe([3, 4], generator=same, output_type="pt").images)
    with pytest.raises(ValueError, match="sample_offset numbers the samples of seed="):
        pipe.generate([3], generator=[torch.Generator()], sample_offset=2)


def test_flow_steps_by_either_name_in_either_door():
    pipe = flow_pipeline()
    ref = pipe([7], seed=1, num_inference_steps=2, output_type="pt").images
    assert torch.equal(pipe.generate([7], seed=1, num_inference_steps=2), ref)
    assert torch.equal(pipe.generate([7], seed=1, num_steps=2), ref)
    assert pipe.last_stats["forward_passes"] == 4 * 2


def test_progress_bar_default_is_the_pipelines_in_both_doors(capfd):
    pipe = raster_pipeline()
    pipe.generate([1], seed=0)
    assert "sampling tiny" in capfd.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe.generate([1], seed=0)
    pipe([1], seed=0)
    assert capfd.readouterr().err == ""
    pipe([1], seed=0, progress=True)  # a call's own switch wins
    assert "sampling tiny" in capfd.readouterr().err


# ------------------------------------------------------------------------------ labels, once
@pytest.fixture
def label_checks(monkeypatch):
    """Counts of the label check (samplers.base.check_class_labels) and of the network's range check."""
    counts = {"check": 0, "range": 0, "devices": []}
    check = sampler_base.check_class_labels

    def counted(model, labels, **kwargs):
        counts["check"] += 1
        out = check(model, labels, **kwargs)
        counts["devices"].append(out.device.type)
        return out
    monkeypatch.setattr(sampler_base, "check_class_labels", counted)

    def watch(model):
        range_check = model.check_labels

        def counted_range(labels, allow_null=True):
            counts["range"] += 1
            return range_check(labels, allow_null=allow_null)
        monkeypatch.setattr(model, "check_labels", counted_range)
    counts["watch"] = watch
    return counts


@pytest.mark.parametrize("door", ["generate", "call"])
def test_labels_are_checked_once_per_call_on_the_host(label_checks, door):
    pipe = raster_pipeline()
    pipe.set_progress_bar_config(disable=True)
    label_checks["watch"](pipe.transformer)
    run = pipe.generate if door == "generate" else (lambda *a, **k: pipe(*a, output_type="pt", **k).images)
    out = run(torch.tensor([1, 2, 3]), seed=0, batch_size=1)  # three batches, one check
    assert out.shape[0] == 3
    assert (label_checks["check"], label_checks["range"]) == (1, 1)
    assert label_checks["devices"] == ["cpu"]


def test_bad_label_is_refused_before_any_batch_runs(label_checks, monkeypatch):
    pipe = raster_pipeline()
    sampled = []
    monkeypatch.setattr(RasterSampler, "sample", lambda self, *a: sampled.append(1))
    for call in (lambda: pipe.generate([1, 2, 10], seed=0, batch_size=1),
                 lambda: pipe([1, 2, 10], seed=0, batch_size=1)):
        with pytest.raises(ValueError, match=r"class labels must be in \[0, 9\] \(10 classes\); got 10"):
            call()
    assert sampled == [] and label_checks["check"] == 2  # one per call


def test_a_sampler_called_directly_checks_labels_itself(label_checks):
    pipe = raster_pipeline()
    label_checks["watch"](pipe.transformer)
    sampler = create_sampler("raster")
    tokens = sampler(pipe.transformer, torch.tensor([1, 2]), SampleRNG(0, 2))
    assert tokens.shape == (2, 4, 4) and (label_checks["check"], label_checks["range"]) == (1, 1)
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 9\] \(10 classes\); got 10"):
        sampler(pipe.transformer, torch.tensor([10]), SampleRNG(0, 1))
    with pytest.raises(TypeError, match=r"integer class ids of shape \[B\]"):
        sampler(pipe.transformer, torch.tensor([1.0]), SampleRNG(0, 1))
    with pytest.raises(ValueError, match="2 per-sample generators for 1 labels"):
        sampler(pipe.transformer, torch.tensor([1]), SampleRNG(0, 2), labels_checked=True)


class Zeros(Sampler):
    """Tokens of zeros without running the network: what a call reads besides sampling."""

    name = "zeros"

    def sample(self, model, labels, rng):
        self.stats = {"forward_passes": 0}
        return torch.zeros(labels.shape[0], *model.token_grid, dtype=torch.long, device=labels.device)


def count_host_reads(monkeypatch):
    """Every ``.item()`` / ``.tolist()`` / ``int()`` / ``float()`` / ``bool()`` / ``__index__`` of a
    tensor (the reads that sync with a device), with the tensor's device."""
    reads = []
    for method in ("item", "tolist", "__int__", "__float__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            reads.append((_method, self.device.type))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, method, counted)
    return reads


@pytest.mark.parametrize("labels", [[1, 2, 3], torch.tensor([1, 2, 3])], ids=["ints", "cpu-tensor"])
def test_host_labels_are_read_once_by_the_one_check(monkeypatch, labels):
    pipe = raster_pipeline()
    pipe.set_progress_bar_config(disable=True)
    reads = count_host_reads(monkeypatch)
    sampler_base.check_class_labels(pipe.transformer, torch.tensor([1, 2, 3]))
    one_check = list(reads)
    reads.clear()
    out = pipe(labels, seed=0, sampler=Zeros(), output_type="latent", batch_size=1).images
    assert out.shape == (3, 4, 4)
    assert reads == one_check and all(device == "cpu" for _, device in reads), reads


# ------------------------------------------------------------------------------ pipe.transformer
def test_the_network_is_pipe_transformer():
    pipe = raster_pipeline()
    assert isinstance(pipe.transformer, vargen.models.llamagen.LlamaGen)
    with pytest.raises(AttributeError, match=r"pipe\.transformer now .*generator= of pipe\(\.\.\.\) is "
                                             r"the torch\.Generator argument"):
        pipe.generator
    assert not hasattr(pipe, "generator")
    keyword = Pipeline(tokenizer=pipe.tokenizer, transformer=pipe.transformer, sampler="raster")
    assert keyword.transformer is pipe.transformer


def test_a_pipeline_saved_before_the_rename_loads(tmp_path):
    pipe = raster_pipeline()
    folder = tmp_path / "old"  # the layout save_pretrained wrote before: generator/ and "generator"
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    pipe.transformer.save_pretrained(folder / "generator")
    (folder / PIPELINE_INDEX).write_text(json.dumps({
        "_class_name": "Pipeline", "_vargen_version": "0.1.0", "name": "tiny", "sampler": "raster",
        "sampler_options": {"cfg_scale": 2.0, "top_k": 16},
        "tokenizer": ["vargen", "VQTokenizer"], "generator": ["vargen", "LlamaGen"]}))
    loaded = vargen.load_pipeline(str(folder))
    assert loaded.name == "tiny" and loaded.sampler_options == {"cfg_scale": 2.0, "top_k": 16}
    assert torch.equal(loaded([1, 5], seed=2, output_type="latent").images,
                       pipe([1, 5], seed=2, output_type="latent").images)
    # Saving it again writes today's layout.
    new = loaded.save_pretrained(tmp_path / "new")
    assert sorted(p.name for p in new.iterdir()) == [PIPELINE_INDEX, "tokenizer", "transformer"]
    index = json.loads((new / PIPELINE_INDEX).read_text())
    assert index["transformer"] == ["vargen", "LlamaGen"] and "generator" not in index


# ------------------------------------------------------------------------------ declared options
def test_components_declare_their_fields_as_options():
    from dataclasses import fields
    for component in (Guidance, LogitsFilter, LogitsProcessor):
        assert set(component.OPTIONS) == {f.name for f in fields(component)}


def test_samplers_declare_their_target_options():
    assert RasterSampler.distribution_options() == list(LogitsProcessor.OPTIONS)
    assert GSDSampler.distribution_options() == list(LogitsProcessor.OPTIONS)
    assert FlowSampler.distribution_options() == ["cfg_scale", "cfg_schedule"]
    assert TokenFlowSampler.distribution_options() == ["cfg_scale", "cfg_schedule", "temperature"]
    assert "window" in GSDSampler.option_names() and "window" not in GSDSampler.distribution_options()


def test_another_sampler_carries_exactly_the_declared_options():
    options = {"window": 4, "init": "copy-left", "cfg_scale": 2.0, "cfg_schedule": "linear",
               "temperature": 0.9, "top_k": 8, "top_p": 0.95}
    pipe = raster_pipeline("sjd", **options)
    gsd = pipe.make_sampler("gsd")  # takes window and init too, but they are how SJD samples
    assert (gsd.window, gsd.init) == (16, "random")
    logits = gsd.logits
    assert (logits.cfg_scale, logits.cfg_schedule, logits.temperature, logits.top_k, logits.top_p) == \
        (2.0, "linear", 0.9, 8, 0.95)
    raster = pipe.make_sampler("raster", top_k=4)  # a call's options win
    assert (raster.logits.cfg_scale, raster.logits.top_k) == (2.0, 4)
    # A flow default keeps its guidance, not its steps or method; temperature only where declared.
    assert TokenFlowSampler.carried_options({"cfg_scale": 3.0, "num_steps": 2, "method": "euler"},
                                            FlowSampler) == {"cfg_scale": 3.0}
    assert FlowSampler.carried_options({"cfg_scale": 3.0, "temperature": 0.5, "num_steps": 2},
                                       TokenFlowSampler) == {"cfg_scale": 3.0}


def test_the_pipeline_asks_the_sampler_class(monkeypatch):
    class Tempered(RasterSampler):
        """Declares only temperature as defining its target: guidance stays with the pipeline's
        default sampler."""
        name = "tempered"
        target_options = ("temperature",)
    monkeypatch.setitem(SAMPLERS, "tempered", Tempered)
    pipe = raster_pipeline("raster", cfg_scale=2.0, temperature=0.8, top_k=8)
    sampler = pipe.make_sampler("tempered")
    assert (sampler.logits.temperature, sampler.logits.cfg_scale, sampler.logits.top_k) == (0.8, 1.0, 0)
    source = inspect.getsource(vargen.pipeline)
    assert "LogitsProcessor" not in source and "fields(" not in source
