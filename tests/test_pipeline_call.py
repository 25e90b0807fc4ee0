"""diffusers' call convention on vargen pipelines (issue 16 item 4): ``pipe(...)`` outputs, per-sample
generator lists, save_pretrained -> load_pipeline (folder and offline Hub cache), dtype, refusals."""
import json

import numpy as np
import pytest
import torch

import vargen
from vargen.images import to_uint8
from vargen.pipeline import PIPELINE_INDEX, ImagePipelineOutput, Pipeline, VideoPipelineOutput

from helpers import prefill_hub_cache


def raster_pipeline():
    """Random llamagen-tiny on llamagen-vq-tiny (4 x 4 ids of 64, 32 px), as tests/test_pipeline.py."""
    torch.manual_seed(0)
    generator = vargen.create_model("llamagen-tiny")
    torch.nn.init.normal_(generator.output.weight, std=0.3)
    return Pipeline(vargen.create_model("llamagen-vq-tiny"), generator, "raster",
                    {"cfg_scale": 2.0, "top_k": 16}, name="tiny")


def flow_pipeline():
    """Random xar-tiny (4 x 4 latents of 4 channels in 2 x 2 cells) on mar-kl-tiny (32 px)."""
    torch.manual_seed(0)
    return Pipeline(vargen.create_model("mar-kl-tiny", embed_dim=4), vargen.create_model("xar-tiny"),
                    "flow", {"cfg_scale": 2.0, "num_steps": 3}, name="tiny-flow")


def token_flow_pipeline():
    """Random cont-ar-tiny (4 x 4 latents of 4 channels, 2 head steps) on mar-kl-tiny."""
    torch.manual_seed(0)
    return Pipeline(vargen.create_model("mar-kl-tiny", embed_dim=4), vargen.create_model("cont-ar-tiny"),
                    "token-flow", {"cfg_scale": 2.0, "num_steps": 2}, name="tiny-token-flow")


def video_pipeline():
    """Random nar-video-tiny (2 x 3 x 4 ids) on video-vq-tiny (32 codes, 4 x 4 x 4 per token)."""
    torch.manual_seed(0)
    return Pipeline(vargen.create_model("video-vq-tiny"),
                    vargen.create_model("nar-video-tiny", vocab_size=32), "neighbor", {"cfg_scale": 1.25}, name="tiny-video")


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_shipped_pipeline_outputs_equal_generate():
    pipe = vargen.load_pipeline("xar-mnist")
    pipe.set_progress_bar_config(disable=True)
    pixels = pipe.generate([3], seed=4, num_steps=2)
    out = pipe([3], seed=4, num_inference_steps=2)  # "pil" is the default, as diffusers
    assert isinstance(out, ImagePipelineOutput) and [im.size for im in out.images] == [(32, 32)]
    expected = to_uint8(pixels).permute(0, 2, 3, 1).numpy()  # vargen's uint8 conversion
    assert out.images[0].mode == "RGB" and np.array_equal(np.asarray(out.images[0]), expected[0])
    arr = pipe([3], seed=4, num_inference_steps=2, output_type="np", return_dict=False)[0]
    assert arr.shape == (1, 32, 32, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    assert np.abs(arr * 255 - expected).max() <= 0.5 + 1e-4  # the same pixels, before rounding


def test_flow_pipeline_maps_diffusers_argument_names():
    pipe = flow_pipeline()
    out = pipe([7, 2], num_inference_steps=2, guidance_scale=3.0, seed=1, output_type="pt").images
    assert pipe.last_stats["forward_passes"] == 4 * 2  # 4 cells x num_inference_steps
    assert torch.equal(out, pipe.generate([7, 2], seed=1, num_steps=2, cfg_scale=3.0))
    assert out.shape == (2, 3, 32, 32) and -1 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="pass num_inference_steps or num_steps, not both"):
        pipe([7], num_inference_steps=2, num_steps=3)


def test_generator_list_gives_sample_i_alone_or_in_a_batch():
    pipe = raster_pipeline()
    batch = pipe([1, 2, 3], generator=gens(10, 11, 12), output_type="latent").images  # the ids
    alone = pipe([2], generator=gens(11), output_type="latent").images
    other = pipe([3, 2, 2], generator=gens(12, 11, 99), output_type="latent", batch_size=2).images
    assert torch.equal(alone[0], batch[1]) and torch.equal(other[:2], batch[[2, 1]])
    assert not torch.equal(other[2], batch[1])  # same label, another generator
    one = pipe([2], generator=torch.Generator().manual_seed(11), output_type="latent").images
    assert torch.equal(one, alone)  # a single generator is fine for a single sample
    # seed= is generate's seeding; no seed: torch's global RNG, reproducible by torch.manual_seed
    assert torch.equal(pipe([1, 2], seed=3, output_type="pt").images, pipe.generate([1, 2], seed=3))
    torch.manual_seed(5)
    first = pipe([1, 2], output_type="latent").images
    torch.manual_seed(5)
    assert torch.equal(pipe([1, 2], output_type="latent").images, first)


def test_refusals_name_the_argument():
    pipe = raster_pipeline()
    with pytest.raises(ValueError, match=r"num_inference_steps does not apply to the 'raster' sampler: "
                                         r"it is discrete.*num_steps of the flow, mar, token-flow samplers"):
        pipe([1], num_inference_steps=10)
    with pytest.raises(ValueError, match="num_inference_steps does not apply to the 'sjd' sampler"):
        pipe([1], num_inference_steps=10, sampler="sjd")
    with pytest.raises(ValueError, match=r"generator: one torch.Generator cannot seed 2 samples.*one "
                                         r"per sample.*or seed=int"):
        pipe([1, 2], generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="generator: a list of 3 torch.Generators for 2 class labels"):
        pipe([1, 2], generator=gens(0, 1, 2))
    with pytest.raises(TypeError, match="generator must be a torch.Generator or a list"):
        pipe([1, 2], generator=[0, 1])
    with pytest.raises(ValueError, match="pass generator .* or seed, not both"):
        pipe([1], generator=gens(0), seed=0)
    with pytest.raises(ValueError, match=r"output_type must be one of \('pil', 'np', 'pt', "
                                         r"'latent'\), got 'jpg'"):
        pipe([1], output_type="jpg")
    with pytest.raises(TypeError, match="the 'raster' sampler has no option num_step"):
        pipe([1], num_step=3)  # other keywords are sampler options, checked by name


def test_save_load_round_trip_is_bit_identical(tmp_path):
    pipe = raster_pipeline()
    folder = pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((folder / PIPELINE_INDEX).read_text())
    assert index["tokenizer"] == ["vargen", "VQTokenizer"]
    assert index["transformer"] == ["vargen", "LlamaGen"]
    assert index["sampler"] == "raster" and index["sampler_options"] == {"cfg_scale": 2.0, "top_k": 16}
    assert sorted(p.name for p in folder.iterdir()) == [PIPELINE_INDEX, "tokenizer", "transformer"]
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temporary folder left over
    loaded = vargen.load_pipeline(str(folder))
    assert torch.equal(loaded([1, 5], seed=2, output_type="latent").images,  # the tokens, bit for bit
                       pipe([1, 5], seed=2, output_type="latent").images)
    assert torch.equal(loaded.generate([1, 5], seed=2), pipe.generate([1, 5], seed=2))  # and pixels
    pipe.save_pretrained(folder)  # a saved pipeline may be replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a saved pipeline"):
        pipe.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="apply to registered pipeline names"):
        vargen.load_pipeline(str(folder), generator_weights="x.pt")


def test_killed_save_leaves_nothing(tmp_path, monkeypatch):
    pipe = raster_pipeline()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill in the middle of writing the second model
    monkeypatch.setattr(pipe.transformer, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        pipe.save_pretrained(tmp_path / "pipe")
    assert list(tmp_path.iterdir()) == []


def test_load_from_prefilled_hub_cache_offline(tmp_path, monkeypatch):
    pipe = video_pipeline()
    prefill_hub_cache(tmp_path, "vargen/tiny-pipe", pipe.save_pretrained, monkeypatch)
    loaded = vargen.load_pipeline("vargen/tiny-pipe")
    assert loaded.name == "tiny-video" and loaded.default_sampler == "neighbor"
    assert torch.equal(loaded([4], seed=0, output_type="latent").videos,
                       pipe([4], seed=0, output_type="latent").videos)
    with pytest.raises(FileNotFoundError, match="vargen/not-cached/pipeline.json is not in the local "
                                                "Hugging Face cache"):
        vargen.load_pipeline("vargen/not-cached")
    with pytest.raises(KeyError, match="unknown pipeline 'nar-imaginary'"):
        vargen.load_pipeline("nar-imaginary")


def test_video_pipeline_returns_videos():
    pipe = video_pipeline()
    assert pipe.is_video
    clips = pipe([1, 2], seed=0, output_type="pt")
    assert isinstance(clips, VideoPipelineOutput)
    assert clips.videos.shape == (2, 3, 8, 12, 16)  # N C T H W, as generate
    assert pipe.last_stats["forward_passes"] == 2 + 3 + 4 - 2  # T + H + W - 2
    frames = pipe([1, 2], seed=0).videos  # a list of frame lists, as export_to_video takes
    assert len(frames) == 2 and len(frames[0]) == 8 and frames[0][0].size == (16, 12)
    expected = to_uint8(clips.videos).permute(0, 2, 3, 4, 1).numpy()
    assert all(np.array_equal(np.asarray(f), expected[i, t])
               for i in range(2) for t, f in enumerate(frames[i]))
    arr = pipe([1, 2], seed=0, output_type="np").videos
    assert arr.shape == (2, 8, 12, 16, 3) and 0 <= arr.min() and arr.max() <= 1  # N T H W C


@pytest.mark.parametrize("make", [raster_pipeline, flow_pipeline, token_flow_pipeline])
def test_bfloat16_pipeline_gives_finite_pixels(make, tmp_path):
    make().save_pretrained(tmp_path / "pipe")
    pipe = vargen.load_pipeline(str(tmp_path / "pipe"), torch_dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16 and next(pipe.tokenizer.parameters()).dtype == torch.bfloat16
    images = pipe([0, 9], seed=0, output_type="pt").images
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32 and images.isfinite().all()
    assert pipe.to(torch.float32).dtype == torch.float32 and pipe.to("cpu").device.type == "cpu"
    with pytest.raises(TypeError, match="floating-point"):
        pipe.to(torch.int64)


def test_progress_bar_on_by_default_and_switched_off(capfd):
    pipe = raster_pipeline()
    pipe([1, 2], seed=0)
    assert "sampling tiny" in capfd.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe([1, 2], seed=0)
    assert capfd.readouterr().err == ""
    pipe.generate([1], progress=True)  # generate's own switch wins for its call
    assert "sampling tiny" in capfd.readouterr().err
