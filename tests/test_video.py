"""Playable files: mp4 (H.264, yuv420p) and GIF written atomically, decoded back intact."""
import pytest
import torch

from vargen.cli import check_output, write_samples
from vargen.data import MovingMNIST
from vargen.images import to_uint8
from vargen.video import read_video, video_grid, write_video


def _clip(t=16, h=32, w=48, seed=0):
    """A colour clip with smooth content and a still stretch (frames 4-6 identical)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    frames = []
    for i in range(t):
        k = min(max(i, 4), 6) if 4 <= i <= 6 else i
        frames.append(torch.stack([torch.sin(3 * x + 0.4 * k), torch.cos(2 * y - 0.3 * k), x * y]))
    clip = torch.stack(frames, 1) * 0.9  # [3, T, H, W]
    return clip + 0.02 * torch.randn(clip.shape[:1] + (1,) + clip.shape[2:], generator=g)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_written_file_decodes_to_the_same_frames(tmp_path, suffix):
    clip = _clip()
    path = write_video(clip, tmp_path / f"clip{suffix}")
    assert not list(tmp_path.glob("*.tmp")) and path.stat().st_size > 0
    decoded = read_video(path)
    assert decoded.shape == (3, 16, 32, 48)  # every frame, repeated ones included
    error = (decoded.float() - to_uint8(clip).float()).abs().mean() / 255
    assert error < 8 / 255


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_moving_mnist_clips_round_trip(tmp_path, suffix):
    videos = MovingMNIST("heldout", num_clips=3).videos()  # grey: the GIF palette is exact
    path = write_video(videos[0], tmp_path / f"digit{suffix}")
    decoded = read_video(path)
    assert decoded.shape == (3, 16, 32, 32)
    error = (decoded.float() - to_uint8(videos[0]).float()).abs().mean()
    assert error < (1.0 if suffix == ".gif" else 8.0)


def test_grid_of_clips_odd_sizes_and_scale(tmp_path):
    videos = torch.rand(5, 3, 4, 9, 7) * 2 - 1
    grid = video_grid(videos, nrow=3, padding=2)
    assert grid.shape == (3, 4, 2 + 2 * 11, 2 + 3 * 9)
    assert torch.equal(grid[:, :, 2:11, 2:9], videos[0]) and torch.equal(grid[:, :, 13:22, 2:9], videos[3])
    # An odd-sized clip gets a background column / row so yuv420p can hold it.
    decoded = read_video(write_video(videos[0], tmp_path / "odd.mp4", scale=1))
    assert decoded.shape == (3, 4, 10, 8)
    decoded = read_video(write_video(videos, tmp_path / "grid.gif", nrow=3, scale=2))
    assert decoded.shape == (3, 4, 2 * 24, 2 * 29)
    uint8 = read_video(write_video(to_uint8(videos[:1]), tmp_path / "u8.gif"))
    assert uint8.shape == (3, 4, 9, 7)


def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path):
    clip = _clip(t=4)
    with pytest.raises(ValueError, match=".mp4 or .gif"):
        write_video(clip, tmp_path / "clip.avi")
    with pytest.raises(ValueError, match=r"\[N, C, T, H, W\]"):
        write_video(clip[0], tmp_path / "clip.mp4")
    with pytest.raises(ValueError, match="NaN"):
        write_video(torch.full_like(clip, float("nan")), tmp_path / "clip.mp4")
    with pytest.raises(TypeError, match="uint8"):
        write_video(clip.long(), tmp_path / "clip.mp4")
    assert not list(tmp_path.iterdir())
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot decode"):
        read_video(tmp_path / "junk.mp4")


def test_cli_writer_routes_by_suffix_and_sample_kind(tmp_path):
    videos, images = _clip(t=4)[None].repeat(2, 1, 1, 1, 1), torch.rand(2, 3, 8, 8) * 2 - 1
    assert write_samples(videos, str(tmp_path / "v.mp4"), nrow=2) == "videos"
    assert read_video(tmp_path / "v.mp4").shape == (3, 4, 2 + 34, 2 + 2 * 50)  # one row of two
    assert write_samples(videos, str(tmp_path / "v.gif"), nrow=2) == "videos"
    assert write_samples(images, str(tmp_path / "i.gif"), nrow=2) == "images"  # a still grid
    with pytest.raises(ValueError, match="generates videos"):
        write_samples(videos, str(tmp_path / "v.png"), nrow=2)
    with pytest.raises(ValueError, match="generates images"):
        write_samples(images, str(tmp_path / "i.mp4"), nrow=2)
    check_output("clip.mp4")
    with pytest.raises(ValueError, match="not an image suffix"):
        check_output("clip.avi")
