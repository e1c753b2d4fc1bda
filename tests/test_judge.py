"""The analytic ShapesWorld judge: accuracy on fresh samples (clean, JPEG, mp4), set matching, captions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mm1d.config import ShapesConfig
from mm1d.data.media import decode_video, encode_mp4, jpeg_roundtrip
from mm1d.data.shapes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesWorld,
    caption_for,
    render_image,
    sample_image_attrs,
    sample_rng,
    sample_video_attrs,
)
from mm1d.evaluation.judge import (
    classify_colour,
    compare,
    judge_image,
    judge_video,
    parse_caption,
    score_captions,
    score_images,
    score_videos,
)

WORLD = ShapesWorld(seed=123)  # a seed no other test uses: fresh samples


def _images(n: int, split: str = "val", world: ShapesWorld = WORLD) -> tuple[list[np.ndarray], list[dict]]:
    pairs = [world.image(split, i)[:2] for i in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_image_accuracy_clean_and_jpeg() -> None:
    images, attrs = _images(200)
    clean = score_images(images, attrs)
    assert clean["image_accuracy"] >= 0.99 and clean["num_images"] == 200
    jpeg = score_images([jpeg_roundtrip(im, 75) for im in images], attrs)
    assert jpeg["image_accuracy"] >= 0.99
    for key in ("shape", "colour", "size", "position", "count"):
        assert jpeg[f"{key}_accuracy"] >= 0.99


def test_holdout_split_and_other_resolutions() -> None:
    images, attrs = _images(60, "holdout")
    assert score_images(images, attrs)["image_accuracy"] >= 0.98
    big = ShapesWorld(ShapesConfig(size=64, max_objects=3), seed=9)
    images, attrs = _images(40, "train", big)
    assert score_images([jpeg_roundtrip(im, 75) for im in images], attrs)["image_accuracy"] >= 0.97


def test_every_shape_colour_size_position_alone() -> None:
    """Each single attribute value is recovered when drawn at its anchor (exhaustive, no sampling luck)."""
    for shape, colour, size, pos in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS):
        obj = {"shape": shape, "colour": colour, "size": size, "position": pos}
        got = judge_image(render_image({"objects": [obj]}, 32))["objects"]
        assert len(got) == 1 and all(got[0][k] == obj[k] for k in obj), (obj, got)


def test_tensor_inputs_match_uint8() -> None:
    img, attrs, _ = WORLD.image("val", 0)
    as_uint8 = torch.from_numpy(img).permute(2, 0, 1)  # (3, H, W)
    as_float = as_uint8.float() / 127.5 - 1.0
    want = judge_image(img)
    assert judge_image(as_uint8) == want == judge_image(as_float)
    vid, _, _ = WORLD.video("val", 0)
    vt = torch.from_numpy(vid).permute(3, 0, 1, 2)  # (3, F, H, W)
    assert judge_video(vt) == judge_video(vid) == judge_video(vt.float() / 127.5 - 1.0)


def test_video_motion_and_colour_after_mp4() -> None:
    videos, attrs = [], []
    for i in range(60):
        vid, a, _ = WORLD.video("val", i)
        videos.append(decode_video(encode_mp4(vid, fps=8)))  # H.264 yuv420p, read back by decord
        attrs.append(a)
    scores = score_videos(videos, attrs)
    assert scores["video_motion_accuracy"] >= 0.99 and scores["video_colour_accuracy"] >= 0.99
    assert scores["num_videos"] == 60


def test_judge_is_not_fooled() -> None:
    blank = np.zeros((32, 32, 3), np.uint8)
    assert judge_image(blank)["objects"] == [] and judge_video(np.zeros((9, 32, 32, 3), np.uint8))["objects"] == []
    images, attrs = _images(50)
    shuffled = attrs[1:] + attrs[:1]  # wrong ground truth must score low
    assert score_images(images, shuffled)["image_accuracy"] < 0.2
    vids = [WORLD.video("val", i) for i in range(20)]
    reversed_motion = [{"objects": [{**a["objects"][0], "motion": {"left": "right", "right": "left", "up": "down",
                                                                   "down": "up", "still": "left"}[
        a["objects"][0]["motion"]]}]} for _, a, _ in vids]
    assert score_videos([v for v, _, _ in vids], reversed_motion)["video_motion_accuracy"] == 0.0


def test_compare_matches_as_sets() -> None:
    a = {"shape": "circle", "colour": "red", "size": "small", "position": "top left"}
    b = {"shape": "square", "colour": "blue", "size": "large", "position": "center"}
    keys = ("shape", "colour", "size", "position")
    assert compare({"objects": [b, a]}, {"objects": [a, b]}, keys) == (True, dict.fromkeys(keys, 2), 2)
    swapped = [{**a, "colour": "blue"}, {**b, "colour": "red"}]  # colours bound to the wrong shapes
    exact, correct, n = compare({"objects": swapped}, {"objects": [a, b]}, keys)
    assert not exact and correct == {"shape": 2, "colour": 0, "size": 2, "position": 2} and n == 2
    exact, correct, _ = compare({"objects": [a]}, {"objects": [a, b]}, keys)  # one object missing
    assert not exact and correct == dict.fromkeys(keys, 1)
    assert not compare({"objects": [a, b]}, {"objects": [a]}, keys)[0]  # an extra object


def test_colour_classifier_tolerates_faded_chroma() -> None:
    to_ycc = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    for i, rgb in enumerate(COLOURS.values()):
        ycc = to_ycc @ np.array(rgb, float)
        for fade in (1.0, 0.6, 0.35):  # chroma subsampling on small objects
            assert classify_colour(float(ycc[0]), ycc[1:] * fade) == i


def test_parse_caption_over_all_templates() -> None:
    texts, attrs = [], []
    cfg = ShapesConfig(max_objects=3)
    for i in range(2000):  # attributes and captions only (no pixels needed)
        kind = "image" if i % 4 else "video"
        rng = sample_rng(5, "train", kind, i)
        a = (sample_image_attrs if kind == "image" else sample_video_attrs)(rng, cfg, "train")
        texts.append(caption_for(a, rng))
        attrs.append(a)
    scores = score_captions(texts, attrs)
    assert scores["caption_accuracy"] == 1.0 and scores["caption_motion_accuracy"] == 1.0
    # every (object template x wrapper) pairing is exercised by re-drawing captions for one scene
    rng = sample_rng(0, "train", "image", 0)
    scene = attrs[1]
    for _ in range(300):
        assert compare(parse_caption(caption_for(scene, rng)), scene, ("shape", "colour", "size", "position"))[0]


@pytest.mark.parametrize("text, kind, want", [
    ("a big violet disc in the upper-left", "image",
     [{"shape": "circle", "colour": "purple", "size": "large", "position": "top left"}]),
    ("A small red square moving left from the top right corner", "video",
     [{"shape": "square", "colour": "red", "size": "small", "position": "top right", "motion": "left"}]),
    ("starting in the bottom left, a large cyan triangle slides upward", "video",
     [{"shape": "triangle", "colour": "cyan", "size": "large", "position": "bottom left", "motion": "up"}]),
    ("a motionless little white diamond in the middle", "video",
     [{"shape": "diamond", "colour": "white", "size": "small", "position": "center", "motion": "still"}]),
    ("a red circle next to a blue square", "image",
     [{"shape": "circle", "colour": "red", "size": None, "position": None},
      {"shape": "square", "colour": "blue", "size": None, "position": None}]),
    ("nothing to see here", "image", []),
])
def test_parse_caption_free_text(text: str, kind: str, want: list[dict]) -> None:
    got = parse_caption(text)
    assert got["kind"] == kind and got["objects"] == want


def test_score_captions_counts_mistakes() -> None:
    truth = {"kind": "image", "objects": [{"shape": "circle", "colour": "red", "size": "large", "position": "center"}]}
    vtruth = {"kind": "video", "objects": [{"shape": "square", "colour": "blue", "size": "small",
                                           "position": "top left", "motion": "right"}]}
    s = score_captions(["a large red circle in the center", "a small blue square moving left from the top left"],
                       [truth, vtruth])
    assert s["caption_accuracy"] == 0.5 and s["caption_motion_accuracy"] == 0.0 and s["caption_colour_accuracy"] == 1
    with pytest.raises(ValueError, match="captions for"):
        score_captions(["x"], [])
