"""ShapesWorld: determinism, holdout exclusion, geometry, captions, batches and the on-disk writer."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mm1d.config import ShapesConfig
from mm1d.data.shapes import (
    COLOURS,
    MOTIONS,
    POSITIONS,
    SHAPES,
    SIDE,
    SIZES,
    ShapesWorld,
    allowed_combos,
    caption_for,
    coverage,
    make_batch,
    parse_holdout,
    render_image,
    render_video,
    sample_rng,
    to_unit_range,
)
from mm1d.data.shapes_writer import main as writer_main
from mm1d.data.shapes_writer import write_split

REPO = Path(__file__).resolve().parents[1]


def _combos(attrs: dict) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in attrs["objects"]}


def test_same_seed_same_bytes_different_seed_differs() -> None:
    a, b, c = ShapesWorld(seed=3), ShapesWorld(seed=3), ShapesWorld(seed=4)
    for i in range(20):
        ia, aa, ca = a.image("train", i)
        ib, ab, cb = b.image("train", i)
        assert ia.tobytes() == ib.tobytes() and aa == ab and ca == cb
        va, _, _ = a.video("val", i)
        vb, _, _ = b.video("val", i)
        assert va.tobytes() == vb.tobytes()
    differs = sum(a.image("train", i)[0].tobytes() != c.image("train", i)[0].tobytes() for i in range(20))
    assert differs >= 18
    # splits are different streams too
    assert sum(a.image("train", i)[1] != a.image("val", i)[1] for i in range(20)) >= 18


def test_batch_depends_on_index_only() -> None:
    full = make_batch(5, 0, 8)
    part = make_batch(5, 3, 4)
    assert torch.equal(full.pixels[3:7], part.pixels)
    assert full.captions[3:7] == part.captions and full.attrs[3:7] == part.attrs


def test_batch_layout_and_range() -> None:
    img = make_batch(0, 0, 4, size=32)
    assert img.pixels.shape == (4, 3, 32, 32) and img.pixels.dtype == torch.float32
    assert img.pixels.min() >= -1 and img.pixels.max() <= 1 and img.pixels.min() == -1  # black background
    arr, attrs, caption = ShapesWorld(seed=0).image("train", 2)
    assert torch.equal(img.pixels[2], to_unit_range(arr)) and img.captions[2] == caption
    assert torch.equal(img.pixels[2].permute(1, 2, 0).add(1).mul(127.5).round().byte(), torch.from_numpy(arr))
    vid = make_batch(0, 0, 2, kind="video", frames=9, size=24)
    assert vid.pixels.shape == (2, 3, 9, 24, 24)
    v, _, _ = ShapesWorld(ShapesConfig(size=24, frames=9), seed=0).video("train", 1)
    assert torch.equal(vid.pixels[1], to_unit_range(v))  # (3, F, H, W)


def test_render_from_attrs_reproduces_the_sample() -> None:
    world = ShapesWorld(seed=1)
    for i in range(10):
        img, attrs, _ = world.image("train", i)
        assert np.array_equal(render_image(attrs, 32), img)
        vid, vattrs, _ = world.video("train", i)
        assert np.array_equal(render_video(vattrs, 32, 17), vid)


def test_holdout_never_in_train_or_val_and_only_in_holdout() -> None:
    cfg = ShapesConfig()
    held = parse_holdout(cfg.holdout)
    world = ShapesWorld(cfg, seed=0)
    seen_holdout: set[tuple[str, str]] = set()
    for i in range(1500):
        assert not _combos(world.image("train", i)[1]) & held
        assert not _combos(world.image("val", i)[1]) & held
        h = _combos(world.image("holdout", i)[1])
        assert h <= held
        seen_holdout |= h
    for i in range(300):
        assert not _combos(world.video("train", i)[1]) & held
        assert _combos(world.video("holdout", i)[1]) <= held
    assert seen_holdout == held  # every held-out combination does appear in the holdout split


def test_custom_holdout_and_bad_names() -> None:
    cfg = ShapesConfig(holdout=["white diamond", "cyan square"])
    assert set(allowed_combos("holdout", cfg.holdout)) == {("white", "diamond"), ("cyan", "square")}
    assert len(allowed_combos("train", cfg.holdout)) == len(COLOURS) * len(SHAPES) - 2
    world = ShapesWorld(cfg, seed=2)
    for i in range(200):
        assert not _combos(world.image("train", i)[1]) & {("white", "diamond"), ("cyan", "square")}
    with pytest.raises(ValueError, match="holdout entry 'pink circle'"):
        parse_holdout(["pink circle"])
    with pytest.raises(ValueError, match="unknown ShapesWorld split"):
        allowed_combos("test", cfg.holdout)


def test_every_attribute_value_occurs() -> None:
    world = ShapesWorld(ShapesConfig(holdout=[]), seed=0)
    objs = [o for i in range(600) for o in world.image("train", i)[1]["objects"]]
    assert {o["shape"] for o in objs} == set(SHAPES)
    assert {o["colour"] for o in objs} == set(COLOURS)
    assert {o["size"] for o in objs} == set(SIZES)
    assert {o["position"] for o in objs} == set(POSITIONS)
    assert {len(world.image("train", i)[1]["objects"]) for i in range(50)} == {1, 2}
    assert {world.video("train", i)[1]["objects"][0]["motion"] for i in range(100)} == set(MOTIONS)


def test_objects_apart_distinct_colours_and_inside_frame() -> None:
    world = ShapesWorld(ShapesConfig(max_objects=5), seed=0)
    for i in range(300):
        attrs = world.image("train", i)[1]
        objs = attrs["objects"]
        assert len({o["colour"] for o in objs}) == len(objs) and len({o["position"] for o in objs}) == len(objs)
        covs = [coverage(o["shape"], o["cx"] * 32, o["cy"] * 32, SIDE[o["size"]] * 32, 32)[0] for o in objs]
        for j, o in enumerate(objs):
            area = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}[o["shape"]]
            assert covs[j].sum() == pytest.approx(area * (SIDE[o["size"]] * 32) ** 2, rel=0.06)  # not clipped
            for k in range(j + 1, len(covs)):
                assert (covs[j] * covs[k]).sum() == 0  # no shared pixel, not even partly
        for o in objs:
            h = SIDE[o["size"]] / 2
            assert h <= o["cx"] <= 1 - h and h <= o["cy"] <= 1 - h


def test_video_object_moves_the_stated_way() -> None:
    world = ShapesWorld(seed=0)
    for i in range(40):
        vid, attrs, caption = world.video("train", i)
        lum = vid.astype(np.float32).sum(-1)  # (F, H, W)
        ys, xs = np.indices(lum.shape[1:])
        cx = (lum * xs).sum((1, 2)) / lum.sum((1, 2))
        cy = (lum * ys).sum((1, 2)) / lum.sum((1, 2))
        dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
        motion = attrs["objects"][0]["motion"]
        expected = {"left": dx < -10, "right": dx > 10, "up": dy < -10, "down": dy > 10,
                    "still": abs(dx) < 0.5 and abs(dy) < 0.5}
        assert expected[motion], (motion, dx, dy)
        assert vid.shape == (17, 32, 32, 3)


def test_captions_vary_and_name_the_attributes() -> None:
    world = ShapesWorld(seed=0)
    captions = set()
    for i in range(200):
        _, attrs, caption = world.image("train", i)
        captions.add(caption.split(" ")[0])
        for o in attrs["objects"]:
            assert o["colour"] in caption and o["shape"] in caption
        assert " a o" not in caption  # article fixed: "an orange"
    assert len(captions) >= 3  # different openings: several templates and wrappers
    rng = sample_rng(0, "train", "image", 0)
    attrs = {"kind": "video", "objects": [{"shape": "square", "colour": "red", "size": "small",
                                           "position": "top right", "motion": "left"}]}
    texts = {caption_for(attrs, rng) for _ in range(40)}
    assert len(texts) >= 5 and all("left" in t and "top right" in t for t in texts)


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": 16}, "1 \\+ 4m"),
    ({"size": 31}, "even"),
    ({"max_objects": 6}, "max_objects"),
])
def test_bad_config_is_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_batch(0, 0, 1, kind="video", cfg=ShapesConfig(**kwargs))


def test_write_split_layout_and_determinism(tmp_path: Path) -> None:
    cfg = ShapesConfig()
    a = write_split(tmp_path / "a", "val", 6, 3, seed=1, cfg=cfg, shard_size=4, progress=False)
    write_split(tmp_path / "b", "val", 6, 3, seed=1, cfg=cfg, shard_size=4, progress=False)
    write_split(tmp_path / "c", "val", 6, 3, seed=2, cfg=cfg, shard_size=4, progress=False)
    write_split(tmp_path / "d", "val", 6, 3, seed=1, cfg=cfg, shard_size=4, progress=False, workers=2)
    assert a == {"images": 6, "videos": 3, "shards": 3}
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [str(p) for p in files_a if p.parts[0] == "shards"] == [
        "shards/shapes-000000.tar", "shards/shapes-000001.tar", "shards/shapes-000002.tar"]
    assert not [p for p in files_a if p.name.startswith(".")]  # no temporary files left behind
    for rel in files_a:  # same seed: byte-identical files, PNG, mp4, tar and metadata alike, with any workers
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "d" / rel).read_bytes(), rel
    assert (tmp_path / "a/images/metadata.jsonl").read_bytes() != (tmp_path / "c/images/metadata.jsonl").read_bytes()

    rows = [json.loads(x) for x in (tmp_path / "a/images/metadata.jsonl").read_text().splitlines()]
    world = ShapesWorld(cfg, seed=1)
    for r in rows:
        img, attrs, caption = world.image("val", r["index"])
        assert (tmp_path / "a/images" / r["file_name"]).is_file()
        assert r["caption"] == caption and r["objects"] == attrs["objects"]
        assert r["num_objects"] == len(attrs["objects"])
    vrows = [json.loads(x) for x in (tmp_path / "a/videos/metadata.jsonl").read_text().splitlines()]
    assert len(vrows) == 3 and all(r["file_name"].endswith(".mp4") and r["num_frames"] == 17 for r in vrows)
    with tarfile.open(tmp_path / "a/shards/shapes-000000.tar") as tar:
        names = tar.getnames()
    assert names[:3] == ["img000000.png", "img000000.json", "img000000.txt"]
    with tarfile.open(tmp_path / "a/shards/shapes-000002.tar") as tar:
        assert "vid000002.mp4" in tar.getnames()


def test_imagefolder_loads_with_hugging_face(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    write_split(tmp_path, "train", 5, 0, seed=0, progress=False)
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "images"), split="train")
    assert len(ds) == 5 and {"image", "caption", "objects"} <= set(ds.features)
    first = sorted(ds, key=lambda r: r["index"])[0]
    img, attrs, caption = ShapesWorld(seed=0).image("train", 0)
    assert np.array_equal(np.asarray(first["image"].convert("RGB")), img) and first["caption"] == caption


def test_cli_arguments_and_module_entry(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    writer_main(["--out", str(tmp_path / "x"), "--split", "holdout", "--num-images", "3", "--seed", "4",
                 "--size", "48", "--holdout", "red circle"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images"] == 3 and not (tmp_path / "x/videos").exists()
    for line in (tmp_path / "x/images/metadata.jsonl").read_text().splitlines():
        assert all((o["colour"], o["shape"]) == ("red", "circle") for o in json.loads(line)["objects"])
    proc = subprocess.run([sys.executable, "-m", "mm1d.data.shapes", "--out", str(tmp_path / "y"), "--split", "val",
                           "--num-videos", "1", "--frames", "9"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "y/videos/000000.mp4").stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "mm1d.data.shapes", "--out", str(tmp_path / "z"), "--split", "val",
                          "--num-videos", "1", "--frames", "10"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "1 + 4m" in bad.stderr
