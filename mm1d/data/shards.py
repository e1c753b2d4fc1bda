"""Pretokenized token shards: full-length local ids (uint16) per modality, with a JSON index.

A shard is two files in one directory:

* ``shard_NNNNN.bin``: raw little-endian arrays, one after another, each starting at a 64-byte boundary;
* ``shard_NNNNN.json``: the index. It names each array's offset, dtype and shape, the sample keys, how
  many samples serve each task, the tokenizers' metadata, how many source samples were skipped as
  corrupt, and the bin's byte size and sha256. The index is written last (atomically), so its presence
  marks a finished shard.

Arrays (n samples):

=============  ============  ============================================================================
name           dtype         shape / meaning
=============  ============  ============================================================================
text_ids       uint16        (sum of caption lengths,) local text ids, concatenated
text_off       int64         (n + 1,) sample i's caption is ``text_ids[text_off[i]:text_off[i+1]]``
image_ids      uint16        (n_images, N_img) FlexTok ids
image_row      int32         (n,) row of sample i in ``image_ids``, -1 when it has no image
video_ids      uint16        (sum of time steps, N_vid) VideoFlexTok ids, time steps concatenated
video_off      int64         (n + 1,) sample i's video is ``video_ids[video_off[i]:video_off[i+1]]``
cond_ids       uint16        (n_cond, N_img) FlexTok ids of a video's first frame (text-image-to-video)
cond_row       int32         (n,) row in ``cond_ids``, -1 when absent
auto_image     int32         (n,) adaptive image budget (0: not computed)
auto_video     int32         (n,) adaptive per-step video budget (0: not computed)
=============  ============  ============================================================================

Writing the same samples twice gives byte-identical files (no timestamps, sorted JSON keys).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mm1d.sequence import TASKS, StoredSample
from mm1d.utils import atomic_path, atomic_write_text

FORMAT = "mm1d-shard"
VERSION = 1
ALIGN = 64
UINT16_MAX = 65535


class ShardMismatchError(ValueError):
    """A shard index that does not describe its ``.bin`` file (size, checksum or layout)."""


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


def shard_done(out_dir: str | Path, index: int) -> bool:
    """True when shard ``index`` has an index file whose bin exists with the recorded size."""
    idx = Path(out_dir) / f"{shard_name(index)}.json"
    if not idx.is_file():
        return False
    try:
        meta = json.loads(idx.read_text())
        bin_path = idx.with_name(meta["bin"])
        return bin_path.is_file() and bin_path.stat().st_size == meta["bin_bytes"]
    except (ValueError, KeyError):
        return False


def _uint16(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.size and (int(x.min()) < 0 or int(x.max()) > UINT16_MAX):
        raise ValueError(f"{what}: ids must fit uint16 [0, {UINT16_MAX}], got range [{x.min()}, {x.max()}]")
    return x.astype("<u2")


def _pack_arrays(samples: Sequence[StoredSample]) -> dict[str, np.ndarray]:
    n = len(samples)
    text_len = np.array([0 if s.text is None else len(s.text) for s in samples], dtype=np.int64)
    steps = np.array([0 if s.video is None else s.video.shape[0] for s in samples], dtype=np.int64)
    images = [s.image for s in samples if s.image is not None]
    videos = [s.video for s in samples if s.video is not None]
    conds = [s.cond for s in samples if s.cond is not None]

    def rows(present: list[bool]) -> np.ndarray:
        r = np.cumsum(present, dtype=np.int64) - 1
        return np.where(present, r, -1).astype("<i4")

    def stack(arrs: list[np.ndarray], what: str, ndim: int) -> np.ndarray:
        for a in arrs:
            if a.ndim != ndim:
                raise ValueError(f"{what} must have {ndim} dims, got shape {a.shape}")
        widths = {a.shape[-1] for a in arrs}
        if len(widths) > 1:
            raise ValueError(f"{what}: every sample of a shard needs the same number of tokens N, got {widths}")
        if not arrs:
            return np.zeros((0, 0), dtype="<u2")
        return _uint16(np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrs]), what)

    texts = [s.text for s in samples if s.text is not None]
    return {
        "text_ids": _uint16(np.concatenate(texts) if texts else np.zeros(0), "text ids"),
        "text_off": np.concatenate([[0], np.cumsum(text_len)]).astype("<i8"),
        "image_ids": stack(images, "image ids", 1),
        "image_row": rows([s.image is not None for s in samples]),
        "video_ids": stack(videos, "video ids", 2),
        "video_off": np.concatenate([[0], np.cumsum(steps)]).astype("<i8"),
        "cond_ids": stack(conds, "condition ids", 1),
        "cond_row": rows([s.cond is not None for s in samples]),
        "auto_image": np.array([s.auto_image for s in samples], dtype="<i4").reshape(n),
        "auto_video": np.array([s.auto_video for s in samples], dtype="<i4").reshape(n),
    }


def write_shard(out_dir: str | Path, index: int, samples: Sequence[StoredSample], meta: dict[str, Any],
                skipped: int = 0) -> Path:
    """Write one shard atomically (bin first, index last). Returns the index path.

    Args:
        out_dir: shard directory.
        index: shard number.
        samples: the shard's samples (full-length local ids).
        meta: JSON-serializable metadata (tokenizers, source); stored under ``meta``.
        skipped: corrupt source samples skipped while building this shard.
    """
    out_dir = Path(out_dir)
    arrays = _pack_arrays(samples)
    sections, blobs, offset = {}, [], 0
    for name, arr in arrays.items():
        pad = (-offset) % ALIGN
        blobs.append(b"\0" * pad)
        offset += pad
        data = np.ascontiguousarray(arr).tobytes()
        sections[name] = {"offset": offset, "dtype": arr.dtype.str, "shape": list(arr.shape)}
        blobs.append(data)
        offset += len(data)
    blob = b"".join(blobs)
    tasks = {t: 0 for t in TASKS}
    for s in samples:
        for t in s.tasks():
            tasks[t] += 1
    index_doc = {
        "format": FORMAT,
        "version": VERSION,
        "shard": index,
        "num_samples": len(samples),
        "bin": f"{shard_name(index)}.bin",
        "bin_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "sections": sections,
        "keys": [s.key for s in samples],
        "tasks": tasks,
        "skipped_corrupt": int(skipped),
        "meta": meta,
    }
    with atomic_path(out_dir / index_doc["bin"]) as tmp:
        tmp.write_bytes(blob)
    path = out_dir / f"{shard_name(index)}.json"
    atomic_write_text(path, json.dumps(index_doc, indent=1, sort_keys=True) + "\n")
    return path


class Shard:
    """Read-only view of one shard (memory-mapped).

    Args:
        index_path: the shard's ``.json`` index.
        verify: also check the sha256 of the bin against the index (reads the whole file once).

    Raises:
        FileNotFoundError: missing index or bin.
        ShardMismatchError: the index does not match its bin (size, checksum, array layout, sample count).
    """

    def __init__(self, index_path: str | Path, verify: bool = True) -> None:
        self.index_path = Path(index_path)
        if not self.index_path.is_file():
            raise FileNotFoundError(f"shard index not found: {self.index_path}")
        try:
            self.index = json.loads(self.index_path.read_text())
        except ValueError as e:
            raise ShardMismatchError(f"shard index {self.index_path} is not valid JSON: {e}") from e
        if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
            raise ShardMismatchError(f"{self.index_path} is not a {FORMAT} v{VERSION} index")
        self.bin_path = self.index_path.with_name(self.index["bin"])
        if not self.bin_path.is_file():
            raise FileNotFoundError(f"shard data {self.bin_path} (named by {self.index_path}) not found")
        size = self.bin_path.stat().st_size
        if size != self.index["bin_bytes"]:
            raise ShardMismatchError(f"shard index {self.index_path} does not match its shard {self.bin_path}: "
                                     f"index says {self.index['bin_bytes']} bytes, file has {size}")
        raw = np.fromfile(self.bin_path, dtype=np.uint8) if verify else np.memmap(self.bin_path, mode="r")
        if verify and hashlib.sha256(raw.tobytes()).hexdigest() != self.index["sha256"]:
            raise ShardMismatchError(f"shard index {self.index_path} does not match its shard {self.bin_path}: "
                                     "sha256 differs (the bin was modified or belongs to another index)")
        self.arrays: dict[str, np.ndarray] = {}
        for name, sec in self.index["sections"].items():
            dt = np.dtype(sec["dtype"])
            count = int(np.prod(sec["shape"])) if sec["shape"] else 1
            end = sec["offset"] + count * dt.itemsize
            if end > size:
                raise ShardMismatchError(f"shard index {self.index_path}: section {name} runs past the end of "
                                         f"{self.bin_path}")
            self.arrays[name] = raw[sec["offset"] : end].view(dt).reshape(sec["shape"])
        self._check_layout()

    def _check_layout(self) -> None:
        n, a = self.num_samples, self.arrays
        bad = []
        for name in ("text_off", "video_off"):
            if a[name].shape != (n + 1,):
                bad.append(f"{name} has shape {a[name].shape}, expected ({n + 1},)")
        for name in ("image_row", "cond_row", "auto_image", "auto_video"):
            if a[name].shape != (n,):
                bad.append(f"{name} has shape {a[name].shape}, expected ({n},)")
        if len(self.index["keys"]) != n:
            bad.append(f"{len(self.index['keys'])} keys for {n} samples")
        if not bad:
            if a["text_off"][-1] != len(a["text_ids"]) or a["video_off"][-1] != len(a["video_ids"]):
                bad.append("offsets do not end at the array lengths")
            if a["image_row"].max(initial=-1) >= len(a["image_ids"]):
                bad.append("image rows point past image_ids")
            if a["cond_row"].max(initial=-1) >= len(a["cond_ids"]):
                bad.append("condition rows point past cond_ids")
        if bad:
            raise ShardMismatchError(f"shard index {self.index_path} does not match its shard: " + "; ".join(bad))

    @property
    def num_samples(self) -> int:
        return int(self.index["num_samples"])

    @property
    def meta(self) -> dict[str, Any]:
        return self.index["meta"]

    def __len__(self) -> int:
        return self.num_samples

    def task_mask(self, task: str) -> np.ndarray:
        """(n,) bool: which samples can serve ``task`` (same rule as ``StoredSample.tasks``)."""
        a = self.arrays
        has_text = np.diff(a["text_off"]) > 0
        has_image = a["image_row"] >= 0
        has_video = np.diff(a["video_off"]) > 0
        rule = {
            "t2i": has_text & has_image,
            "i2t": has_text & has_image,
            "t2v": has_text & has_video,
            "v2t": has_text & has_video,
            "ti2v": has_text & has_video & (a["cond_row"] >= 0),
            "text": has_text,
        }
        return rule[task]

    def get(self, i: int) -> StoredSample:
        """Sample ``i`` with views into the mapped arrays (no copy)."""
        a = self.arrays
        t0, t1 = a["text_off"][i], a["text_off"][i + 1]
        v0, v1 = a["video_off"][i], a["video_off"][i + 1]
        ir, cr = a["image_row"][i], a["cond_row"][i]
        return StoredSample(
            text=a["text_ids"][t0:t1] if t1 > t0 else None,
            image=a["image_ids"][ir] if ir >= 0 else None,
            video=a["video_ids"][v0:v1] if v1 > v0 else None,
            cond=a["cond_ids"][cr] if cr >= 0 else None,
            auto_image=int(a["auto_image"][i]),
            auto_video=int(a["auto_video"][i]),
            key=self.index["keys"][i],
        )


def list_shards(dirs: Sequence[str | Path]) -> list[Path]:
    """All ``shard_*.json`` index files under the given directories, sorted (dirs in order, names sorted).

    Raises:
        FileNotFoundError: a directory that does not exist or holds no shard.
    """
    if not dirs:
        raise ValueError("no shard directories given (loader.shards is empty); run tokenizers/pretokenize.py")
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"shard directory not found: {d} (run tokenizers/pretokenize.py first)")
        found = sorted(d.glob("shard_*.json"))
        if not found:
            raise FileNotFoundError(f"no shard_*.json in {d} (run tokenizers/pretokenize.py first)")
        out += found
    return out
