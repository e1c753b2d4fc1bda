"""Encoding and decoding of image and video files (PNG/JPEG via Pillow, mp4 via PyAV and decord).

Layouts: an image is ``uint8 (H, W, 3)`` as a numpy array (files) or ``uint8 (3, H, W)`` as a torch
tensor (readers); a video is ``uint8 (F, H, W, 3)`` as a numpy array or ``uint8 (3, F, H, W)`` as a
torch tensor. Video decoding and encoding go through :mod:`mm1d.tokenization.video_io`
(:func:`~mm1d.tokenization.video_io.decode_frames`, :func:`~mm1d.tokenization.video_io.encode_h264`);
PyAV and decord are imported lazily so that ``import mm1d`` stays light.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from mm1d.tokenization.video_io import decode_frames, encode_h264

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def encode_png(image: np.ndarray) -> bytes:
    """Encode ``uint8 (H, W, 3)`` as PNG bytes (lossless, deterministic)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_check_hwc(image)).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 75) -> bytes:
    """Encode ``uint8 (H, W, 3)`` as JPEG bytes at ``quality`` (Pillow's default 4:2:0 subsampling)."""
    from PIL import Image

    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    buf = io.BytesIO()
    Image.fromarray(_check_hwc(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg_roundtrip(image: np.ndarray, quality: int = 75) -> np.ndarray:
    """Compress ``uint8 (H, W, 3)`` to JPEG and decode it again; returns ``uint8 (H, W, 3)``."""
    return decode_image_array(encode_jpeg(image, quality))


def decode_image_array(data: bytes | str | Path) -> np.ndarray:
    """Decode image bytes or a file path to ``uint8 (H, W, 3)`` RGB. Raises on unreadable data."""
    from PIL import Image

    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else str(data)
    with Image.open(src) as im:
        im.load()  # forces a full decode, so truncated files fail here
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def decode_image(data: bytes | str | Path) -> torch.Tensor:
    """Decode image bytes or a file path to a ``uint8 (3, H, W)`` tensor."""
    arr = decode_image_array(data)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (3, H, W)


def encode_mp4(frames: np.ndarray, fps: int = 8, crf: int = 10) -> bytes:
    """Encode ``uint8 (F, H, W, 3)`` as H.264 yuv420p mp4 bytes with PyAV.

    H and W must be even (yuv420p subsamples chroma by 2). A low ``crf`` keeps colours and edges close to
    the source, which the ShapesWorld judge relies on. The bytes are deterministic: one encoder thread, and
    no macroblock tree. With x264's mbtree on, about 1 in 4,000 single-threaded encodes of the same 32 x 32
    clip came out different (up to 11 levels in some pixels). With it off, none did in 42,000 encodes, at
    +0.2 dB PSNR and about 7% more bytes on ShapesWorld clips.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (F, H, W, 3), got {frames.dtype} {frames.shape}")
    f, h, w, _ = frames.shape
    if f < 1 or h % 2 or w % 2:
        raise ValueError(f"mp4 (yuv420p) needs >= 1 frame and even height/width, got F={f} H={h} W={w}")
    buf = io.BytesIO()
    encode_h264(frames, buf, fps, {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"})
    return buf.getvalue()


def frame_indices(total: int, src_fps: float, num_frames: int | None = None, fps: float | None = None) -> list[int]:
    """Which frames to read from a clip of ``total`` frames recorded at ``src_fps``.

    - ``fps`` given: frames at times 0, 1/fps, 2/fps, ... (at most ``num_frames`` of them);
    - only ``num_frames`` given: ``num_frames`` frames spread evenly over the whole clip;
    - neither: every frame.
    """
    if total <= 0:
        raise ValueError("video has no frames")
    if num_frames is not None and num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        step = (src_fps if src_fps > 0 else fps) / fps
        idx = [int(round(i * step)) for i in range(int(np.ceil(total / step)))]
        idx = [i for i in idx if i < total]
        return idx[:num_frames] if num_frames is not None else idx
    if num_frames is not None:
        return np.linspace(0, total - 1, num_frames).round().astype(int).tolist()
    return list(range(total))


def decode_video_array(
    data: bytes | str | Path, num_frames: int | None = None, fps: float | None = None
) -> np.ndarray:
    """Decode an mp4 (bytes or path) to ``uint8 (F, H, W, 3)``; see ``frame_indices``.

    decord reads the frames (PyAV where decord cannot, see :func:`mm1d.tokenization.video_io.decode_frames`).
    """
    return decode_frames(data, lambda total, src_fps: frame_indices(total, src_fps, num_frames, fps))


def decode_video(data: bytes | str | Path, num_frames: int | None = None, fps: float | None = None) -> torch.Tensor:
    """Decode an mp4 (bytes or path) to a ``uint8 (3, F, H, W)`` tensor (channels first, then time)."""
    arr = decode_video_array(data, num_frames, fps)
    return torch.from_numpy(arr).permute(3, 0, 1, 2).contiguous()  # (F, H, W, 3) -> (3, F, H, W)


def _check_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    return image
