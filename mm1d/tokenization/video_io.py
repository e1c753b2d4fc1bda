"""Reading and writing videos: mp4 through decord (PyAV as fallback), mp4 (PyAV) and GIF (Pillow) out.

Videos travel as ``[3, F, H, W]`` tensors (channels first, then frames), either ``uint8`` in [0, 255] or
float in [-1, 1], the range every tokenizer takes. Batched helpers take ``[B, 3, F, H, W]``.

:func:`decode_frames` and :func:`encode_h264` are the one place that decodes and encodes video files;
:mod:`mm1d.data.media` (in-memory mp4 bytes for datasets) uses them too.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from mm1d.utils import atomic_path

__all__ = [
    "read_video",
    "write_video",
    "video_grid",
    "to_uint8",
    "to_float",
    "sample_frame_indices",
    "trim_frames",
    "decode_frames",
    "encode_h264",
]


def to_float(video: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]; float input is returned as float32 unchanged."""
    if video.dtype == torch.uint8:
        return video.float().div(127.5).sub(1.0)
    return video.float()


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded); uint8 input is returned unchanged."""
    if video.dtype == torch.uint8:
        return video
    return video.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def sample_frame_indices(num_source: int, source_fps: float, fps: float | None) -> list[int]:
    """Indices of the source frames that sample a video of ``num_source`` frames at ``fps``.

    Frame i of the output is the source frame nearest to time ``i / fps``; with ``fps=None`` (or an fps
    not below the source's) every source frame is kept.
    """
    if num_source <= 0:
        return []
    if fps is None or source_fps <= 0 or fps >= source_fps:
        return list(range(num_source))
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    duration = num_source / source_fps
    count = max(1, int(math.floor(duration * fps + 1e-6)))
    idx = [min(num_source - 1, int(round(i * source_fps / fps))) for i in range(count)]
    return idx


def trim_frames(num_frames: int, group: int = 4) -> int:
    """Largest count of the form ``1 + group * m`` that is <= ``num_frames`` (needs at least 1 frame)."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    return 1 + group * ((num_frames - 1) // group)


def _resize(video: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize uint8 ``[3, F, H, W]``: an int centre-crops to a square first, a pair is an exact (H, W)."""
    _, _, h, w = video.shape
    if isinstance(size, int):
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        video = video[:, :, top : top + side, left : left + side]
        out_hw = (size, size)
    else:
        out_hw = (int(size[0]), int(size[1]))
    if tuple(video.shape[-2:]) == out_hw:
        return video
    frames = video.permute(1, 0, 2, 3).float()  # (F, 3, H, W)
    frames = F.interpolate(frames, size=out_hw, mode="bilinear", antialias=True, align_corners=False)
    return frames.round().clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous()  # (3, F, h, w)


def decode_frames(src: bytes | str | Path, select: Callable[[int, float], list[int]]) -> np.ndarray:
    """Decode chosen frames of a video file (a path, or its bytes) to ``uint8 (F, H, W, 3)`` RGB.

    decord opens the video and reads the frames; frames decord cannot copy (RGB rows not 32-byte aligned,
    i.e. some widths that are not a multiple of 32) are decoded by PyAV instead, exactly.

    Args:
        src: a file path or the file's bytes.
        select: ``select(num_source_frames, source_fps) -> indices`` of the frames to decode (in order);
            it may raise a ValueError (e.g. too few frames).

    Returns:
        ``uint8 (len(indices), H, W, 3)``.

    Raises:
        ValueError: the data is not a decodable video, has no frames, or its frames cannot be decoded.
    """
    import decord

    name = f"<{len(src)} bytes>" if isinstance(src, (bytes, bytearray)) else str(src)
    try:
        source = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src)
        reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
        num_source = len(reader)
        source_fps = float(reader.get_avg_fps())
    except Exception as e:  # decord raises its own error types for broken containers
        raise ValueError(f"cannot decode video {name}: it is corrupt or not a video ({e})") from e
    if num_source == 0:
        raise ValueError(f"video {name} has no frames")
    idx = select(num_source, source_fps)
    try:
        return reader.get_batch(idx).asnumpy()  # (F, H, W, 3) uint8
    except Exception as e:
        # decord cannot copy frames whose RGB rows are not 32-byte aligned (widths not a multiple of 32);
        # PyAV decodes those exactly. A file neither can decode is corrupt.
        try:
            return _read_frames_av(src, idx)
        except Exception as e2:
            raise ValueError(f"cannot decode frames of video {name}: it is corrupt ({e}; {e2})") from e2


def _read_frames_av(src: bytes | str | Path, idx: list[int]) -> np.ndarray:
    """Decode the frames ``idx`` (in decode order) of ``src`` with PyAV: ``(len(idx), H, W, 3)`` uint8."""
    import av

    wanted = set(idx)
    frames: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= max(idx):
                break
    missing = wanted - frames.keys()
    if missing:
        raise ValueError(f"frames {sorted(missing)[:5]} could not be decoded")
    return np.stack([frames[i] for i in idx])


def read_video(
    path: str | Path,
    fps: float | None = None,
    num_frames: int | None = None,
    size: int | tuple[int, int] | None = None,
    as_float: bool = False,
    round_to: int | None = None,
) -> torch.Tensor:
    """Decode a video file (mp4 or anything decord reads) into a tensor.

    Args:
        path: the video file.
        fps: sample frames at this rate (nearest source frame); None keeps every frame.
        num_frames: keep the first ``num_frames`` sampled frames; the video must have at least that many.
        size: an int centre-crops to a square and resizes to ``size x size``; ``(H, W)`` resizes exactly.
        as_float: return float32 in [-1, 1] instead of uint8 in [0, 255].
        round_to: trim the frame count down to the form ``1 + round_to * m`` (e.g. 4 for VideoFlexTok).

    Returns:
        ``[3, F, H, W]`` uint8 (or float32 in [-1, 1] when ``as_float``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, or has fewer frames than asked.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")

    def select(num_source: int, source_fps: float) -> list[int]:
        idx = sample_frame_indices(num_source, source_fps, fps)
        if num_frames is not None:
            if num_frames < 1:
                raise ValueError(f"num_frames must be >= 1, got {num_frames}")
            if len(idx) < num_frames:
                raise ValueError(
                    f"video {path} has {len(idx)} frames at fps={fps} (source {num_source} frames at "
                    f"{source_fps:.2f} fps), fewer than the {num_frames} asked for"
                )
            idx = idx[:num_frames]
        if round_to is not None:
            idx = idx[: trim_frames(len(idx), round_to)]
        return idx

    frames = decode_frames(path, select)
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).contiguous()  # (3, F, H, W)
    if size is not None:
        video = _resize(video, size)
    return to_float(video) if as_float else video


def _frames_hwc(video: torch.Tensor) -> np.ndarray:
    """``[3, F, H, W]`` (uint8 or float in [-1, 1]) -> numpy ``(F, H, W, 3)`` uint8."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video of shape [3, F, H, W], got {tuple(video.shape)}")
    return to_uint8(video.cpu()).permute(1, 2, 3, 0).contiguous().numpy()


def write_video(video: torch.Tensor, path: str | Path, fps: float = 8.0) -> Path:
    """Write ``[3, F, H, W]`` (uint8, or float in [-1, 1]) as ``.mp4`` (H.264) or ``.gif``, atomically.

    Odd frame sizes are padded by one pixel (edge colour) for H.264, which needs even sizes.

    Returns:
        The written path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"write_video supports .mp4 and .gif, got {path.name!r}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = _frames_hwc(video)
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            from PIL import Image

            images = [Image.fromarray(f) for f in frames]
            images[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=max(1, int(round(1000.0 / fps))),
                loop=0,
            )
        else:
            _write_mp4(frames, tmp, fps)
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    """H.264 at ``crf`` 18; odd sizes are padded by one edge pixel (yuv420p needs even sizes)."""
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    encode_h264(frames, path, Fraction(fps).limit_denominator(1000), {"crf": "18"})


def encode_h264(
    frames: np.ndarray, dest: str | Path | BinaryIO, rate: int | Fraction, options: dict[str, str]
) -> None:
    """Encode ``uint8 (F, H, W, 3)`` frames (even H and W) as an H.264 yuv420p mp4 with PyAV.

    Args:
        frames: the frames, RGB.
        dest: a file path, or a writable binary file object (e.g. ``io.BytesIO``).
        rate: frame rate of the stream.
        options: libx264 options, e.g. ``{"crf": "18"}``.
    """
    import av
    from av.video.reformatter import Interpolation

    # The RGB -> yuv420p conversion runs here, single-threaded and bit-exact (the encoder's implicit
    # conversion lets swscale pick its thread count).
    exact = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
    _, h, w, _ = frames.shape
    with av.open(str(dest) if isinstance(dest, (str, Path)) else dest, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        # PyAV opens the codec with its own thread_count (0: auto, slice threads), which overrides a "threads"
        # entry in the options: set it on the context, or x264 threads and same-seed bytes differ now and then.
        stream.codec_context.thread_count = int(options.get("threads", 0))
        stream.options = options
        for frame in frames:
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(rgb.reformat(format="yuv420p", interpolation=exact, threads=1)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def video_grid(videos: torch.Tensor, nrow: int = 8, pad: int = 1) -> torch.Tensor:
    """Tile a batch of videos into one video.

    Args:
        videos: ``[N, 3, F, H, W]`` uint8 or float in [-1, 1] (all the same length).
        nrow: videos per row.
        pad: border width in pixels (white).

    Returns:
        ``[3, F, rows*(H+pad)+pad, cols*(W+pad)+pad]`` uint8.
    """
    if videos.dim() != 5 or videos.shape[1] != 3:
        raise ValueError(f"expected videos of shape [N, 3, F, H, W], got {tuple(videos.shape)}")
    videos = to_uint8(videos.cpu())
    n, _, f, h, w = videos.shape
    cols = min(nrow, n)
    rows = (n + cols - 1) // cols
    out = torch.full((3, f, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[:, :, top : top + h, left : left + w] = videos[i]
    return out
