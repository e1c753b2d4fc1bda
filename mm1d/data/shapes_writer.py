"""Write a ShapesWorld split to disk in the same formats as real data.

``python -m mm1d.data.shapes --out DIR --split {train,val,holdout} --num-images N --num-videos M --seed S
[--size 32 --frames 17 --fps 8 --max-objects 2 --shard-size 1000 --crf 10 --workers 1]`` writes::

    DIR/images/000000.png ... + DIR/images/metadata.jsonl   (a Hugging Face imagefolder)
    DIR/videos/000000.mp4 ... + DIR/videos/metadata.jsonl   (H.264 yuv420p, readable by decord)
    DIR/shards/shapes-000000.tar ...                        (webdataset: <key>.png|.mp4, .json, .txt)

Shard keys are ``img000123`` / ``vid000123``; the ``.json`` member holds the metadata row without ``file_name``.

Each metadata row holds ``file_name``, ``caption``, ``kind``, ``split``, ``seed``, ``index``,
``num_objects`` and ``objects`` (the attribute dicts of ``mm1d.data.shapes``); video rows add
``motion``, ``num_frames`` and ``fps``. Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mm1d.config import ShapesConfig
from mm1d.data.media import encode_mp4, encode_png
from mm1d.data.shapes import SPLITS, check_config, sample_image, sample_rng, sample_video
from mm1d.utils import atomic_path, atomic_write_text


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class ShardWriter:
    """Webdataset tar shards ``prefix-000000.tar`` with at most ``shard_size`` samples each."""

    def __init__(self, directory: Path, prefix: str = "shapes", shard_size: int = 1000):
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.directory, self.prefix, self.shard_size = directory, prefix, shard_size
        self.shard_index, self.count = 0, 0
        self._tar: tarfile.TarFile | None = None
        self._ctx: Any = None
        self.paths: list[Path] = []

    def _open(self) -> None:
        path = self.directory / f"{self.prefix}-{self.shard_index:06d}.tar"
        self._ctx = atomic_path(path)
        self._tar = tarfile.open(self._ctx.__enter__(), "w")
        self.paths.append(path)

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._ctx.__exit__(None, None, None)
            self._tar, self._ctx = None, None
            self.shard_index += 1
            self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``members`` maps an extension ('png', 'json', ...) to its bytes."""
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: identical bytes per seed
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1
        if self.count >= self.shard_size:
            self._close()

    def close(self) -> None:
        self._close()

    def abort(self) -> None:
        """Drop the shard being written (its temporary file is removed, nothing is renamed)."""
        if self._tar is not None:
            self._tar.close()
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._tar, self._ctx = None, None


def _encoded(job: tuple[str, ShapesConfig, str, int, int, int]) -> tuple[int, bytes, dict, str]:
    """One sample, drawn and encoded: ``(index, file bytes, attributes, caption)`` (runs in a worker)."""
    kind, cfg, split, seed, crf, index = job
    sampler = sample_image if kind == "image" else sample_video
    array, attrs, caption = sampler(sample_rng(seed, split, kind, index), cfg, split)
    data = encode_png(array) if kind == "image" else encode_mp4(array, fps=cfg.fps, crf=crf)
    return index, data, attrs, caption


def _rows(kind: str, cfg: ShapesConfig, split: str, seed: int, count: int, crf: int,
          pool: Any) -> Iterator[tuple[int, bytes, dict, str]]:
    """The split's samples in index order; drawn and encoded by ``pool`` when given (each depends on its
    index only, so the bytes do not depend on the number of workers)."""
    jobs = ((kind, cfg, split, seed, crf, index) for index in range(count))
    yield from (map(_encoded, jobs) if pool is None else pool.imap(_encoded, jobs, chunksize=32))


def write_split(out: str | Path, split: str, num_images: int, num_videos: int, seed: int,
                cfg: ShapesConfig | None = None, shard_size: int = 1000, crf: int = 10,
                progress: bool = True, workers: int = 1) -> dict[str, int]:
    """Generate and write one split; returns counts ``{"images": N, "videos": M, "shards": K}``.

    ``workers > 1`` draws and encodes samples in that many processes; the files are the same bytes."""
    cfg = cfg or ShapesConfig()
    check_config(cfg, video=num_videos > 0)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if num_images < 0 or num_videos < 0:
        raise ValueError("--num-images and --num-videos must be >= 0")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    shards = ShardWriter(out / "shards", shard_size=shard_size)
    bar = tqdm(total=num_images + num_videos, desc=f"shapes {split}", disable=not progress, unit="sample")
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        for kind, count, folder, ext in (("image", num_images, "images", "png"),
                                         ("video", num_videos, "videos", "mp4")):
            if count == 0:
                continue
            lines = []
            for index, data, attrs, caption in _rows(kind, cfg, split, seed, count, crf, pool):
                name = f"{index:06d}.{ext}"
                _write_bytes(out / folder / name, data)
                row: dict[str, Any] = {"file_name": name, "caption": caption, "kind": kind, "split": split,
                                       "seed": seed, "index": index, "num_objects": len(attrs["objects"]),
                                       "objects": attrs["objects"]}
                if kind == "video":
                    row.update(motion=attrs["objects"][0]["motion"], num_frames=cfg.frames, fps=cfg.fps)
                lines.append(json.dumps(row))
                meta = {k: v for k, v in row.items() if k != "file_name"}
                key = f"{'img' if kind == 'image' else 'vid'}{index:06d}"
                shards.write(key, {ext: data, "json": json.dumps(meta).encode(), "txt": caption.encode()})
                bar.update(1)
            atomic_write_text(out / folder / "metadata.jsonl", "\n".join(lines) + "\n")
        shards.close()
    except BaseException:
        shards.abort()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return {"images": num_images, "videos": num_videos, "shards": len(shards.paths)}


def main(argv: list[str] | None = None) -> None:
    """Command line of ``python -m mm1d.data.shapes``."""
    d = ShapesConfig()
    p = argparse.ArgumentParser(prog="python -m mm1d.data.shapes", description="Write a ShapesWorld split.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--num-images", type=int, default=0)
    p.add_argument("--num-videos", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per video (1 + 4m)")
    p.add_argument("--fps", type=int, default=d.fps)
    p.add_argument("--max-objects", type=int, default=d.max_objects)
    p.add_argument("--holdout", nargs="*", default=None,
                   help="held-out colour+shape combinations, e.g. 'red triangle' 'blue circle'")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per webdataset tar")
    p.add_argument("--crf", type=int, default=10, help="H.264 quality (lower is better)")
    p.add_argument("--workers", type=int, default=1, help="processes that draw and encode samples")
    args = p.parse_args(argv)
    cfg = ShapesConfig(size=args.size, frames=args.frames, fps=args.fps, max_objects=args.max_objects,
                       jitter=d.jitter, holdout=list(args.holdout) if args.holdout is not None else d.holdout)
    try:
        counts = write_split(args.out, args.split, args.num_images, args.num_videos, args.seed, cfg,
                             shard_size=args.shard_size, crf=args.crf, workers=args.workers)
    except ValueError as e:
        p.error(str(e))
    print(json.dumps({"out": str(args.out), "split": args.split, **counts}))


if __name__ == "__main__":
    main()
