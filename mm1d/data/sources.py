"""Readers for raw data: image/video folders, webdataset tars, Hugging Face datasets on disk, mp4 files.

Every reader yields the same ``Sample``:

- ``text``: the caption (or None);
- ``image``: ``uint8 (3, H, W)`` tensor (or None);
- ``video``: ``uint8 (3, F, H, W)`` tensor, channels first then time, like the video tokenizer's input
  without the batch axis (or None);
- ``metadata``: everything else known about the sample (e.g. ShapesWorld attributes);
- ``key``: a name unique within the source.

Videos are decoded with decord; ``num_frames`` and ``fps`` choose frames (``media.frame_indices``).

Corrupt input: a file (or tar member, or row) that cannot be read is skipped and counted in
``source.stats``; the first one is logged as a warning. When more than ``max_corrupt_fraction`` of the
samples seen so far are corrupt (checked once ``min_samples`` have been seen, and again at the end of
every pass), the reader raises ``CorruptDataError`` naming the source and the counts.

``open_source(path)`` picks the reader from what is on disk (see its docstring).
"""

from __future__ import annotations

import glob
import json
import logging
import re
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mm1d.data.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, decode_image, decode_video

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("caption", "text", "prompt")


@dataclass
class Sample:
    """One sample from any source. Shapes: image (3, H, W) uint8; video (3, F, H, W) uint8."""

    key: str
    text: str | None = None
    image: torch.Tensor | None = None
    video: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class CorruptDataError(RuntimeError):
    """Too large a share of a source could not be read."""


class Source(ABC):
    """Base class: iterate to get ``Sample``s; ``stats`` counts good and corrupt items.

    Args:
        name: shown in log lines and errors.
        max_corrupt_fraction: the most corrupt share tolerated.
        min_samples: how many items must be seen before the share is checked mid-pass.
        num_frames, fps: frame sampling for videos (see ``media.frame_indices``).
    """

    def __init__(self, name: str, max_corrupt_fraction: float = 0.05, min_samples: int = 50,
                 num_frames: int | None = None, fps: float | None = None):
        if not 0.0 <= max_corrupt_fraction <= 1.0:
            raise ValueError(f"max_corrupt_fraction must be in [0, 1], got {max_corrupt_fraction}")
        self.name = name
        self.max_corrupt_fraction = max_corrupt_fraction
        self.min_samples = min_samples
        self.num_frames, self.fps = num_frames, fps
        self._counts = {"seen": 0, "ok": 0, "corrupt": 0}
        self._warned = False

    @property
    def stats(self) -> dict[str, int]:
        """``{"seen", "ok", "corrupt"}`` counted over everything read so far."""
        return dict(self._counts)

    # -- bookkeeping shared by all readers --
    def _good(self) -> None:
        self._counts["seen"] += 1
        self._counts["ok"] += 1

    def _bad(self, what: str, err: BaseException) -> None:
        self._counts["seen"] += 1
        self._counts["corrupt"] += 1
        if not self._warned:
            logger.warning("%s: skipping unreadable %s (%s: %s); further corrupt items are counted in "
                           "source.stats without a log line", self.name, what, type(err).__name__, err)
            self._warned = True
        if self.stats["seen"] >= self.min_samples:
            self._check()

    def _check(self) -> None:
        seen, bad = self.stats["seen"], self.stats["corrupt"]
        if seen and bad / seen > self.max_corrupt_fraction:
            raise CorruptDataError(
                f"{self.name}: {bad} of {seen} items are corrupt ({bad / seen:.1%}), more than the allowed "
                f"{self.max_corrupt_fraction:.1%}; fix the data or raise max_corrupt_fraction"
            )

    def _decode_video(self, data: bytes | str | Path) -> torch.Tensor:
        return decode_video(data, self.num_frames, self.fps)

    @abstractmethod
    def _iter(self) -> Iterator[Sample]:
        """Yield the samples of one pass, calling ``_good``/``_bad`` for every item."""

    def __iter__(self) -> Iterator[Sample]:
        yield from self._iter()
        self._check()


def _text_of(meta: dict[str, Any]) -> str | None:
    for name in TEXT_FIELDS:
        if isinstance(meta.get(name), str):
            return meta[name]
    return None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


class FolderSource(Source):
    """A folder with ``metadata.jsonl`` (Hugging Face imagefolder layout: ``file_name`` + fields), or a bare
    folder of image/video files (sorted, no text). Rows naming an image give ``image``, rows naming a
    video give ``video``; the caption comes from ``caption``/``text``/``prompt``."""

    def __init__(self, root: str | Path, **kwargs: Any):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder source not found: {self.root}")
        super().__init__(str(self.root), **kwargs)

    def _rows(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        meta = self.root / "metadata.jsonl"
        if not meta.is_file():
            files = sorted(p.name for p in self.root.iterdir() if _is_image(p.name) or _is_video(p.name))
            for i, name in enumerate(files):
                yield i, {"file_name": name}, name
            return
        with meta.open() as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or "file_name" not in row:
                        raise ValueError("row has no 'file_name'")
                except ValueError as e:
                    self._bad(f"metadata line {i + 1}", e)
                    continue
                yield i, row, str(row["file_name"])

    def _iter(self) -> Iterator[Sample]:
        for _, row, name in self._rows():
            assert row is not None
            path = self.root / name
            try:
                if _is_video(name):
                    image, video = None, self._decode_video(path)
                else:
                    image, video = decode_image(path), None
            except Exception as e:  # any decoder failure means an unreadable file
                self._bad(str(path), e)
                continue
            self._good()
            meta = {k: v for k, v in row.items() if k != "file_name"}
            yield Sample(key=Path(name).stem, text=_text_of(meta), image=image, video=video, metadata=meta)


def expand_braces(spec: str) -> list[str]:
    """``shapes-{000000..000002}.tar`` -> the three names (webdataset brace notation, zero padding kept)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if not m:
        return [spec]
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    out = []
    for i in range(lo, hi + 1):
        out.extend(expand_braces(spec[: m.start()] + str(i).zfill(width) + spec[m.end():]))
    return out


class WebDatasetSource(Source):
    """Webdataset tar shards: members ``<key>.<ext>`` grouped by key, in order.

    ``png/jpg/...`` -> image, ``mp4/...`` -> video, ``txt`` -> text, ``json`` -> metadata, any other
    extension -> ``metadata[ext]`` as text. A sample with an unreadable member is skipped; a shard that
    breaks off (truncated tar) counts one corrupt item and reading moves on to the next shard.
    """

    def __init__(self, shards: str | Path | list[str | Path], **kwargs: Any):
        self.shards = resolve_shards(shards)
        super().__init__(str(shards) if not isinstance(shards, list) else f"{len(self.shards)} shards", **kwargs)

    def _samples(self, tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
        key, members = None, {}
        for info in tar:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            prefix = info.name[: len(info.name) - len(base)]
            k, ext = prefix + base.split(".", 1)[0], base.split(".", 1)[1].lower()
            if k != key and key is not None:
                yield key, members
                members = {}
            key = k
            fh = tar.extractfile(info)
            members[ext] = fh.read() if fh is not None else b""
        if key is not None:
            yield key, members

    def _decode(self, key: str, members: dict[str, bytes]) -> Sample:
        sample = Sample(key=key)
        for ext, data in members.items():
            last = ext.rsplit(".", 1)[-1]
            if _is_image("." + last):
                sample.image = decode_image(data)
            elif _is_video("." + last):
                sample.video = self._decode_video(data)
            elif last == "txt":
                sample.text = data.decode("utf-8")
            elif last == "json":
                meta = json.loads(data)
                if not isinstance(meta, dict):
                    raise ValueError("json member is not an object")
                sample.metadata.update(meta)
            else:
                sample.metadata[ext] = data.decode("utf-8", errors="replace")
        if sample.text is None:
            sample.text = _text_of(sample.metadata)
        return sample

    def _iter(self) -> Iterator[Sample]:
        for shard in self.shards:
            try:
                with tarfile.open(shard, "r|*") as tar:
                    for key, members in self._samples(tar):
                        try:
                            sample = self._decode(key, members)
                        except Exception as e:  # bad member: skip this sample only
                            self._bad(f"{shard}:{key}", e)
                            continue
                        self._good()
                        yield sample
            except (tarfile.TarError, OSError, EOFError) as e:
                self._bad(f"shard {shard}", e)


def resolve_shards(spec: str | Path | list[str | Path]) -> list[str]:
    """Tar paths from a file, a directory (its ``*.tar``), a glob or a brace pattern, or a list of these."""
    if isinstance(spec, list):
        return [s for item in spec for s in resolve_shards(item)]
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("*.tar"))
    elif path.is_file():
        found = [text]
    else:
        found = sorted(p for pattern in expand_braces(text) for p in (glob.glob(pattern) or
                                                                      ([pattern] if Path(pattern).is_file() else [])))
    if not found:
        raise FileNotFoundError(f"no webdataset tar shards found for {text!r}")
    return found


class HFDiskSource(Source):
    """A Hugging Face dataset saved with ``save_to_disk`` (read with ``datasets.load_from_disk``).

    Image columns (``datasets.Image``) are decoded here, so one bad image skips one row. A column named
    ``video`` may hold mp4 bytes, a path, or ``{"bytes", "path"}``. Text comes from ``text_column`` or
    the first of ``caption``/``text``/``prompt``.
    """

    def __init__(self, path: str | Path, split: str | None = None, image_column: str | None = None,
                 video_column: str | None = None, text_column: str | None = None, **kwargs: Any):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                if len(ds) != 1 and "train" not in ds:
                    raise ValueError(f"{path} holds splits {list(ds)}; pass split=")
                split = "train" if "train" in ds else next(iter(ds))
            if split not in ds:
                raise ValueError(f"{path} has no split {split!r}; it has {list(ds)}")
            ds = ds[split]
        features = ds.features
        if image_column is None:
            image_column = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
        if image_column is not None:
            if image_column not in features:
                raise ValueError(f"{path} has no column {image_column!r}; columns: {list(features)}")
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        if video_column is None and "video" in features:
            video_column = "video"
        if text_column is None:
            text_column = next((c for c in TEXT_FIELDS if c in features), None)
        self.ds, self.image_column, self.video_column, self.text_column = ds, image_column, video_column, text_column
        super().__init__(str(path), **kwargs)

    def __len__(self) -> int:
        return len(self.ds)

    @staticmethod
    def _payload(value: Any) -> bytes | str:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if not isinstance(value, (bytes, str)) or not value:
            raise ValueError(f"no image/video data in {type(value).__name__}")
        return value

    def _iter(self) -> Iterator[Sample]:
        for i, row in enumerate(self.ds):
            try:
                image = decode_image(self._payload(row[self.image_column])) if self.image_column else None
                video = self._decode_video(self._payload(row[self.video_column])) if self.video_column else None
            except Exception as e:  # unreadable row
                self._bad(f"row {i}", e)
                continue
            self._good()
            skip = {self.image_column, self.video_column, self.text_column}
            meta = {k: v for k, v in row.items() if k not in skip}
            text = row[self.text_column] if self.text_column else None
            yield Sample(key=str(i), text=text, image=image, video=video, metadata=meta)


class VideoFileSource(Source):
    """mp4 (or other video) files, decoded with decord: one file, a folder of them, or a glob pattern."""

    def __init__(self, spec: str | Path, **kwargs: Any):
        path = Path(spec)
        if path.is_dir():
            self.files = sorted(str(p) for p in path.iterdir() if _is_video(p.name))
        elif path.is_file():
            self.files = [str(path)]
        else:
            self.files = sorted(glob.glob(str(spec)))
        if not self.files:
            raise FileNotFoundError(f"no video files found for {str(spec)!r}")
        super().__init__(str(spec), **kwargs)

    def __len__(self) -> int:
        return len(self.files)

    def _iter(self) -> Iterator[Sample]:
        for f in self.files:
            try:
                video = self._decode_video(f)
            except Exception as e:  # unreadable file
                self._bad(f, e)
                continue
            self._good()
            yield Sample(key=Path(f).stem, video=video, metadata={"path": f})


class ChainSource(Source):
    """Several sources one after another (e.g. ``images/`` then ``videos/`` of a ShapesWorld split)."""

    def __init__(self, sources: list[Source], name: str):
        super().__init__(name, max_corrupt_fraction=1.0)
        self.sources = sources

    @property
    def stats(self) -> dict[str, int]:
        """The parts' counts added up (each part checks its own corrupt share)."""
        out = {"seen": 0, "ok": 0, "corrupt": 0}
        for s in self.sources:
            for k in out:
                out[k] += s.stats[k]
        return out

    def _iter(self) -> Iterator[Sample]:
        for s in self.sources:
            yield from s


def _is_hf_dir(path: Path) -> bool:
    return any((path / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json"))


def open_source(spec: str | Path | list[str | Path], kind: str = "auto", **kwargs: Any) -> Source:
    """Open a data source.

    Args:
        spec: a path, glob or brace pattern (or a list of tar paths).
        kind: 'auto', 'folder', 'webdataset', 'hf' or 'video'. 'auto' picks:
            a list, a ``.tar`` file, a pattern or a folder of ``*.tar`` -> webdataset;
            a folder with ``dataset_info.json``/``state.json``/``dataset_dict.json`` -> hf;
            a folder with ``metadata.jsonl`` -> folder;
            a folder with ``images/`` and/or ``videos/`` subfolders (a ShapesWorld split) -> both, chained;
            a video file, or a folder of only video files -> video; a folder of images -> folder.
        **kwargs: reader options (``max_corrupt_fraction``, ``min_samples``, ``num_frames``, ``fps``, and
            for hf ``split``/``image_column``/``video_column``/``text_column``).
    """
    readers = {"folder": FolderSource, "webdataset": WebDatasetSource, "hf": HFDiskSource, "video": VideoFileSource}
    if kind != "auto":
        if kind not in readers:
            raise ValueError(f"unknown source kind {kind!r}; expected 'auto' or one of {list(readers)}")
        return readers[kind](spec, **kwargs)
    if isinstance(spec, list):
        return WebDatasetSource(spec, **kwargs)
    path = Path(spec)
    if path.is_file():
        if path.suffix == ".tar":
            return WebDatasetSource(spec, **kwargs)
        if _is_video(path.name):
            return VideoFileSource(spec, **kwargs)
        if path.name == "metadata.jsonl":
            return FolderSource(path.parent, **kwargs)
        raise ValueError(f"cannot tell what kind of source {path} is; pass kind=")
    if not path.exists():
        if any(ch in str(spec) for ch in "*?[{"):
            return WebDatasetSource(str(spec), **kwargs)
        raise FileNotFoundError(f"data source not found: {spec}")
    if _is_hf_dir(path):
        return HFDiskSource(path, **kwargs)
    if (path / "metadata.jsonl").is_file():
        return FolderSource(path, **kwargs)
    parts = [path / sub for sub in ("images", "videos") if (path / sub / "metadata.jsonl").is_file()]
    if parts:
        return ChainSource([FolderSource(p, **kwargs) for p in parts], str(path))
    names = [p.name for p in path.iterdir()]
    if any(n.endswith(".tar") for n in names):
        return WebDatasetSource(path, **kwargs)
    media = [n for n in names if _is_image(n) or _is_video(n)]
    if media and all(_is_video(n) for n in media):
        return VideoFileSource(path, **kwargs)
    if media:
        return FolderSource(path, **kwargs)
    raise ValueError(f"{path} holds no recognisable data (metadata.jsonl, *.tar, images, videos, or a saved "
                     f"Hugging Face dataset)")
