"""Bad inputs at every public entry point: each row is refused with a clear error that names the
input, before any work is done, and leaves the output folder as it was.

API rows assert the error type and that the message names the input. CLI rows call the command's
``main(argv)`` in this process and assert exit status 2, one ``prog: error: ...`` line naming the
input, and no traceback; two rows run as subprocesses (each costs a torch import).
"""
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import vargen
from vargen import checks
from vargen.cli import main as vargen_main
from vargen.cli import run_command
from vargen.data import cache
from vargen.data.folder import ImageFolderDataset
from vargen.eval import sample as eval_sample
from vargen.eval.fvd import fvd_from_stats, video_batches, videos_to_uint8
from vargen.eval.inception import InceptionFeatures
from vargen.eval.metrics import compute_metrics, frechet_distance, image_batches, inception_score
from vargen.eval.recon import reconstruction_metrics
from vargen.eval.stats import FeatureStats, load_stats, save_npz, save_stats
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


def _readonly_dir(root: Path) -> Path:
    """A folder this process cannot write in: a chmod 555 folder, or (as root, who writes there
    anyway) a path under /sys, where nobody can create files."""
    folder = root / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return folder
    os.close(fd)
    os.remove(probe)
    return Path("/sys/vargen-readonly")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Input files every row may read (never written by a row: the table checks that)."""
    root = tmp_path_factory.mktemp("assets")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
    save_npz(root / "good.npz", arr_0=images)
    mu, sigma = np.zeros(2048), np.eye(2048)
    save_stats(root / "stats.npz", mu, sigma)
    mu[3] = np.nan
    save_stats(root / "nanstats.npz", mu, sigma)
    save_npz(root / "videos.npz", arr_0=np.zeros((2, 16, 16, 16, 3), np.uint8))
    folder = root / "folder"
    folder.mkdir()
    (folder / "a_not_an_image.png").write_text("this is text, not a PNG")
    for i in range(2):
        Image.fromarray(images[i]).save(folder / f"img{i}.png")
    save_file({"w": torch.zeros(1000)}, str(root / "inception.safetensors"))
    data = (root / "inception.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "existing.txt").write_text("a file, not a folder")
    (root / "existing_dir").mkdir()
    (root / "junk.mp4").write_bytes(b"not a video")
    ids = torch.randint(0, 64, (8, 4, 4), generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    cache.save_token_file(root / "tokens.safetensors", ids, labels)
    cache.save_token_file(root / "big_ids.safetensors", ids + 60, labels)       # llamagen-tiny: 64 codes
    cache.save_token_file(root / "big_labels.safetensors", ids, labels + 5)     # 10 classes
    return SimpleNamespace(root=root, readonly=_readonly_dir(root))


def snapshot(*roots: Path) -> dict:
    """Every file (size, mtime) and folder under ``roots``: a row must leave them as they were."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder"
            for root in roots if root.exists() for p in [root, *root.rglob("*")]}


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


# ------------------------------------------------------------------------------- the CLI rows
# (id, command, argv with {a} = assets folder, {o} = the row's empty output folder, {ro} = a
# read-only folder; text the error line must contain)
SAMPLE = "sample --model nar-mnist --classes 0 --out {o}/s.png"
FID = "fid {a}/good.npz {a}/stats.npz --inception-weights random"
TRAIN = "train --model llamagen-tiny --data {a}/tokens.safetensors --steps 1 --batch-size 4 --no-progress"
EVAL_SAMPLE = "--model nar-mnist --num-samples 2 --batch-size 2 --shard-size 2 --no-progress"
CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")  # a 5th item: marks
CLI = [
    ("sample cfg nan", "vargen", SAMPLE + " --cfg-scale nan", "--cfg-scale"),
    ("sample cfg inf", "vargen", SAMPLE + " --cfg-scale inf", "--cfg-scale"),
    ("sample cfg -1", "vargen", SAMPLE + " --cfg-scale -1", "--cfg-scale"),
    ("sample temperature nan", "vargen", SAMPLE + " --temperature nan", "--temperature"),
    ("sample top-p nan", "vargen", SAMPLE + " --top-p nan", "--top-p"),
    ("sample top-k 2.5", "vargen", SAMPLE + " --top-k 2.5", "--top-k"),
    ("sample num-steps 2.5", "vargen", SAMPLE + " --num-steps 2.5", "--num-steps"),
    ("sample seed 1.5", "vargen", SAMPLE + " --seed 1.5", "--seed"),
    ("sample seed str", "vargen", SAMPLE + " --seed one", "--seed"),
    ("sample classes 10", "vargen", "sample --model nar-mnist --classes 10 --out {o}/s.png", "[0, 9]"),
    ("sample classes -1", "vargen", "sample --model nar-mnist --classes -1 --out {o}/s.png", "[0, 9]"),
    ("sample classes str", "vargen", "sample --model nar-mnist --classes three --out {o}/s.png", "--classes"),
    ("sample per-class huge", "vargen", SAMPLE + " --per-class 100000000", "python -m vargen.eval.sample"),
    ("sample per-class 0", "vargen", SAMPLE + " --per-class 0", "--per-class"),
    ("sample batch-size 0", "vargen", SAMPLE + " --batch-size 0", "--batch-size"),
    ("sample fps nan", "vargen", SAMPLE + " --fps nan", "--fps"),
    ("sample out dir", "vargen", "sample --model nar-mnist --classes 0 --out {a}/existing_dir", "existing_dir"),
    ("sample out read-only", "vargen", "sample --model nar-mnist --classes 0 --out {ro}/s.png", "--out"),
    ("sample out suffix", "vargen", "sample --model nar-mnist --classes 0 --out {o}/s.jpgx", ".jpgx"),
    ("sample unknown model", "vargen", "sample --model no-such --classes 0 --out {o}/s.png", "no-such"),
    ("sample unknown sampler", "vargen", SAMPLE + " --sampler beam", "beam"),
    ("sample device bogus", "vargen", SAMPLE + " --device gpu", "--device"),
    ("sample device cuda", "vargen", SAMPLE + " --device cuda", "no CUDA device", CUDA),
    ("sample device cuda:99", "vargen", SAMPLE + " --device cuda:99", "cuda:99"),  # with or without a GPU
    ("fid nan stats", "vargen", "fid {a}/good.npz {a}/nanstats.npz", "nanstats.npz"),
    ("fid batch-size 0", "vargen", FID + " --batch-size 0", "--batch-size"),
    ("fid limit -1", "vargen", FID + " --limit -1", "--limit"),
    ("fid limit 0", "vargen", FID + " --limit 0", "--limit"),
    ("fid kid-subset-size 1", "vargen", FID + " --kid-subset-size 1", "--kid-subset-size"),
    ("fid json read-only", "vargen", FID + " --json {ro}/fid.json", "--json"),
    ("fid json dir", "vargen", FID + " --json {a}/existing_dir", "existing_dir"),
    ("fid json under a file", "vargen", FID + " --json {a}/existing.txt/fid.json", "existing.txt"),
    ("fid missing samples", "vargen", "fid {a}/missing.npz {a}/stats.npz", "missing.npz"),
    ("fid non-image png", "vargen", "fid {a}/folder {a}/good.npz --inception-weights random", "a_not_an_image.png"),
    ("fid truncated weights", "vargen", "fid {a}/good.npz {a}/stats.npz --inception-weights {a}/truncated.safetensors",
     "truncated.safetensors"),
    ("fid device bogus", "vargen", FID + " --device tpu", "--device"),
    ("fid device cuda", "vargen", FID + " --device cuda", "no CUDA device", CUDA),
    ("ref-stats out read-only", "vargen", "ref-stats mnist:heldout {ro}/ref.npz --inception-weights random", "out"),
    ("ref-stats out dir", "vargen", "ref-stats mnist:heldout {a}/existing_dir --inception-weights random",
     "existing_dir"),
    ("ref-stats limit -1", "vargen", "ref-stats mnist:heldout {o}/ref.npz --limit -1", "--limit"),
    ("fvd batch-size 0", "vargen", "fvd {a}/videos.npz {a}/videos.npz --batch-size 0", "--batch-size"),
    ("fvd num-frames nan", "vargen", "fvd {a}/videos.npz {a}/videos.npz --num-frames nan", "--num-frames"),
    ("fvd json read-only", "vargen", "fvd {a}/videos.npz {a}/videos.npz --json {ro}/fvd.json", "--json"),
    ("recon limit -1", "vargen", "recon --tokenizer vq-mnist --no-fid --limit -1", "--limit"),
    ("recon json dir", "vargen", "recon --tokenizer vq-mnist --no-fid --json {a}/existing_dir", "existing_dir"),
    ("recon image-size 0", "vargen", "recon --tokenizer vq-mnist --no-fid --image-size 0", "--image-size"),
    ("recon non-image png", "vargen", "recon --tokenizer vq-mnist --no-fid --data {a}/folder", "a_not_an_image.png"),
    ("recon device cuda", "vargen", "recon --tokenizer vq-mnist --no-fid --device cuda", "no CUDA device", CUDA),
    ("train ids > vocab", "vargen", "train --model llamagen-tiny --data {a}/big_ids.safetensors --steps 1 "
     "--batch-size 4 --no-progress --out {o}/run", "big_ids.safetensors"),
    ("train labels > classes", "vargen", "train --model llamagen-tiny --data {a}/big_labels.safetensors --steps 1 "
     "--batch-size 4 --no-progress --out {o}/run", "big_labels.safetensors"),
    ("train out file", "vargen", TRAIN + " --out {a}/existing.txt", "existing.txt"),
    ("train out read-only", "vargen", TRAIN + " --out {ro}/run", "--out"),
    ("train lr nan", "vargen", TRAIN + " --lr nan --out {o}/run", "--lr"),
    ("train override nan", "vargen", TRAIN + " --override class_dropout_prob=nan --out {o}/run", "class_dropout_prob"),
    ("train override inf", "vargen", TRAIN + " --override class_dropout_prob=1e999 --out {o}/run", "class_dropout_prob"),
    ("train steps 2.5", "vargen", TRAIN.replace("--steps 1", "--steps 2.5") + " --out {o}/run", "--steps"),
    ("train ema-decay 1", "vargen", TRAIN + " --ema-decay 1 --out {o}/run", "--ema-decay"),
    ("train seed -1", "vargen", TRAIN + " --seed -1 --out {o}/run", "--seed"),
    ("train device bogus", "vargen", TRAIN + " --device gpu --out {o}/run", "--device"),
    ("train device cuda", "vargen", TRAIN + " --device cuda --out {o}/run", "no CUDA device", CUDA),
    ("eval.sample out file", "eval.sample", EVAL_SAMPLE + " --out {a}/existing.txt", "existing.txt"),
    ("eval.sample out read-only", "eval.sample", EVAL_SAMPLE + " --out {ro}/run", "--out"),
    ("eval.sample cfg nan", "eval.sample", EVAL_SAMPLE + " --cfg-scale nan --out {o}/run", "--cfg-scale"),
    ("eval.sample top-k 2.5", "eval.sample", EVAL_SAMPLE + " --top-k 2.5 --out {o}/run", "--top-k"),
    ("eval.sample num-samples 0", "eval.sample", EVAL_SAMPLE.replace("--num-samples 2", "--num-samples 0")
     + " --out {o}/run", "--num-samples"),
    ("eval.sample num-classes 0", "eval.sample", EVAL_SAMPLE + " --num-classes 0 --out {o}/run", "--num-classes"),
]
MAINS = {"vargen": vargen_main, "eval.sample": eval_sample.main}


def _argv(template: str, assets, out: Path) -> list:
    return template.format(a=assets.root, o=out, ro=assets.readonly).split()


@pytest.mark.parametrize("command, template, text", [pytest.param(*row[1:4], id=row[0], marks=row[4:])
                                                     for row in CLI])
def test_cli_refuses(assets, tmp_path, capsys, command, template, text):
    before = snapshot(assets.root, tmp_path)
    status = MAINS[command](_argv(template, assets, tmp_path))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err
    assert "error:" in lines[-1] and text in lines[-1], err
    assert snapshot(assets.root, tmp_path) == before


# ------------------------------------------------------------------------------- beyond the table
def test_an_error_mid_sampling_starts_its_own_line(assets, tmp_path, capsys, monkeypatch):
    """The progress bar is ended before the error line, which is never glued onto it."""
    from vargen.samplers.neighbor import NeighborSampler
    calls = []

    def failing(self, model, labels, rng):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("sampler failed on the second batch")
        return original(self, model, labels, rng)
    original = NeighborSampler.sample
    monkeypatch.setattr(NeighborSampler, "sample", failing)
    before = snapshot(tmp_path)
    status = vargen_main(_argv("sample --model nar-mnist --classes 0 1 --batch-size 1 --out {o}/s.png",
                               assets, tmp_path))
    err = capsys.readouterr().err
    assert status == 2 and len(calls) == 2
    error = [line for line in err.split("\n") if "error:" in line]
    assert error == ["vargen sample: error: sampler failed on the second batch"], err
    assert snapshot(tmp_path) == before


def test_run_command_leaves_bugs_as_tracebacks():
    def bug(args):
        raise AssertionError("a bug, not a user error")
    with pytest.raises(AssertionError):
        run_command(eval_sample.build_parser(), ["--model", "x", "--num-samples", "1", "--out", "y"], bug)


def test_parsing_refuses_what_the_api_refuses():
    parse = checks.cli_number(integer=True, minimum=1)
    assert parse("3") == 3
    for text in ("0", "2.5", "nan", "x"):
        with pytest.raises(Exception, match="integer >= 1"):
            parse(text)
    assert checks.number("x", torch.tensor(2.0)) == 2.0 and checks.number("n", np.int64(3), integer=True) == 3


@pytest.mark.parametrize("argv, text", [
    (["-m", "vargen.cli", "sample", "--model", "nar-mnist", "--classes", "0", "--cfg-scale", "nan"], "--cfg-scale"),
    (["-m", "vargen.eval.sample", "--model", "nar-mnist", "--num-samples", "2", "--out", "{a}/existing.txt"],
     "existing.txt"),
], ids=["vargen sample", "python -m vargen.eval.sample"])
def test_subprocess_one_line_and_status_2(assets, tmp_path, argv, text):
    before = snapshot(assets.root, tmp_path)
    argv = [arg.format(a=assets.root) for arg in argv]
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and text in proc.stderr, proc.stderr
    assert snapshot(assets.root, tmp_path) == before
