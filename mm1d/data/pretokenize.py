"""Pretokenization: run the frozen text, image and video tokenizers over a source and write token shards.

Samples are numbered 0, 1, ... in source order; sample i goes to shard ``i // samples_per_shard`` and
shard s is written by rank ``s % world_size``, so ranks under the deepspeed launcher write disjoint shards.
A shard whose index exists (with a bin of the recorded size) is skipped, so a re-run only finishes the
missing ones. Samples that cannot be converted (wrong shape, non-finite pixels, too few frames, no
caption) are skipped and counted in the shard index (``skipped_corrupt``).

Stored per sample (see ``mm1d.data.shards``): the caption's text ids, the image's N FlexTok ids, the
video's (T, N) VideoFlexTok ids, the FlexTok ids of the video's first frame (text-image-to-video
conditioning), and optionally the adaptive budget: the smallest candidate k whose reconstruction from
the first k tokens reaches the configured PSNR.

The visual tokenizers only need the small protocol ``VisualTokenizer``, so tests use fakes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mm1d.config import AdaptiveBudgetConfig, PretokenizeConfig
from mm1d.data.shards import shard_done, write_shard
from mm1d.sequence import StoredSample
from mm1d.tokenization.text import TextTokenizer
from mm1d.utils import is_main, print0
from mm1d.utils import rank as env_rank
from mm1d.utils import world_size as env_world_size


class VisualTokenizer(Protocol):
    """What pretokenization needs from FlexTok / VideoFlexTok."""

    def tokenize(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) -> (B, N), or videos (B, 3, F, H, W) -> (B, T, N); values in [-1, 1]."""
        ...

    def detokenize(self, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """(B, k) -> (B, 3, H, W), or (B, T, k) -> (B, 3, F, H, W) (only for adaptive budgets)."""
        ...


@dataclass
class RawSample:
    """One source sample before tokenization.

    Attributes:
        key: unique name in the source.
        caption: text, or None.
        image: float32 (3, H, W) in [-1, 1], or None.
        video: float32 (3, F, H, W) in [-1, 1], or None.
    """

    key: str
    caption: str | None = None
    image: torch.Tensor | None = None
    video: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------


class ShapesSource:
    """ShapesWorld in memory: images 0..num_images-1, then videos 0..num_videos-1 of one split."""

    def __init__(self, cfg: PretokenizeConfig) -> None:
        from mm1d.data.shapes import ShapesWorld

        self.world = ShapesWorld(cfg.shapes, seed=cfg.seed)
        self.split, self.n_img, self.n_vid = cfg.split, cfg.num_images, cfg.num_videos

    def __len__(self) -> int:
        return self.n_img + self.n_vid

    def __getitem__(self, i: int) -> RawSample:
        from mm1d.data.shapes import to_unit_range

        if i < self.n_img:
            arr, _, caption = self.world.image(self.split, i)
            return RawSample(f"{self.split}/image/{i:07d}", caption, image=to_unit_range(arr))  # (3, H, W)
        j = i - self.n_img
        arr, _, caption = self.world.video(self.split, j)
        return RawSample(f"{self.split}/video/{j:07d}", caption, video=to_unit_range(arr))  # (3, F, H, W)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (float input is kept as is)."""
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float()


class ReaderSource:
    """A reader source (``mm1d.data.sources.open_source``: image folders, webdataset tars, HF datasets on
    disk, mp4 files) as an iterable of ``RawSample``. Unreadable files are skipped by the reader and
    counted in ``corrupt``.

    Args:
        path: what ``open_source`` accepts.
        max_corrupt_fraction: the reader fails when a larger share of the items is unreadable.
        max_samples: stop after this many samples (0: all).
        num_frames: frames decoded per video (None: all).
    """

    def __init__(self, path: str, max_corrupt_fraction: float, max_samples: int = 0,
                 num_frames: int | None = None) -> None:
        from mm1d.data.sources import open_source

        self.source = open_source(path, max_corrupt_fraction=max_corrupt_fraction, num_frames=num_frames)
        self.max_samples = max_samples

    @property
    def corrupt(self) -> int:
        return int(self.source.stats["corrupt"])

    def __iter__(self) -> Iterator[RawSample]:
        for i, s in enumerate(self.source):
            if self.max_samples and i >= self.max_samples:
                return
            yield RawSample(
                key=s.key,
                caption=s.text,
                image=None if s.image is None else _unit(s.image),  # (3, H, W)
                video=None if s.video is None else _unit(s.video),  # (3, F, H, W)
            )


# ----------------------------------------------------------------------------------------------------
# Conversion and tokenization
# ----------------------------------------------------------------------------------------------------


def _tokenizer_size(tok: Any) -> int | None:
    size = getattr(tok, "image_size", None)
    if size is None and hasattr(tok, "cfg"):
        size = getattr(tok.cfg, "image_size", None)
    return int(size) if size else None


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """(C, H, W) or (C, F, H, W) -> same with H = W = size (bilinear, antialiased)."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    if x.dim() == 3:
        return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    frames = x.permute(1, 0, 2, 3)  # (F, C, H, W)
    out = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.permute(1, 0, 2, 3).contiguous()  # (C, F, S, S)


class Tokenizers:
    """The frozen tokenizers of one pretokenization run (any visual one may be None)."""

    def __init__(self, text: TextTokenizer, image: VisualTokenizer | None, video: VisualTokenizer | None,
                 device: torch.device | str = "cpu") -> None:
        if image is None and video is None:
            raise ValueError("pretokenization needs an image or a video tokenizer (tokenizers.image / .video)")
        self.text, self.image, self.video, self.device = text, image, video, torch.device(device)
        self.image_size = _tokenizer_size(image) if image is not None else None
        self.video_size = _tokenizer_size(video) if video is not None else None


def _check_pixels(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} holds non-finite values")
    if float(x.min()) < -1.001 or float(x.max()) > 1.001:
        raise ValueError(f"{what} values outside [-1, 1]")


def _convert(raw: RawSample, toks: Tokenizers, cfg: PretokenizeConfig) -> RawSample | None:
    """Validate and resize one sample; None when it carries nothing this run can tokenize."""
    if not raw.caption or not raw.caption.strip():
        raise ValueError("no caption")
    image = video = None
    if raw.image is not None and toks.image is not None:
        if raw.image.dim() != 3 or raw.image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W), got {tuple(raw.image.shape)}")
        _check_pixels(raw.image, "image")
        image = _resize(raw.image, toks.image_size)
    if raw.video is not None and toks.video is not None:
        v = raw.video
        if v.dim() != 4 or v.shape[0] != 3:
            raise ValueError(f"video must be (3, F, H, W), got {tuple(v.shape)}")
        f = cfg.video_frames or 1 + 4 * ((v.shape[1] - 1) // 4)
        if f < 1 or (f - 1) % 4 or v.shape[1] < f:
            raise ValueError(f"video has {v.shape[1]} frames; need {f} (1 + 4m)")
        v = v[:, :f]
        _check_pixels(v, "video")
        video = _resize(v, toks.video_size)
    if image is None and video is None:
        return None
    return RawSample(raw.key, raw.caption.strip(), image, video)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) of tensors in [-1, 1], scaled to [0, 1]: (B, ...) -> (B,)."""
    mse = ((a.float() - b.float()) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def adaptive_budget(tok: VisualTokenizer, x: torch.Tensor, ids: torch.Tensor, acfg: AdaptiveBudgetConfig) -> list[int]:
    """Smallest candidate k whose reconstruction from the first k tokens reaches the threshold (else N).

    The threshold is ``acfg.psnr`` for images and ``acfg.video_psnr`` (when set) for videos.

    Args:
        tok: tokenizer with ``detokenize``.
        x: pixels in [-1, 1], (B, 3, H, W) or (B, 3, F, H, W).
        ids: long (B, N) or (B, T, N), the full tokenization of ``x``.
        acfg: threshold, candidates, decoder settings.

    Returns:
        B budgets in [1, N].
    """
    n = int(ids.shape[-1])
    cands = sorted({k for k in acfg.candidates if 1 <= k <= n}) or [1 << i for i in range(n.bit_length())
                                                                  if (1 << i) <= n]
    if cands[-1] != n:
        cands.append(n)
    threshold = acfg.threshold(video=x.dim() == 5)
    out = [n] * x.shape[0]
    todo = list(range(x.shape[0]))
    for k in cands:
        if not todo or k == n:  # a sample that reaches k = N gets N whatever it decodes to: skip that pass
            break
        # every sample decodes with the same seed, whatever batch it shares
        rec = tok.detokenize(ids[todo, ..., :k], steps=acfg.steps, guidance_scale=acfg.guidance_scale,
                             seed=[acfg.seed] * len(todo))
        ok = (_psnr(rec.cpu(), x[todo].cpu()) >= threshold).tolist()
        for i, passed in zip(list(todo), ok, strict=True):
            if passed:
                out[i] = k
                todo.remove(i)
    return out


def _batched(tok: VisualTokenizer, xs: list[torch.Tensor], bs: int, device: torch.device) -> list[torch.Tensor]:
    """Tokenize a list of same-shaped tensors in batches; returns one long CPU tensor per input."""
    out: list[torch.Tensor] = []
    for i in range(0, len(xs), bs):
        with torch.no_grad():
            ids = tok.tokenize(torch.stack(xs[i : i + bs]).to(device))
        out += list(ids.cpu())
    return out


def _shape_groups(xs: dict[int, torch.Tensor]) -> list[list[int]]:
    """Sample indices grouped by tensor shape (in sorted shape order); each group is tokenized in batches."""
    shapes = sorted({tuple(x.shape) for x in xs.values()})
    return [[i for i, x in xs.items() if tuple(x.shape) == shape] for shape in shapes]


def _tokenize_group(
    tok: VisualTokenizer, xs: list[torch.Tensor], bs: int, device: torch.device, acfg: AdaptiveBudgetConfig
) -> tuple[list[torch.Tensor], list[int]]:
    """Tokenize same-shaped inputs in batches of ``bs``: (ids per input, adaptive budget per input or 0s)."""
    ids = _batched(tok, xs, bs, device)
    if not acfg.enabled:
        return ids, [0] * len(xs)
    ks: list[int] = []
    for j in range(0, len(xs), bs):
        ks += adaptive_budget(tok, torch.stack(xs[j : j + bs]).to(device), torch.stack(ids[j : j + bs]).to(device),
                              acfg)
    return ids, ks


def tokenize_samples(samples: Sequence[RawSample], toks: Tokenizers, cfg: PretokenizeConfig) -> list[StoredSample]:
    """Tokenize converted samples (images batched together, videos batched together)."""
    bs, dev = max(1, cfg.batch_size), toks.device
    out = [StoredSample(text=np.asarray(toks.text.encode(s.caption), dtype=np.int64), key=s.key) for s in samples]
    images = {i: s.image for i, s in enumerate(samples) if s.image is not None}
    videos = {i: s.video for i, s in enumerate(samples) if s.video is not None}
    for group in _shape_groups(images):
        ids, ks = _tokenize_group(toks.image, [images[i] for i in group], bs, dev, cfg.adaptive)
        for i, t, k in zip(group, ids, ks, strict=True):
            out[i].image, out[i].auto_image = t.numpy(), k  # (N,)
    for group in _shape_groups(videos):
        ids, ks = _tokenize_group(toks.video, [videos[i] for i in group], bs, dev, cfg.adaptive)
        for i, t, k in zip(group, ids, ks, strict=True):
            out[i].video, out[i].auto_video = t.numpy(), k  # (T, N)
        if cfg.cond_first_frame and toks.image is not None:
            frames = [_resize(videos[i][:, 0], toks.image_size) for i in group]  # (3, H, W)
            for i, t in zip(group, _batched(toks.image, frames, bs, dev), strict=True):
                out[i].cond = t.numpy()
    return out


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


def _meta(toks: Tokenizers, cfg: PretokenizeConfig) -> dict[str, Any]:
    def info(tok: Any) -> dict[str, Any] | None:
        if tok is None:
            return None
        return {"class": type(tok).__name__, "codebook_size": getattr(tok, "codebook_size", None),
                "num_registers": getattr(tok, "num_registers", None)}

    return {
        "source": cfg.source,
        "split": cfg.split if cfg.source == "shapes" else None,
        "seed": cfg.seed if cfg.source == "shapes" else None,
        "text_vocab_size": toks.text.vocab_size,
        "image_tokenizer": info(toks.image),
        "video_tokenizer": info(toks.video),
        "adaptive": ({"psnr": cfg.adaptive.psnr, "video_psnr": cfg.adaptive.video_psnr, "steps": cfg.adaptive.steps}
                     if cfg.adaptive.enabled else None),
    }


def _chunks(source: Iterable[RawSample] | Sequence[RawSample], per_shard: int, rank: int, world: int,
            out_dir: Path) -> Iterator[tuple[int, list[RawSample] | None]]:
    """(shard index, its raw samples) for this rank's shards; samples None when the shard is done."""
    if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        n = len(source)
        for s in range(rank, math.ceil(n / per_shard), world):
            if shard_done(out_dir, s):
                yield s, None
            else:
                yield s, [source[i] for i in range(s * per_shard, min(n, (s + 1) * per_shard))]
        return
    buf: list[RawSample] = []
    count = shard = 0
    for item in source:  # sequential sources: every rank reads all items and keeps those of its shards
        mine = shard % world == rank
        if mine:
            buf.append(item)
        count += 1
        if count == per_shard:
            if mine:
                yield shard, None if shard_done(out_dir, shard) else buf
            buf, count, shard = [], 0, shard + 1
    if count and shard % world == rank:
        yield shard, None if shard_done(out_dir, shard) else buf


def pretokenize(cfg: PretokenizeConfig, toks: Tokenizers, source: Iterable[RawSample] | Sequence[RawSample],
                rank: int | None = None, world_size: int | None = None) -> dict[str, int]:
    """Write this rank's shards of ``source`` into ``cfg.out_dir``.

    Args:
        cfg: shard size, batch size, adaptive budgets, output directory.
        toks: the frozen tokenizers.
        source: a random-access sequence (ShapesWorld) or an iterable of ``RawSample``.
        rank: default from the environment (deepspeed launcher's RANK).
        world_size: default from the environment.

    Returns:
        Counters for this rank: shards_written, shards_skipped (already done), samples, corrupt (samples
        that could not be converted; also recorded per shard as ``skipped_corrupt``), unreadable (files the
        reader skipped).
    """
    from tqdm import tqdm

    if cfg.samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {cfg.samples_per_shard}")
    rank = env_rank() if rank is None else rank
    world = env_world_size() if world_size is None else world_size
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = _meta(toks, cfg)
    stats = {"shards_written": 0, "shards_skipped": 0, "samples": 0, "corrupt": 0, "unreadable": 0}
    total = None
    if hasattr(source, "__len__"):
        total = len(range(rank, math.ceil(len(source) / cfg.samples_per_shard), world))
    bar = tqdm(total=total, desc=f"pretokenize {out_dir.name}", unit="shard", disable=not is_main())
    for shard, raws in _chunks(source, cfg.samples_per_shard, rank, world, out_dir):
        if raws is None:
            stats["shards_skipped"] += 1
            bar.update(1)
            continue
        ok: list[RawSample] = []
        corrupt = 0
        for raw in raws:
            try:
                conv = _convert(raw, toks, cfg)
            except (ValueError, RuntimeError) as e:
                corrupt += 1
                if corrupt <= 3:
                    print0(f"[pretokenize] skipping {raw.key}: {e}")
                continue
            if conv is not None:
                ok.append(conv)
        stored = tokenize_samples(ok, toks, cfg)
        write_shard(out_dir, shard, stored, meta, skipped=corrupt)
        stats["shards_written"] += 1
        stats["samples"] += len(stored)
        stats["corrupt"] += corrupt
        bar.update(1)
        bar.set_postfix(samples=stats["samples"], corrupt=stats["corrupt"])
    bar.close()
    stats["unreadable"] = int(getattr(source, "corrupt", 0))
    return stats


def load_tokenizers(cfg: PretokenizeConfig) -> Tokenizers:
    """Load the tokenizers named in ``cfg.tokenizers`` (text required; image/video optional).

    Raises:
        ValueError: no text tokenizer, or neither an image nor a video tokenizer.
        FileNotFoundError: a named bundle that does not exist.
    """
    paths = cfg.tokenizers
    if not paths.text:
        raise ValueError("tokenizers.text must name a text tokenizer (a bundle dir holding text.model, or the "
                         "file); train one with tokenizers/train_text.py")
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    image = video = None
    if paths.image:
        from mm1d.tokenization.flextok import FlexTok

        image = FlexTok.from_pretrained(paths.image, device=device)
    if paths.video:
        from mm1d.tokenization.videoflextok import VideoFlexTok

        video = VideoFlexTok.from_pretrained(paths.video, device=device)
    return Tokenizers(TextTokenizer.load(paths.text), image, video, device)


def run_pretokenize(cfg: PretokenizeConfig) -> dict[str, int]:
    """The whole entry point: load tokenizers, open the source, write this rank's shards and a summary
    ``out_dir/pretokenize_rank{R}.json``."""
    import json

    from mm1d.utils import atomic_write_text

    toks = load_tokenizers(cfg)
    if cfg.source == "shapes":
        source: Any = ShapesSource(cfg)
    else:
        source = ReaderSource(cfg.source, cfg.max_corrupt_fraction, cfg.max_samples, cfg.video_frames or None)
    with torch.inference_mode():
        stats = pretokenize(cfg, toks, source)
    r = env_rank()
    atomic_write_text(Path(cfg.out_dir) / f"pretokenize_rank{r}.json", json.dumps(stats, indent=2) + "\n")
    print0(f"[pretokenize] rank {r}: {stats}")
    return stats
