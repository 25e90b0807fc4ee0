"""Bad inputs at every public API entry point: each row is refused with a clear error that names
the input, before any work is done, and leaves the output folder as it was. Rows assert the error
type and that the message names the input; the command lines' rows are in tests/test_bad_cli.py.
"""
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import vargen
from bad_input_assets import assets, snapshot  # noqa: F401,F811 (a fixture)
from vargen import checks
from vargen.data.folder import ImageFolderDataset
from vargen.eval import sample as eval_sample
from vargen.eval.fvd import fvd_from_stats, video_batches, videos_to_uint8
from vargen.eval.inception import InceptionFeatures
from vargen.eval.metrics import compute_metrics, image_batches
from vargen.eval.recon import reconstruction_metrics
from vargen.eval.scores import frechet_distance, inception_score
from vargen.eval.stats import FeatureStats, load_stats
from vargen.hub import WeightsError
from vargen.images import to_uint8
from vargen.samplers import create_sampler
from vargen.seeding import SampleRNG
from vargen.training import TrainConfig, train
from vargen.video import read_video, write_video

NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------- shared inputs
@functools.lru_cache(maxsize=None)
def model(name: str, pretrained: bool = True):
    return vargen.create_model(name, pretrained=pretrained).eval()


@functools.lru_cache(maxsize=None)
def pipeline(name: str = "nar-mnist"):
    return vargen.load_pipeline(name)


@functools.lru_cache(maxsize=None)
def random_inception():
    return InceptionFeatures("random")


def clip(value: float = 0.0, t: int = 4) -> torch.Tensor:
    x = torch.zeros(1, 3, t, 16, 16)
    x[0, 0, 0, 0, 0] = value
    return x


def image(value: float, size: int = 32) -> torch.Tensor:
    x = torch.zeros(1, 3, size, size)
    x[0, 1, 2, 3] = value
    return x


def tiny_train(a, out: Path, **kw) -> TrainConfig:
    base = dict(model="llamagen-tiny", data=str(a.root / "tokens.safetensors"), steps=1, batch_size=4,
                ckpt_every=1, log_every=1, progress=False, out=str(out))
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------- the API rows
# (id, call(assets, out), error type, text the message must contain)
API = [
    # samplers: every numeric option refuses NaN / inf / wrong types, in one shared check
    ("raster cfg_scale nan", lambda a, o: create_sampler("raster", cfg_scale=NAN), ValueError, "cfg_scale"),
    ("raster cfg_scale inf", lambda a, o: create_sampler("raster", cfg_scale=INF), ValueError, "cfg_scale"),
    ("raster cfg_scale str", lambda a, o: create_sampler("raster", cfg_scale="2"), TypeError, "cfg_scale"),
    ("raster temperature nan", lambda a, o: create_sampler("raster", temperature=NAN), ValueError, "temperature"),
    ("raster top_p nan", lambda a, o: create_sampler("raster", top_p=NAN), ValueError, "top_p"),
    ("raster top_k 2.5", lambda a, o: create_sampler("raster", top_k=2.5), TypeError, "top_k"),
    ("raster cfg_interval 1.5", lambda a, o: create_sampler("raster", cfg_interval=1.5), TypeError, "cfg_interval"),
    ("neighbor top_k nan", lambda a, o: create_sampler("neighbor", top_k=NAN), TypeError, "top_k"),
    ("sjd window 2.5", lambda a, o: create_sampler("sjd", window=2.5), TypeError, "window"),
    ("sjd temperature inf", lambda a, o: create_sampler("sjd", temperature=INF), ValueError, "temperature"),
    ("gsd p_threshold nan", lambda a, o: create_sampler("gsd", p_threshold=NAN), ValueError, "p_threshold"),
    ("gsd group_size 1.5", lambda a, o: create_sampler("gsd", group_size=1.5), TypeError, "group_size"),
    ("flow num_steps 2.5", lambda a, o: create_sampler("flow", num_steps=2.5), TypeError, "num_steps"),
    ("flow cfg_scale nan", lambda a, o: create_sampler("flow", cfg_scale=NAN), ValueError, "cfg_scale"),
    ("flow t_min nan", lambda a, o: create_sampler("flow", t_min=NAN), ValueError, "t_min"),
    ("token-flow time_shift nan", lambda a, o: create_sampler("token-flow", time_shift=NAN), ValueError, "time_shift"),
    ("token-flow temperature inf", lambda a, o: create_sampler("token-flow", temperature=INF), ValueError,
     "temperature"),
    ("token-flow num_steps str", lambda a, o: create_sampler("token-flow", num_steps="16"), TypeError, "num_steps"),
    # pipelines: labels, seeds, options
    ("generate cfg_scale nan", lambda a, o: pipeline().generate([0], cfg_scale=NAN), ValueError, "cfg_scale"),
    ("generate cfg_scale inf", lambda a, o: pipeline().generate([0], cfg_scale=INF), ValueError, "cfg_scale"),
    ("generate temperature nan", lambda a, o: pipeline().generate([0], temperature=NAN), ValueError, "temperature"),
    ("generate labels ['3']", lambda a, o: pipeline().generate(["3"]), TypeError, "class_labels"),
    ("generate labels '3'", lambda a, o: pipeline().generate("3"), TypeError, "class_labels"),
    ("generate labels float", lambda a, o: pipeline().generate([1.0]), TypeError, "class_labels"),
    ("generate label 10", lambda a, o: pipeline().generate([10]), ValueError, "[0, 9]"),
    ("generate label -1", lambda a, o: pipeline().generate([-1]), ValueError, "[0, 9]"),
    ("generate seed float", lambda a, o: pipeline().generate([0], seed=1.5), TypeError, "seed"),
    ("generate seed str", lambda a, o: pipeline().generate([0], seed="0"), TypeError, "seed"),
    ("generate seed nan", lambda a, o: pipeline().generate([0], seed=NAN), TypeError, "seed"),
    ("generate num_steps 2.5", lambda a, o: pipeline("xar-mnist").generate([0], num_steps=2.5), TypeError,
     "num_steps"),
    ("generate top_k 2.5", lambda a, o: pipeline().generate([0], top_k=2.5), TypeError, "top_k"),
    ("generate batch_size 0", lambda a, o: pipeline().generate([0], batch_size=0), ValueError, "batch_size"),
    ("SampleRNG seed float", lambda a, o: SampleRNG(1.5, 2), TypeError, "seed"),
    ("eval.sample num_samples 2.5",
     lambda a, o: eval_sample.generate_samples(pipeline(), 2.5, o / "run"), TypeError, "num_samples"),
    # tokenizers: NaN / inf pixels into encode, NaN latents into decode
    ("vq encode nan", lambda a, o: model("vq-mnist").encode(image(NAN)), ValueError, "images"),
    ("vq encode inf", lambda a, o: model("vq-mnist").encode(image(INF)), ValueError, "images"),
    ("vq encode uint8", lambda a, o: model("vq-mnist").encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
     TypeError, "images"),
    ("kl encode nan", lambda a, o: model("kl-mnist").encode(image(NAN)), ValueError, "images"),
    ("kl decode nan", lambda a, o: model("kl-mnist").decode(torch.full((1, model("kl-mnist").latent_channels, 2, 2),
                                                                         NAN)), ValueError, "latents"),
    ("kl decode inf", lambda a, o: model("kl-mnist").decode(torch.full((1, model("kl-mnist").latent_channels, 2, 2),
                                                                         INF)), ValueError, "latents"),
    ("mingtok encode nan", lambda a, o: model("mingtok-mnist").encode(image(NAN)), ValueError, "images"),
    ("mingtok decode nan", lambda a, o: model("mingtok-mnist").decode(
        torch.full((1, model("mingtok-mnist").latent_channels, 8, 8), NAN)), ValueError, "latents"),
    ("mingtok decode_features nan", lambda a, o: model("mingtok-mnist").decode_features(
        torch.full((1, 64, model("mingtok-mnist").config.semantic_dim), NAN), (8, 8)), ValueError, "features"),
    ("video-vq encode nan", lambda a, o: model("video-vq-mnist").encode(clip(NAN, 16).expand(1, 3, 16, 16, 16)
                                                                          .contiguous()), ValueError, "videos"),
    ("larp encode inf", lambda a, o: model("larp-tiny", False).encode(torch.full((1, 3, 4, 16, 16), INF)),
     ValueError, "videos"),
    # evaluation: NaN images, statistics, features, logits; sizes and limits
    ("fid nan images", lambda a, o: compute_metrics(image(NAN).expand(4, 3, 32, 32), a.root / "good.npz",
                                                    extractor=random_inception()), ValueError, "images"),
    ("fid nan statistics file", lambda a, o: load_stats(a.root / "nanstats.npz"), ValueError, "nanstats.npz"),
    ("frechet nan mu", lambda a, o: frechet_distance(np.full(4, NAN), np.eye(4), np.zeros(4), np.eye(4)),
     ValueError, "mu1"),
    ("kid/pr nan features", lambda a, o: FeatureStats(keep=4).update(torch.full((2, 8), NAN)), ValueError,
     "features"),
    ("is nan logits", lambda a, o: inception_score(torch.full((20, 1008), NAN)), ValueError, "logits"),
    ("image_batches limit -1", lambda a, o: list(image_batches(a.root / "good.npz", limit=-1)), ValueError, "limit"),
    ("image_batches batch_size 0", lambda a, o: list(image_batches(a.root / "good.npz", batch_size=0)), ValueError,
     "batch_size"),
    ("folder with a non-image .png", lambda a, o: list(image_batches(a.root / "folder")), ValueError,
     "a_not_an_image.png"),
    ("image dataset non-image .png", lambda a, o: ImageFolderDataset(str(a.root / "folder"), 32)[0], ValueError,
     "a_not_an_image.png"),
    ("to_uint8 nan", lambda a, o: to_uint8(image(NAN)), ValueError, "images"),
    ("recon nan images", lambda a, o: reconstruction_metrics(model("vq-mnist"), image(NAN), fid=False), ValueError,
     "images"),
    ("recon limit -1", lambda a, o: reconstruction_metrics(model("vq-mnist"), image(0.0), fid=False, limit=-1),
     ValueError, "limit"),
    ("inception truncated safetensors", lambda a, o: InceptionFeatures(a.root / "truncated.safetensors"),
     WeightsError, "truncated.safetensors"),
    # video: tensors into FVD / I3D and video files
    ("fvd nan videos", lambda a, o: videos_to_uint8(clip(NAN)), ValueError, "videos"),
    ("fvd nan statistics", lambda a, o: fvd_from_stats(_stats(torch.randn(4, 8)), {"mu": np.full(8, NAN),
                                                                                   "sigma": np.eye(8)}),
     ValueError, "statistics"),
    ("fvd limit 0", lambda a, o: list(video_batches(a.root / "videos.npz", limit=0)), ValueError, "limit"),
    ("write_video nan", lambda a, o: write_video(clip(NAN), o / "clip.mp4"), ValueError, "videos"),
    ("write_video inf", lambda a, o: write_video(clip(INF), o / "clip.mp4"), ValueError, "videos"),
    ("write_video fps nan", lambda a, o: write_video(clip(), o / "clip.mp4", fps=NAN), ValueError, "fps"),
    ("write_video scale 2.5", lambda a, o: write_video(clip(), o / "clip.mp4", scale=2.5), TypeError, "scale"),
    ("read_video junk", lambda a, o: read_video(a.root / "junk.mp4"), ValueError, "junk.mp4"),
    # training: numbers and data checked before a run folder exists
    ("train lr nan", lambda a, o: train(tiny_train(a, o / "run", lr=NAN)), ValueError, "lr"),
    ("train steps 2.5", lambda a, o: train(tiny_train(a, o / "run", steps=2.5)), TypeError, "steps"),
    ("train ids > vocab", lambda a, o: train(tiny_train(a, o / "run", data=str(a.root / "big_ids.safetensors"))),
     ValueError, "big_ids.safetensors"),
    ("train labels > classes", lambda a, o: train(tiny_train(a, o / "run",
                                                             data=str(a.root / "big_labels.safetensors"))),
     ValueError, "big_labels.safetensors"),
    # paths and devices
    ("output_file is a folder", lambda a, o: checks.output_file(a.root / "existing_dir"), IsADirectoryError,
     "existing_dir"),
    ("output_folder is a file", lambda a, o: checks.output_folder(a.root / "existing.txt"), NotADirectoryError,
     "existing.txt"),
    ("output_file read-only", lambda a, o: checks.output_file(a.readonly / "x.png"), PermissionError, "readonly"),
    ("device bogus", lambda a, o: checks.device("gpu"), ValueError, "gpu"),
    ("load_pipeline device cuda:99", lambda a, o: vargen.load_pipeline("nar-mnist", device="cuda:99"), ValueError,
     "cuda:99"),
    ("recon device cuda:99", lambda a, o: reconstruction_metrics(model("vq-mnist"), image(0.0), fid=False,
                                                                 device="cuda:99"), ValueError, "cuda:99"),
]


def _stats(features: torch.Tensor) -> FeatureStats:
    stats = FeatureStats()
    stats.update(features)
    return stats


@pytest.mark.parametrize("call, error, text", [row[1:] for row in API], ids=[row[0] for row in API])
def test_api_refuses(assets, tmp_path, call, error, text):
    before = snapshot(assets.root, tmp_path)
    with pytest.raises(error) as info:
        call(assets, tmp_path)
    assert text in str(info.value), str(info.value)
    assert snapshot(assets.root, tmp_path) == before


def test_parsing_refuses_what_the_api_refuses():
    parse = checks.cli_number(integer=True, minimum=1)
    assert parse("3") == 3
    for text in ("0", "2.5", "nan", "x"):
        with pytest.raises(Exception, match="integer >= 1"):
            parse(text)
    assert checks.number("x", torch.tensor(2.0)) == 2.0 and checks.number("n", np.int64(3), integer=True) == 3
