"""Video generators: NAR video and its raster baseline on the same trunk (tiny configs), and the
shipped Moving-MNIST pair end to end (passes counted by a hook on the network, batch invariance,
clips in [-1, 1])."""

import pytest
import torch

import vargen
from vargen.samplers import create_sampler

from helpers import count_network_passes, randomised


def test_raster_video_cached_decoding_matches_full_forward():
    model = randomised("raster-video-tiny")
    n = model.config.block_size
    tokens = torch.randint(0, model.vocab_size, (3, *model.token_grid))
    labels = torch.tensor([0, 5, 9])
    with torch.no_grad():
        full = model(tokens, labels)  # [3, N, V], teacher forced
        model.setup_cache(3)
        steps = [model.prefill(labels)]
        flat = tokens.flatten(1)
        for i in range(n - 1):
            steps.append(model.decode(flat[:, i:i + 1], torch.tensor([i]))[:, -1])
        model.clear_cache()
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, sampler, passes", [
    ("nar-video-tiny", "neighbor", lambda t, h, w: t + h + w - 2),
    ("raster-video-tiny", "raster", lambda t, h, w: t * h * w),
])
def test_decoding_passes_counted_on_the_network(name, sampler, passes):
    model = randomised(name)
    calls = count_network_passes(model)
    s = create_sampler(sampler, cfg_scale=2.0)
    tokens = s(model, torch.tensor([1, 2]), vargen.SampleRNG(0, 2))
    assert tokens.shape == (2, *model.token_grid)
    assert len(calls) == s.stats["forward_passes"] == passes(*model.token_grid)


@pytest.mark.parametrize("sampler", ["raster", "sjd"])
def test_raster_video_same_seed_alone_or_in_a_batch(sampler):
    model = randomised("raster-video-tiny")
    s = create_sampler(sampler, cfg_scale=2.0, top_k=16)
    labels = torch.tensor([3, 1, 4])
    batch = s(model, labels, vargen.SampleRNG(5, [0, 1, 2]))
    for i in range(3):
        assert torch.equal(s(model, labels[i:i + 1], vargen.SampleRNG(5, [i]))[0], batch[i])


def test_nar_and_raster_baseline_share_the_trunk():
    """The shipped pair: the same embeddings, positions and six blocks; only the heads differ."""
    nar, raster = (vargen.create_model(n) for n in ("nar-video-mnist", "raster-video-mnist"))
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    nar_keys, raster_keys = shapes(nar), shapes(raster)
    shared = {k: v for k, v in nar_keys.items() if k in raster_keys}
    assert shared == {k: v for k, v in raster_keys.items() if k in nar_keys}
    assert len(nar.layers) == len(raster.layers) == 6
    assert set(raster_keys) - set(shared) == {"norm.weight", "output.weight"}
    assert set(nar_keys) - set(shared) == {f"{p}_{t}.weight" for p in ("norm", "output") for t in "RDB"}
    assert nar.token_grid == raster.token_grid == (4, 8, 8)


def test_raster_video_refuses_a_2d_position_scheme():
    with pytest.raises(ValueError, match="absolute positions"):
        vargen.create_model("raster-video-tiny", position_embedding="rope_2d")


# ------------------------------------------------------------------ the shipped pair, end to end
@pytest.mark.parametrize("name, passes", [("nar-video-mnist", 4 * (8 + 8 - 1)), ("nar-video-mnist-diagonal", 4 + 8 + 8 - 2),
                                          ("raster-video-mnist", 4 * 8 * 8)])
def test_shipped_video_pipeline_generates_clips(name, passes):
    pipe = vargen.load_pipeline(name)
    calls = count_network_passes(pipe.transformer)
    clips = pipe.generate([3, 7], seed=0)
    assert clips.shape == (2, 3, 16, 32, 32)
    assert clips.min() >= -1 and clips.max() <= 1
    assert len(calls) == passes  # one batch of two clips
    # Same ids alone; the 3D-conv decoder's float sums may differ in the last bits with batch size.
    torch.testing.assert_close(pipe.generate([7], seed=0, sample_offset=1)[0], clips[1], atol=1e-5, rtol=0)
    assert not torch.equal(clips[0], clips[1])


def test_sample_cli_writes_a_playable_clip(tmp_path):
    from vargen.cli import main as cli_main
    from vargen.video import read_video
    out = tmp_path / "clip.mp4"
    assert cli_main(["sample", "--model", "nar-video-mnist", "--classes", "3", "--out", str(out)]) == 0
    frames = read_video(out)  # [3, T, H, W] uint8
    assert frames.shape[:2] == (3, 16) and frames.float().std() > 10
