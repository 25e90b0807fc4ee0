"""Trainer properties: exact resume after a kill, DDP == single process, atomic checkpoints,
loss falls; token cache; digit classifier."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

import vargen
from vargen.cli import main as cli_main
from vargen.data import cache
from vargen.training import CHECKPOINT_NAME, GlobalBatchSampler, TrainConfig, lr_at, train
from vargen import recipes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


class PoolTokenizer(nn.Module):
    """A stand-in discrete tokenizer: 8x8 average pooling quantised to ``levels`` ids (4x4 grid
    for 32 px images, vocab 64). Its ``scale`` buffer makes the fingerprint weight-dependent."""

    def __init__(self, levels: int = 64):
        super().__init__()
        self.levels = levels
        self.register_buffer("scale", torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x.mean(1, keepdim=True), 8)[:, 0]  # [B, 4, 4] in [-1, 1]
        ids = ((pooled * self.scale + 1) / 2 * self.levels).long()
        return ids.clamp(0, self.levels - 1)


def tiny(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(model="llamagen-tiny", out=str(out), data=str(data), steps=12, batch_size=8,
                lr=2e-3, warmup_steps=3, schedule="cosine", ckpt_every=4, log_every=2,
                ema_decay=0.99, progress=False)
    return TrainConfig(**{**base, **kw})


def weights(folder: Path) -> dict:
    return load_file(str(folder / "final" / "model.safetensors"))


def log_column(run: Path, key: str) -> list:
    return [json.loads(line)[key] for line in (run / "log.jsonl").read_text().splitlines()]


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """Random 4x4 token grids (vocab 64) with labels, as a vargen token file."""
    path = tmp_path_factory.mktemp("data") / "tokens.safetensors"
    g = torch.Generator().manual_seed(0)
    cache.save_token_file(path, torch.randint(0, 64, (40, 4, 4), generator=g),
                          torch.randint(0, 10, (40,), generator=g))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokens) -> Path:
    """An uninterrupted 12-step run (class dropout on, so RNG restoring matters)."""
    out = tmp_path_factory.mktemp("reference")
    train(tiny(out, tokens))
    return out


def test_sampler_is_a_pure_function_of_seed_and_step():
    s = GlobalBatchSampler(10, 4, seed=3)
    stream = torch.cat([s.global_batch(i) for i in range(5)])  # 20 = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) == sorted(stream[10:].tolist())
    assert not torch.equal(stream[:10], stream[10:])  # a new permutation each epoch
    assert torch.equal(GlobalBatchSampler(10, 4, seed=3).global_batch(4), s.global_batch(4))
    assert torch.equal(torch.cat([s.local_batch(2, r, 2) for r in range(2)]), s.global_batch(2))
    with pytest.raises(ValueError, match="evenly"):
        s.local_batch(0, 0, 3)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(model="x", out="", lr=1.0, warmup_steps=4, schedule="cosine", steps=14)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(9, cfg) == pytest.approx(0.5) and lr_at(14, cfg) == pytest.approx(0.0)


def resolved(name: str, **kw) -> TrainConfig:
    return TrainConfig(model=name, out="", **kw).resolved(vargen.get_entry(name).recipe)


def test_family_recipes_fill_unset_options():
    llamagen = resolved("llamagen-b")
    assert (llamagen.lr, llamagen.weight_decay, llamagen.betas, llamagen.grad_clip) == \
        (1e-4, 0.05, (0.9, 0.95), 1.0)
    xar = resolved("xar-b", batch_size=2048)
    assert (xar.lr, xar.weight_decay, xar.betas) == (pytest.approx(4e-4), 0.02, (0.9, 0.96))
    assert resolved("llamagen-b", lr=3e-3).lr == 3e-3


def test_recipes_belong_to_entries_not_name_patterns():
    # nar-video-* is not caught by a "nar*" pattern: it trains with LARP_AR's own recipe.
    assert {vargen.get_entry(n).recipe for n in vargen.list_models("nar-video-*")} == {recipes.LARP_AR}
    assert {vargen.get_entry(n).recipe for n in vargen.list_models("nar-*")
            if not n.startswith("nar-video")} == {recipes.NAR}
    video = resolved("nar-video-l", steps=100)
    assert (video.lr, video.schedule, video.min_lr, video.grad_clip, video.ema_decay) == \
        (6e-4, "cosine", pytest.approx(6e-6), 0.0, 0.0)
    assert vargen.get_entry("mar-kl-tiny").recipe == recipes.TOKENIZER  # the family default
    assert vargen.get_entry("digit-classifier-tiny").recipe == recipes.CLASSIFIER
    assert resolved("nar-video-l", schedule="constant", min_lr=0.0).schedule == "constant"


def test_interrupted_run_resumes_to_identical_weights(tmp_path, tokens, reference):
    def crash(step):
        if step == 6:  # checkpoint at step 4: steps 5 and 6 are lost and redone
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, tokens), on_step=crash)
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 4
    assert not (tmp_path / "final").exists()
    train(tiny(tmp_path, tokens))
    assert_same(weights(tmp_path), weights(reference))
    ref = torch.load(reference / CHECKPOINT_NAME, weights_only=True)
    got = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert_same(got["model"], ref["model"])
    assert log_column(tmp_path, "step") == [2, 4, 6, 8, 10, 12]  # lines past the checkpoint were dropped on resume


def test_kept_checkpoints_are_the_run_at_their_steps(tmp_path, tokens, reference):
    train(tiny(tmp_path, tokens, keep_every=8))
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-8.pt"]
    kept = torch.load(tmp_path / "ckpt-8.pt", weights_only=True)
    assert kept["step"] == 8 and kept["ema"].keys() == kept["model"].keys()
    with pytest.raises(ValueError, match="multiple of ckpt_every"):
        train(tiny(tmp_path / "bad", tokens, keep_every=6))


def test_run_checkpoint_loads_the_ema_it_exports(reference):
    """``pretrained=OUT/checkpoint.pt`` gives the same weights as ``OUT/final`` (the EMA)."""
    from vargen.hub import load_from
    from vargen.models import LlamaGen
    config = LlamaGen.from_pretrained(reference / "final").config
    loaded = load_from(LlamaGen, config, reference / CHECKPOINT_NAME).state_dict()
    assert_same(loaded, weights(reference))
    raw = torch.load(reference / CHECKPOINT_NAME, weights_only=True)["model"]
    assert any(not torch.equal(raw[k], loaded[k]) for k in raw)  # EMA, not the raw weights


def test_sigkilled_process_resumes_to_identical_weights(tmp_path, tokens, reference):
    script = textwrap.dedent(f"""
        import os, signal
        from vargen.training import TrainConfig, train
        def kill(step):
            if step == 10:  # a real SIGKILL, after the step-8 checkpoint
                os.kill(os.getpid(), signal.SIGKILL)
        train(TrainConfig(**{dataclasses.asdict(tiny(tmp_path, tokens))!r}), on_step=kill)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=ENV)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 8
    train(tiny(tmp_path, tokens))
    assert_same(weights(tmp_path), weights(reference))


def test_resume_refuses_a_different_run(tmp_path, tokens):
    train(tiny(tmp_path, tokens, steps=2))
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny(tmp_path, tokens, steps=2, batch_size=4))
    # The model card's recipe must describe every step: no lr/schedule change, no cosine re-length.
    with pytest.raises(ValueError, match="'lr'"):
        train(tiny(tmp_path, tokens, steps=2, lr=1e-2))
    with pytest.raises(ValueError, match="'steps'"):
        train(tiny(tmp_path, tokens, steps=4))
    with pytest.raises(ValueError, match="checkpoint is at step 2 > --steps 1"):
        train(tiny(tmp_path, tokens, steps=1))


def test_rerun_of_a_finished_run_keeps_its_loss_and_survives_a_torn_log_line(tmp_path, tokens):
    first = train(tiny(tmp_path, tokens, steps=4))
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 5, "lr": 0.0')  # killed mid-write
    again = train(tiny(tmp_path, tokens, steps=4))
    assert again["loss"] == first["loss"] is not None
    assert f"Final training loss: {first['loss']:.4f}" in (tmp_path / "final" / "README.md").read_text()
    assert log_column(tmp_path, "step") == [2, 4]


def test_classifier_trains_on_an_image_folder_without_a_heldout_split(tmp_path):
    from PIL import Image
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (255 * (label == "b"), 0, i)).save(tmp_path / "imgs" / label / f"{i}.png")
    result = train(tiny(tmp_path / "run", tmp_path / "imgs", model="digit-classifier-tiny", steps=2))
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert not any(k.endswith("_heldout_accuracy") for k in result)


def test_token_file_is_refused_for_image_models(tmp_path, tokens):
    with pytest.raises(ValueError, match="digit-classifier-tiny trains on images"):
        train(tiny(tmp_path, tokens, model="digit-classifier-tiny"))


def test_two_process_ddp_equals_single_process(tmp_path, tokens):
    common = ["--model", "llamagen-tiny", "--override", "class_dropout_prob=0", "--data",
              str(tokens), "--steps", "4", "--batch-size", "8", "--lr", "1e-3", "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "vargen.train", *common,
                           "--out", str(tmp_path / "ddp")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cli_main(["train", *common, "--out", str(tmp_path / "single")]) == 0
    assert_same(weights(tmp_path / "ddp"), weights(tmp_path / "single"), atol=1e-6)
    ddp = torch.load(tmp_path / "ddp" / CHECKPOINT_NAME, weights_only=True)
    assert len(ddp["rng"]) == 2 and ddp["step"] == 4
    assert "2 x CPU" in (tmp_path / "ddp" / "final" / "README.md").read_text()


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, tokens, monkeypatch):
    train(tiny(tmp_path, tokens, steps=4, schedule="constant"))  # constant lr: may be extended
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def torn_save(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        train(tiny(tmp_path, tokens, steps=8, schedule="constant"))
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME, "final", "log.jsonl"]


def test_token_cache_is_written_once_and_keyed_by_weights(tmp_path, monkeypatch):
    tok = PoolTokenizer()
    data = cache.cached_tokens(tok, "mnist", "heldout", cache_dir=tmp_path)
    assert data["tokens"].shape == (1000, 4, 4) and data["tokens"].dtype == torch.int64
    assert len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr(cache, "extract_tokens", lambda *a, **k: pytest.fail("re-extracted"))
    assert torch.equal(cache.cached_tokens(tok, "mnist", "heldout", cache_dir=tmp_path)["tokens"],
                       data["tokens"])
    tok.scale.fill_(0.5)  # new weights: a new cache entry
    with pytest.raises(FileNotFoundError, match="token cache"):
        cache.cached_tokens(tok, "mnist", "heldout", cache_dir=tmp_path, create=False)


def test_loss_falls_on_mnist_token_grids(tmp_path):
    tokens = cache.cached_tokens(PoolTokenizer(), "mnist", "train", cache_dir=tmp_path)
    grids, labels = tokens["tokens"][:256], tokens["labels"][:256]
    path = tmp_path / "mnist-tokens.safetensors"
    cache.save_token_file(path, grids, labels)
    result = train(tiny(tmp_path / "run", path, steps=100, batch_size=32, lr=5e-3, log_every=10,
                        ckpt_every=100, overrides={"class_dropout_prob": 0.0}))
    losses = log_column(tmp_path / "run", "loss")
    assert losses[-1] == pytest.approx(result["loss"]) and losses[-1] < losses[0]
    # Below the unigram entropy: the model uses the class and the preceding tokens.
    p = torch.bincount(grids.flatten(), minlength=64).float() / grids.numel()
    unigram_entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    assert losses[-1] < 0.85 * unigram_entropy, (losses, unigram_entropy)


def test_generator_without_tokens_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--tokenizer"):
        train(TrainConfig(model="llamagen-tiny", out=str(tmp_path), steps=1))


@pytest.mark.skipif("llamagen-vq-tiny" not in vargen.list_models(), reason="no tiny VQ yet")
def test_generator_trains_on_tokens_of_a_trained_tokenizer(tmp_path):
    base = ["--batch-size", "4", "--steps", "2", "--split", "heldout", "--no-progress"]
    assert cli_main(["train", "--model", "llamagen-vq-tiny", *base, "--out", str(tmp_path / "vq")]) == 0
    assert cli_main(["train", "--model", "llamagen-tiny", *base, "--tokenizer", str(tmp_path / "vq" / "final"),
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "gen")]) == 0
    (cached,) = (tmp_path / "cache").iterdir()
    assert cache.load_token_file(cached)["tokens"].shape == (1000, 4, 4)
    card = (tmp_path / "gen" / "final" / "README.md").read_text()
    assert "--split heldout" in card and "tokens from" in card


def test_digit_classifier_api():
    clf = vargen.create_model("digit-classifier")
    assert "digit-classifier" in vargen.list_models(kind="classifier")
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    assert clf(images).shape == (5, 10)
    predicted = clf.eval().predict(images)
    assert clf.accuracy(images, predicted) == 1.0
    assert clf.accuracy(images, (predicted + 1) % 10) == 0.0
    half = torch.where(torch.arange(5) < 2, predicted, (predicted + 1) % 10)
    assert clf.accuracy(images, half) == pytest.approx(2 / 5)
    shifted = clf.augment(images)
    assert shifted.shape == images.shape and torch.isin(shifted, torch.cat([images.flatten(),
                                                                            torch.tensor([-1.0])])).all()
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        clf(torch.zeros(2, 1, 28, 28))
    with pytest.raises(TypeError, match="float"):
        clf(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one label per image"):
        clf.accuracy(images, [0, 1])


@pytest.mark.skipif(not vargen.get_entry("digit-classifier").pretrained, reason="not shipped yet")
def test_shipped_digit_classifier_is_accurate():
    from vargen.data import MNISTDigits
    clf = vargen.create_model("digit-classifier", pretrained=True)
    heldout = MNISTDigits("heldout")
    assert clf.accuracy(heldout.images, heldout.labels) >= 0.98
