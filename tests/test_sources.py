"""Readers: image/video folders, webdataset tars, HF datasets on disk, mp4 files; corrupt input included."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mm1d.data.media import encode_mp4, encode_png, frame_indices
from mm1d.data.shapes import ShapesWorld
from mm1d.data.shapes_writer import write_split
from mm1d.data.sources import (
    ChainSource,
    CorruptDataError,
    FolderSource,
    HFDiskSource,
    Sample,
    VideoFileSource,
    WebDatasetSource,
    expand_braces,
    open_source,
)

WORLD = ShapesWorld(seed=0)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "val"
    write_split(out, "val", 6, 3, seed=0, shard_size=4, progress=False)
    return out


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)


def _check_image_sample(s: Sample) -> None:
    assert s.image is not None and s.video is None
    assert s.image.dtype == torch.uint8 and s.image.shape == (3, 32, 32)
    img, attrs, caption = WORLD.image("val", s.metadata["index"])
    assert np.array_equal(_hwc(s.image), img) and s.text == caption and s.metadata["objects"] == attrs["objects"]


def test_folder_images_and_videos(split_dir: Path) -> None:
    src = open_source(split_dir / "images")
    assert isinstance(src, FolderSource)
    samples = list(src)
    assert [s.key for s in samples] == [f"{i:06d}" for i in range(6)]
    for s in samples:
        _check_image_sample(s)
    assert src.stats == {"seen": 6, "ok": 6, "corrupt": 0}
    vids = list(open_source(split_dir / "videos"))
    assert len(vids) == 3
    for s in vids:
        assert s.image is None and s.video.dtype == torch.uint8 and s.video.shape == (3, 17, 32, 32)  # (3, F, H, W)
        truth, attrs, caption = WORLD.video("val", s.metadata["index"])
        assert s.text == caption and s.metadata["motion"] == attrs["objects"][0]["motion"]
        err = np.abs(s.video.permute(1, 2, 3, 0).float().numpy() - truth.astype(np.float32)).mean()
        assert err < 4.0  # H.264 at crf 10: close to the source frames, in the right order


def test_split_root_chains_images_and_videos(split_dir: Path) -> None:
    src = open_source(split_dir)
    assert isinstance(src, ChainSource)
    samples = list(src)
    assert sum(s.image is not None for s in samples) == 6 and sum(s.video is not None for s in samples) == 3
    assert src.stats["ok"] == 9


def test_webdataset_shards(split_dir: Path) -> None:
    src = open_source(split_dir / "shards")
    assert isinstance(src, WebDatasetSource) and len(src.shards) == 3
    samples = list(src)
    assert [s.key for s in samples] == [f"img{i:06d}" for i in range(6)] + [f"vid{i:06d}" for i in range(3)]
    for s in samples[:6]:
        _check_image_sample(s)
    assert all(s.video.shape == (3, 17, 32, 32) for s in samples[6:])
    pattern = str(split_dir / "shards" / "shapes-{000000..000001}.tar")
    assert len(list(open_source(pattern))) == 8
    assert len(list(open_source(str(split_dir / "shards" / "*.tar")))) == 9
    assert expand_braces("a-{08..10}.tar") == ["a-08.tar", "a-09.tar", "a-10.tar"]


def test_video_files_and_frame_sampling(split_dir: Path) -> None:
    one = split_dir / "videos" / "000001.mp4"
    src = open_source(one, num_frames=5)
    assert isinstance(src, VideoFileSource)
    (s,) = list(src)
    full = next(iter(VideoFileSource(one))).video
    assert s.video.shape == (3, 5, 32, 32) and torch.equal(s.video, full[:, [0, 4, 8, 12, 16]])
    half = next(iter(VideoFileSource(one, fps=4))).video  # source is 8 fps: every other frame
    assert torch.equal(half, full[:, ::2])
    assert frame_indices(17, 8.0, fps=4) == list(range(0, 17, 2))
    assert frame_indices(17, 8.0, num_frames=3, fps=8) == [0, 1, 2]
    assert frame_indices(10, 30.0) == list(range(10))
    with pytest.raises(ValueError, match="num_frames"):
        frame_indices(10, 30.0, num_frames=0)


def _hf_dataset(path: Path, images: list[bytes], captions: list[str]) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "caption": captions,
                                     "idx": list(range(len(images)))},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "caption": datasets.Value("string"),
                                                                "idx": datasets.Value("int64")}))
    ds.save_to_disk(str(path))


def test_hf_dataset_on_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    imgs = [WORLD.image("train", i) for i in range(5)]
    data = [encode_png(im) for im, _, _ in imgs]
    data[2] = data[2][: len(data[2]) // 2]  # truncated PNG
    _hf_dataset(tmp_path / "hf", data, [c for _, _, c in imgs])
    src = open_source(tmp_path / "hf", max_corrupt_fraction=0.5)
    assert isinstance(src, HFDiskSource) and len(src) == 5
    with caplog.at_level(logging.WARNING, logger="mm1d.data.sources"):
        samples = list(src)
    assert [s.key for s in samples] == ["0", "1", "3", "4"] and src.stats == {"seen": 5, "ok": 4, "corrupt": 1}
    for s in samples:
        im, _, caption = imgs[s.metadata["idx"]]
        assert np.array_equal(_hwc(s.image), im) and s.text == caption
    assert "row 2" in caplog.text


def _folder_with(tmp_path: Path, n_good: int, n_bad: int) -> Path:
    root = tmp_path / "imgs"
    root.mkdir()
    rows = []
    for i in range(n_good + n_bad):
        data = encode_png(WORLD.image("train", i)[0])
        if i >= n_good:
            data = data[:40]  # truncated
        (root / f"{i}.png").write_bytes(data)
        rows.append(json.dumps({"file_name": f"{i}.png", "caption": f"c{i}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def test_corrupt_files_are_skipped_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder_with(tmp_path, 8, 2)
    with (root / "metadata.jsonl").open("a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps({"file_name": "missing.png"}) + "\n")
    src = open_source(root, max_corrupt_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="mm1d.data.sources"):
        samples = list(src)
    assert [s.text for s in samples] == [f"c{i}" for i in range(8)]
    assert src.stats == {"seen": 12, "ok": 8, "corrupt": 4}
    assert len([r for r in caplog.records if r.name == "mm1d.data.sources"]) == 1  # logged once


def test_too_many_corrupt_files_fail_clearly(tmp_path: Path) -> None:
    root = _folder_with(tmp_path, 8, 2)
    with pytest.raises(CorruptDataError, match=r"2 of 10 items are corrupt"):
        list(open_source(root))  # default: at most 5% corrupt, checked at the end of the pass
    src = open_source(root, max_corrupt_fraction=0.05, min_samples=9)
    it = iter(src)
    with pytest.raises(CorruptDataError):
        for _ in it:
            pass
    assert src.stats["seen"] == 9  # failed mid-pass, as soon as min_samples were seen
    assert len(list(open_source(root, max_corrupt_fraction=0.2))) == 8


def test_garbage_mp4_is_skipped(tmp_path: Path) -> None:
    vids = tmp_path / "vids"
    vids.mkdir()
    vid, _, _ = WORLD.video("train", 0)
    (vids / "a.mp4").write_bytes(encode_mp4(vid))
    (vids / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    (vids / "c.mp4").write_bytes(encode_mp4(vid[:5]))
    src = open_source(vids, max_corrupt_fraction=0.5)
    assert isinstance(src, VideoFileSource)
    samples = list(src)
    assert [s.key for s in samples] == ["a", "c"] and src.stats["corrupt"] == 1
    assert samples[1].video.shape == (3, 5, 32, 32)


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_tar_member_and_truncated_shard(tmp_path: Path) -> None:
    good = [encode_png(WORLD.image("train", i)[0]) for i in range(3)]
    _tar(tmp_path / "s-0.tar", [
        ("a.png", good[0]), ("a.txt", b"first"), ("a.json", b'{"n": 1}'),
        ("b.png", b"not a png"), ("b.txt", b"second"),
        ("c.png", good[1]), ("c.txt", b"third"), ("c.json", b"[1, 2]"),  # json that is not an object
        ("d.png", good[2]), ("d.txt", b"fourth"), ("d.cls", b"7"),
    ])
    src = open_source(tmp_path / "s-0.tar", max_corrupt_fraction=0.6)
    samples = list(src)
    assert [(s.key, s.text) for s in samples] == [("a", "first"), ("d", "fourth")]
    assert samples[0].metadata == {"n": 1} and samples[1].metadata == {"cls": "7"}
    assert src.stats == {"seen": 4, "ok": 2, "corrupt": 2}

    with tarfile.open(tmp_path / "s-0.tar") as tar:
        cut_at = tar.getmember("d.png").offset_data + 10
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "s-1.tar").write_bytes((tmp_path / "s-0.tar").read_bytes()[:cut_at])  # breaks off in d.png
    _tar(tmp_path / "cut" / "s-2.tar", [("e.png", good[0]), ("e.txt", b"fifth")])
    src = open_source(tmp_path / "cut", max_corrupt_fraction=0.9)
    assert [s.key for s in src] == ["a", "e"]  # the next shard is still read
    assert src.stats == {"seen": 5, "ok": 2, "corrupt": 3}  # b, c and the broken shard


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        open_source(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown source kind"):
        open_source(tmp_path, kind="parquet")
    with pytest.raises(ValueError, match="no recognisable data"):
        open_source(tmp_path)
    with pytest.raises(FileNotFoundError, match="no webdataset tar shards"):
        open_source(str(tmp_path / "x-{000..002}.tar"))
    with pytest.raises(ValueError, match="max_corrupt_fraction"):
        FolderSource(tmp_path, max_corrupt_fraction=2.0)
