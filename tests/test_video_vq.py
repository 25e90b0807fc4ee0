"""The 3D-conv VQ video tokenizer: a true T x H x W grid of ids."""
import pytest
import torch

import vargen
from vargen.data import MovingMNIST
from vargen.tokenizers import VideoVQTokenizer
from vargen.tokenizers.vq import VectorQuantizer


@pytest.fixture(scope="module")
def clips():
    return MovingMNIST("train", image_size=16, digit_size=8, num_clips=8).videos()  # [8, 3, 16, 16, 16]


def test_encode_decode_shapes_and_grid(clips):
    tok = vargen.create_model("video-vq-tiny").eval()
    assert tok.is_discrete and tok.vocab_size == 32 and isinstance(tok.quantize, VectorQuantizer)
    ids = tok.encode(clips[:2])
    assert ids.shape == (2, 4, 4, 4) and ids.dtype == torch.int64
    assert tok.token_grid((16, 16, 16)) == (4, 4, 4) == tok.token_grid(clips.shape)
    assert tok.decode(ids).shape == (2, 3, 16, 16, 16)
    assert tok(clips[:2]).shape == clips[:2].shape
    # Per-clip: the ids of a clip do not depend on the batch it is encoded in.
    assert torch.equal(tok.encode(clips[1:2]), ids[1:2])
    shipped = vargen.create_model("video-vq-mnist")
    assert shipped.token_grid((16, 32, 32)) == (4, 8, 8) and shipped.vocab_size == 256


def test_other_downsampling_factors():
    tok = vargen.create_model("video-vq-tiny", downsample=(2, 4, 4))
    x = torch.zeros(1, 3, 8, 16, 16)
    assert tok.encode(x).shape == (1, 4, 4, 4) and tok.decode(tok.encode(x)).shape == x.shape
    with pytest.raises(ValueError, match="powers of 2"):
        vargen.create_model("video-vq-tiny", downsample=(3, 4, 4))


def test_bad_inputs_fail_clearly(clips):
    tok = vargen.create_model("video-vq-tiny").eval()
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\].*add a batch dimension"):
        tok.encode(clips[0])
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        tok.encode(clips[:, :1])
    with pytest.raises(ValueError, match="divisible by"):
        tok.encode(clips[:, :, :10])  # 10 frames
    with pytest.raises(ValueError, match="divisible by"):
        tok.token_grid((16, 18, 16))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        tok.encode((clips[:1] + 1) * 127.5)
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(torch.full_like(clips[:1], float("nan")))
    with pytest.raises(TypeError, match="float"):
        tok.encode(clips[:1].to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, t, h, w\]"):
        tok.decode(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lie in \[0, 32\)"):
        tok.decode(torch.full((1, 4, 4, 4), 32))
    with pytest.raises(TypeError, match="integer"):
        tok.decode(torch.zeros(1, 4, 4, 4))


def test_tiny_fit_loss_falls_and_save_load_is_exact(clips, tmp_path):
    torch.manual_seed(0)
    tok = vargen.create_model("video-vq-tiny").train()
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, logs = tok.training_loss(clips, torch.zeros(len(clips), dtype=torch.long))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert set(logs) >= {"rec_loss", "codebook_loss", "commit_loss", "codebook_usage", "loss"}
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    tok.eval().save_pretrained(tmp_path)
    loaded = VideoVQTokenizer.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.encode(clips), tok.encode(clips))
    ids = tok.encode(clips)
    assert torch.equal(loaded.decode(ids), tok.decode(ids))


def test_reconstruction_metrics(clips):
    from vargen.eval.recon import video_reconstruction_metrics
    from vargen.training.heldout import heldout_metrics
    tok = vargen.create_model("video-vq-tiny")
    labels = torch.arange(4)
    metrics = video_reconstruction_metrics(tok, clips[:4], labels, digit_size=8, batch_size=3)
    assert set(metrics) == {"psnr", "mse", "codes_used", "frame_accuracy"} == set(tok.card_metrics)
    assert 0 < metrics["psnr"] < 60 and 0 <= metrics["frame_accuracy"] <= 1 and tok.training
    assert 1 <= metrics["codes_used"] <= 32
    assert heldout_metrics(tok, "mnist") == {}  # clips only: Moving-MNIST's held-out split
