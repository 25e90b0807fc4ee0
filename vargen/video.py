"""Videos at the edges: ``[-1, 1]`` clips to uint8 frames, and files a person can play.

``write_video(videos, "clip.mp4")`` writes H.264 in yuv420p (the pixel format every player
decodes; its 2x2 chroma subsampling needs even sides, so odd frames are padded with background at
the right / bottom), ``"clip.gif"`` an endlessly looping GIF. Several clips ``[N, C, T, H, W]``
go into one file as a grid, frame by frame (like ``torchvision.utils.save_image`` for images).
Files are written to a temporary name and renamed, so a killed run leaves no half-written file.

Both formats go through PyAV (``pip install av``: its wheel bundles FFmpeg with libx264, so no
system ffmpeg is needed; ``torchvision.io.write_video`` was removed in torchvision 0.28). GIF
frames are quantised to a 256-colour palette by PIL (exactly, for grey clips) and encoded by
FFmpeg's GIF encoder, which keeps repeated frames (PIL's GIF writer merges identical consecutive
frames into one longer frame, so a decoded clip would come back shorter). GIF delays are whole
centiseconds: 8 fps plays at 1 / 0.13 s.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from vargen import checks
from vargen.hub import atomic_write
from vargen.images import to_uint8

VIDEO_FORMATS = {".mp4": "mp4", ".gif": "gif"}
PathLike = Union[str, Path]


def video_format(path: PathLike) -> str:
    """``"mp4"`` or ``"gif"`` from ``path``'s suffix; anything else is an error (raised before
    any work is done)."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"cannot write a video to {path}: use a {' or '.join(VIDEO_FORMATS)} suffix")
    return VIDEO_FORMATS[suffix]


def video_grid(videos: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """Clips ``[N, C, T, H, W]`` in [-1, 1] -> one clip ``[C, T, H', W']`` holding them in a grid
    of ``nrow`` columns, background (-1) between them."""
    from torchvision.utils import make_grid  # lazy: torchvision costs seconds to import
    n, c, t, h, w = videos.shape
    # make_grid tiles any channel count: fold time into channels so every frame shares the layout.
    grid = make_grid(videos.reshape(n, c * t, h, w), nrow=nrow, padding=padding, pad_value=-1.0)
    return grid.reshape(c, t, *grid.shape[-2:])


def _check_videos(videos: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(videos):
        raise TypeError(f"videos must be a tensor, got {type(videos).__name__}")
    if videos.dim() == 4:
        videos = videos[None]
    if videos.dim() != 5 or videos.shape[1] not in (1, 3) or 0 in videos.shape:
        raise ValueError(f"videos must be [N, C, T, H, W] or [C, T, H, W] with C = 1 or 3, got "
                         f"{tuple(videos.shape)}")
    if videos.dtype != torch.uint8:
        if not torch.is_floating_point(videos):
            raise TypeError(f"videos must be floats in [-1, 1] or uint8, got {videos.dtype}")
        checks.finite("videos", videos)
    return videos


def to_frames(video: torch.Tensor) -> np.ndarray:
    """One clip ``[C, T, H, W]`` (floats in [-1, 1], or uint8) -> uint8 RGB frames ``[T, H, W, 3]``."""
    frames = video if video.dtype == torch.uint8 else to_uint8(video)
    frames = frames.expand(3, -1, -1, -1) if frames.shape[0] == 1 else frames
    return frames.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad ``[T, H, W, 3]`` with black to even H and W (yuv420p needs them)."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def _gif_frame(frame: np.ndarray):
    """``[H, W, 3]`` uint8 -> PyAV ``pal8`` frame: grey frames exactly, colour through PIL's
    median-cut quantiser (no dithering)."""
    import av
    from PIL import Image
    if (frame == frame[..., :1]).all():
        indices, rgb = frame[..., 0], np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)
    else:
        image = Image.fromarray(frame).quantize(256, dither=Image.Dither.NONE)
        indices = np.asarray(image)
        rgb = np.zeros((256, 3), np.uint8)
        used = np.asarray(image.getpalette("RGB"), np.uint8).reshape(-1, 3)[:256]
        rgb[:len(used)] = used
    palette = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], 1)  # PyAV wants ARGB
    return av.VideoFrame.from_ndarray((np.ascontiguousarray(indices), palette), format="pal8")


def _encode(frames: np.ndarray, path: str, fmt: str, fps: float, crf: int) -> None:
    import av
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(path, "w", format=fmt) as container:
        if fmt == "mp4":
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt, stream.options = "yuv420p", {"crf": str(crf)}
            frames = _even(frames)
        else:
            stream = container.add_stream("gif", rate=rate)
            stream.pix_fmt = "pal8"
        stream.height, stream.width = frames.shape[1:3]
        for frame in frames:
            vf = (av.VideoFrame.from_ndarray(frame, format="rgb24") if fmt == "mp4"
                  else _gif_frame(frame))
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)


def write_video(videos: torch.Tensor, path: PathLike, fps: float = 8.0, nrow: Optional[int] = None,
                scale: int = 1, crf: int = 15) -> Path:
    """Write clips to ``path`` (``.mp4`` or ``.gif``), atomically.

    ``videos``: one clip ``[C, T, H, W]`` or several ``[N, C, T, H, W]`` (a grid of ``nrow``
    columns, default ``min(N, 8)``), floats in [-1, 1] or uint8, C = 1 or 3. ``scale`` enlarges
    every frame by an integer factor (nearest neighbour), e.g. for 32x32 clips; ``crf`` is
    libx264's quality (0 lossless luma, 23 its default; mp4 only).
    """
    fmt = video_format(path)
    checks.number("fps", fps, above=0)
    checks.number("scale", scale, minimum=1, integer=True)
    checks.number("crf", crf, minimum=0, maximum=51, integer=True)
    checks.number("nrow", nrow, minimum=1, integer=True, optional=True)
    videos = _check_videos(videos)
    if len(videos) > 1:
        floats = videos.float() / 127.5 - 1 if videos.dtype == torch.uint8 else videos.float()
        video = video_grid(floats.clamp(-1, 1), nrow=nrow or min(len(videos), 8))
    else:
        video = videos[0]
    frames = to_frames(video)
    if scale > 1:
        frames = frames.repeat(int(scale), axis=1).repeat(int(scale), axis=2)
    atomic_write(Path(path), lambda tmp: _encode(frames, tmp, fmt, fps, crf))
    return Path(path)


def read_video(path: PathLike) -> torch.Tensor:
    """Decode every frame of a video file -> uint8 ``[3, T, H, W]`` (RGB)."""
    import av
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode {path}: {e}") from e
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).contiguous()
