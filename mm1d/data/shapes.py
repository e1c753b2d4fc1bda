"""ShapesWorld: a procedural world of coloured shapes, with captions, deterministic from a seed.

An image (``size`` x ``size``, black background) holds 1..``max_objects`` objects. Each object has a
shape (``SHAPES``), a palette colour (``COLOURS``), a size (``SIZES``) and a position (``POSITIONS``).
Objects in one image sit at distinct positions, have distinct colours and never touch. A video of
``frames`` (= 1 + 4m) frames holds one object that moves left, right, up or down across the frame, or
stays still (``MOTIONS``). Captions come from several templates, so the wording varies.

Attributes travel as plain dicts (JSON-friendly)::

    {"kind": "image", "objects": [{"shape": "circle", "colour": "red", "size": "large",
                                   "position": "top left", "cx": 0.21, "cy": 0.19}, ...]}
    {"kind": "video", "objects": [{... "position": <start position>, "motion": "left"}]}

``cx``/``cy`` are the object's bounding-box centre as a fraction of the side (the first frame's, for
videos). Without them an object is drawn at its position's anchor.

Splits: ``train`` and ``val`` draw only colour+shape combinations outside ``ShapesConfig.holdout``;
``holdout`` draws only combinations inside it. Sample ``index`` of a split is a pure function of
``(seed, split, kind, index)``, so any sample can be regenerated on its own.

Command: ``python -m mm1d.data.shapes --out DIR --split train --num-images N --num-videos M --seed S``
writes ``DIR/images`` and ``DIR/videos`` (files + ``metadata.jsonl``) and ``DIR/shards/*.tar``; see
``mm1d.data.shapes_writer``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mm1d.config import ShapesConfig

# ---- the attribute vocabulary (the judge and the caption parser use these) -------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "white": (235, 235, 235),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
SPLITS: tuple[str, ...] = ("train", "val", "holdout")
BACKGROUND: tuple[int, int, int] = (0, 0, 0)

# ---- geometry, as fractions of the image side -----------------------------------------------------
SIDE: dict[str, float] = {"small": 0.16, "large": 0.26}  # side of an object's bounding box
_LO, _HI = 0.18, 0.82  # corner anchors
ANCHORS: dict[str, tuple[float, float]] = {
    "top left": (_LO, _LO),
    "top right": (_HI, _LO),
    "bottom left": (_LO, _HI),
    "bottom right": (_HI, _HI),
    "center": (0.5, 0.5),
}
MIN_GAP = 0.05  # least empty space between the bounding boxes of two objects in one image (anchors: 0.06)
TRAVEL = _HI - _LO  # how far a moving object travels over a whole video (corner anchor to corner anchor)
MOTION_VECTORS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
                                              "still": (0, 0)}
MOTION_STARTS: dict[str, tuple[str, ...]] = {  # a moving object starts where its path stays in frame
    "left": ("top right", "bottom right"),
    "right": ("top left", "bottom left"),
    "up": ("bottom left", "bottom right"),
    "down": ("top left", "top right"),
    "still": POSITIONS,
}
SUPERSAMPLE = 4  # coverage is computed on a SUPERSAMPLE^2 sub-pixel grid (anti-aliased edges)

_SPLIT_ID = {name: i for i, name in enumerate(SPLITS)}
_KIND_ID = {"image": 0, "video": 1}


# ---- configuration checks ---------------------------------------------------------------------------
def parse_holdout(holdout: Sequence[str]) -> frozenset[tuple[str, str]]:
    """``["red triangle", ...]`` -> ``{("red", "triangle"), ...}``; raises ValueError on unknown names."""
    combos = set()
    for entry in holdout:
        words = str(entry).lower().split()
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES:
            raise ValueError(
                f"shapes.holdout entry {entry!r} must be '<colour> <shape>' with colour in {list(COLOURS)} "
                f"and shape in {list(SHAPES)}"
            )
        combos.add((words[0], words[1]))
    return frozenset(combos)


def allowed_combos(split: str, holdout: Sequence[str]) -> list[tuple[str, str]]:
    """Colour+shape combinations a split may draw, in palette order."""
    check_split(split)
    held = parse_holdout(holdout)
    every = [(c, s) for c in COLOURS for s in SHAPES]
    out = [cs for cs in every if (cs in held) == (split == "holdout")]
    if not out:
        raise ValueError(f"split {split!r} has no colour+shape combination left (holdout={list(holdout)})")
    return out


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown ShapesWorld split {split!r}; expected one of {list(SPLITS)}")
    return split


def check_config(cfg: ShapesConfig, video: bool = False) -> None:
    """Raise ValueError for settings ShapesWorld cannot draw."""
    if cfg.size < 16:
        raise ValueError(f"shapes.size must be >= 16, got {cfg.size}")
    if not 1 <= cfg.max_objects <= len(POSITIONS):
        raise ValueError(f"shapes.max_objects must be in [1, {len(POSITIONS)}], got {cfg.max_objects}")
    if not 0.0 <= cfg.jitter <= 0.05:
        raise ValueError(f"shapes.jitter must be in [0, 0.05], got {cfg.jitter}")
    if video:
        if cfg.frames < 5 or (cfg.frames - 1) % 4:
            raise ValueError(f"shapes.frames must be 1 + 4m with m >= 1 (5, 9, 13, 17, ...), got {cfg.frames}")
        if cfg.size % 2:
            raise ValueError(f"shapes.size must be even for yuv420p video, got {cfg.size}")
        if cfg.fps <= 0:
            raise ValueError(f"shapes.fps must be positive, got {cfg.fps}")
    parse_holdout(cfg.holdout)


# ---- rendering --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _grid(size: int, ss: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size * ss, dtype=np.float32) + 0.5) / ss  # sub-pixel centres, in pixels
    return centres.reshape(1, 1, -1), centres.reshape(1, -1, 1)  # X (1, 1, W*ss), Y (1, H*ss, 1)


def coverage(shape: str, cx: np.ndarray | float, cy: np.ndarray | float, side: float, size: int,
             ss: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by a shape, for N placements at once.

    Args:
        shape: one of ``SHAPES``.
        cx, cy: bounding-box centres in pixels, scalars or arrays of shape (N,).
        side: bounding-box side in pixels.
        size: image side in pixels.
        ss: sub-pixel grid per axis.

    Returns:
        float32 array (N, size, size) in [0, 1].
    """
    xs, ys = _grid(size, ss)
    dx = xs - np.asarray(cx, dtype=np.float32).reshape(-1, 1, 1)  # (N, 1, W*ss)
    dy = ys - np.asarray(cy, dtype=np.float32).reshape(-1, 1, 1)  # (N, H*ss, 1)
    h = side / 2
    if shape == "circle":
        inside = dx * dx + dy * dy <= h * h
    elif shape == "square":
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif shape == "triangle":  # apex up at dy = -h, base at dy = +h, base width = side
        inside = (dy <= h) & (np.abs(dx) <= (dy + h) * 0.5)
    elif shape == "diamond":
        inside = np.abs(dx) + np.abs(dy) <= h
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    n = inside.shape[0]
    return inside.reshape(n, size, ss, size, ss).mean(axis=(2, 4), dtype=np.float32)  # (N, H, W)


def _object_centre(obj: dict[str, Any]) -> tuple[float, float]:
    if "cx" in obj and "cy" in obj:
        return float(obj["cx"]), float(obj["cy"])
    if obj.get("position") not in ANCHORS:
        raise ValueError(f"object {obj} has neither cx/cy nor a valid position")
    return ANCHORS[obj["position"]]


def _composite(layers: list[tuple[np.ndarray, tuple[int, int, int]]], shape: tuple[int, ...]) -> np.ndarray:
    """Alpha-composite coverage maps (..., H, W) of colours over the background -> uint8 (..., H, W, 3)."""
    out = np.empty((*shape, 3), dtype=np.float32)
    out[...] = np.asarray(BACKGROUND, dtype=np.float32)
    for cov, rgb in layers:
        a = cov[..., None]
        out = out * (1.0 - a) + a * np.asarray(rgb, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_image(attrs: dict[str, Any], size: int = 32) -> np.ndarray:
    """Draw an image from its attributes. Returns uint8 (size, size, 3)."""
    layers = []
    for obj in attrs["objects"]:
        if obj["colour"] not in COLOURS:
            raise ValueError(f"unknown colour {obj['colour']!r}; expected one of {list(COLOURS)}")
        cx, cy = _object_centre(obj)
        cov = coverage(obj["shape"], cx * size, cy * size, SIDE[obj["size"]] * size, size)[0]  # (H, W)
        layers.append((cov, COLOURS[obj["colour"]]))
    return _composite(layers, (size, size))


def video_track(obj: dict[str, Any], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounding-box centre of a video object in every frame, as fractions: two float arrays (F,)."""
    cx, cy = _object_centre(obj)
    vx, vy = MOTION_VECTORS[obj.get("motion", "still")]
    t = np.linspace(0.0, 1.0, frames, dtype=np.float64)  # (F,)
    return cx + vx * TRAVEL * t, cy + vy * TRAVEL * t


def render_video(attrs: dict[str, Any], size: int = 32, frames: int = 17) -> np.ndarray:
    """Draw a video from its attributes. Returns uint8 (frames, size, size, 3)."""
    layers = []
    for obj in attrs["objects"]:
        xs, ys = video_track(obj, frames)
        cov = coverage(obj["shape"], xs * size, ys * size, SIDE[obj["size"]] * size, size)  # (F, H, W)
        layers.append((cov, COLOURS[obj["colour"]]))
    return _composite(layers, (frames, size, size))


# ---- sampling ---------------------------------------------------------------------------------------
def sample_rng(seed: int, split: str, kind: str, index: int) -> np.random.Generator:
    """The generator behind sample ``index`` of ``split``/``kind`` ('image' or 'video')."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed} index={index}")
    return np.random.default_rng([seed, _SPLIT_ID[check_split(split)], _KIND_ID[kind], index])


def _separated(a: dict[str, Any], b: dict[str, Any]) -> bool:
    reach = (SIDE[a["size"]] + SIDE[b["size"]]) / 2 + MIN_GAP
    return abs(a["cx"] - b["cx"]) >= reach or abs(a["cy"] - b["cy"]) >= reach


def _place(objects: list[dict[str, Any]], rng: np.random.Generator, jitter: float) -> None:
    """Set cx/cy near each object's anchor; objects keep at least MIN_GAP between their boxes."""
    for attempt in range(21):
        scale = jitter if attempt < 20 else 0.0  # the anchors alone always satisfy MIN_GAP
        offsets = rng.uniform(-scale, scale, size=(len(objects), 2))
        for obj, (ox, oy) in zip(objects, offsets):
            ax, ay = ANCHORS[obj["position"]]
            obj["cx"], obj["cy"] = round(ax + float(ox), 4), round(ay + float(oy), 4)
        if all(_separated(a, b) for i, a in enumerate(objects) for b in objects[i + 1:]):
            return


def sample_image_attrs(rng: np.random.Generator, cfg: ShapesConfig, split: str = "train") -> dict[str, Any]:
    """Draw the attributes of one image: 1..max_objects objects, distinct colours and positions."""
    combos = allowed_combos(split, cfg.holdout)
    n = int(rng.integers(1, cfg.max_objects + 1))
    positions = rng.permutation(len(POSITIONS))[:n]
    objects: list[dict[str, Any]] = []
    for i in range(n):
        used = {o["colour"] for o in objects}
        options = [cs for cs in combos if cs[0] not in used]
        if not options:  # e.g. a holdout set with fewer colours than objects
            break
        colour, shape = options[int(rng.integers(len(options)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        objects.append({"shape": shape, "colour": colour, "size": size, "position": POSITIONS[int(positions[i])]})
    _place(objects, rng, cfg.jitter)
    return {"kind": "image", "objects": objects}


def sample_video_attrs(rng: np.random.Generator, cfg: ShapesConfig, split: str = "train") -> dict[str, Any]:
    """Draw the attributes of one video: one object, a motion and a start position on its path."""
    combos = allowed_combos(split, cfg.holdout)
    colour, shape = combos[int(rng.integers(len(combos)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    starts = MOTION_STARTS[motion]
    obj = {"shape": shape, "colour": colour, "size": size, "position": starts[int(rng.integers(len(starts)))],
           "motion": motion}
    _place([obj], rng, cfg.jitter)
    return {"kind": "video", "objects": [obj]}


def sample_image(
    rng: np.random.Generator, cfg: ShapesConfig, split: str = "train"
) -> tuple[np.ndarray, dict[str, Any], str]:
    """One image: (uint8 (H, W, 3), attrs, caption)."""
    attrs = sample_image_attrs(rng, cfg, split)
    return render_image(attrs, cfg.size), attrs, caption_for(attrs, rng)


def sample_video(
    rng: np.random.Generator, cfg: ShapesConfig, split: str = "train"
) -> tuple[np.ndarray, dict[str, Any], str]:
    """One video: (uint8 (F, H, W, 3), attrs, caption)."""
    attrs = sample_video_attrs(rng, cfg, split)
    return render_video(attrs, cfg.size, cfg.frames), attrs, caption_for(attrs, rng)


# ---- captions ---------------------------------------------------------------------------------------
_SIZE_WORDS = {"small": ("small", "small", "little"), "large": ("large", "large", "big")}
_POSITION_WORDS = {p: (p, f"{p} corner") for p in POSITIONS if p != "center"} | {"center": ("center", "middle")}
_DIRECTION_WORDS = {"left": ("left", "to the left"), "right": ("right", "to the right"),
                    "up": ("up", "upward"), "down": ("down", "downward")}
_OBJECT_TEMPLATES = (
    "a {size} {colour} {shape} in the {pos}",
    "a {size} {colour} {shape} at the {pos}",
    "a {size} {colour} {shape} located in the {pos}",
    "a {colour} {shape} of {size} size in the {pos}",
    "a {size} {colour} {shape} placed at the {pos}",
)
_IMAGE_WRAPPERS = ("{x}", "there is {x}", "an image of {x}", "a picture showing {x}", "{x} on a black background")
_JOINERS = (" and ", "; ", " together with ")
_MOVING_TEMPLATES = (
    "a {size} {colour} {shape} moving {dir} from the {pos}",
    "a {size} {colour} {shape} moves {dir}, starting in the {pos}",
    "starting in the {pos}, a {size} {colour} {shape} slides {dir}",
    "a {size} {colour} {shape} travelling {dir} from the {pos}",
)
_STILL_TEMPLATES = (
    "a {size} {colour} {shape} staying still in the {pos}",
    "a {size} {colour} {shape} resting in the {pos}",
    "a motionless {size} {colour} {shape} in the {pos}",
    "a {size} {colour} {shape} that does not move, in the {pos}",
)
_VIDEO_WRAPPERS = ("{x}", "a video of {x}", "a clip of {x}")
_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _words(obj: dict[str, Any], rng: np.random.Generator) -> dict[str, str]:
    return {"size": _pick(rng, _SIZE_WORDS[obj["size"]]), "colour": obj["colour"], "shape": obj["shape"],
            "pos": _pick(rng, _POSITION_WORDS[obj["position"]])}


def caption_for(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    """A caption for ``attrs`` drawn from the templates (``mm1d.evaluation.judge.parse_caption`` inverts it)."""
    objects = attrs["objects"]
    if not objects:
        raise ValueError("cannot caption a scene without objects")
    if attrs.get("kind") == "video":
        obj = objects[0]
        words = _words(obj, rng)
        if obj["motion"] == "still":
            phrase = _pick(rng, _STILL_TEMPLATES).format(**words)
        else:
            phrase = _pick(rng, _MOVING_TEMPLATES).format(dir=_pick(rng, _DIRECTION_WORDS[obj["motion"]]), **words)
        text = _pick(rng, _VIDEO_WRAPPERS).format(x=phrase)
    else:
        phrases = [_pick(rng, _OBJECT_TEMPLATES).format(**_words(o, rng)) for o in objects]
        if len(phrases) == 1:
            body = phrases[0]
        elif len(phrases) == 2:
            body = _pick(rng, _JOINERS).join(phrases)
        else:
            body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        text = _pick(rng, _IMAGE_WRAPPERS).format(x=body)
    return _ARTICLE.sub("an ", text)


# ---- batches for training ---------------------------------------------------------------------------
@dataclass
class ShapesBatch:
    """A batch of ShapesWorld samples.

    Attributes:
        pixels: float32 in [-1, 1]; (B, 3, H, W) for images, (B, 3, F, H, W) for videos.
        captions: B captions.
        attrs: B attribute dicts.
    """

    pixels: torch.Tensor
    captions: list[str]
    attrs: list[dict[str, Any]]


def to_unit_range(array: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 in [-1, 1] with channels moved first: (3, ..., H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(array)).float().div_(127.5).sub_(1.0)
    return x.movedim(-1, 0).contiguous()


def make_batch(seed: int, index: int, n: int, split: str = "train", size: int | None = None,
               kind: str = "image", cfg: ShapesConfig | None = None, frames: int | None = None) -> ShapesBatch:
    """Samples ``index .. index + n - 1`` of a split, in memory (each one depends on (seed, index) only).

    Args:
        seed: world seed.
        index: first sample index.
        n: batch size.
        split: 'train', 'val' or 'holdout'.
        size: image side; overrides ``cfg.size``.
        kind: 'image' -> pixels (B, 3, H, W); 'video' -> pixels (B, 3, F, H, W).
        cfg: ShapesWorld settings (defaults to ``ShapesConfig()``).
        frames: frames per video; overrides ``cfg.frames``.
    """
    cfg = cfg or ShapesConfig()
    if size is not None or frames is not None:
        cfg = ShapesConfig(**{**cfg.__dict__, "size": size or cfg.size, "frames": frames or cfg.frames})
    if kind not in _KIND_ID:
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    check_config(cfg, video=kind == "video")
    sampler = sample_image if kind == "image" else sample_video
    arrays, captions, attrs = [], [], []
    for i in range(index, index + n):
        array, a, caption = sampler(sample_rng(seed, split, kind, i), cfg, split)
        arrays.append(array)
        captions.append(caption)
        attrs.append(a)
    pixels = to_unit_range(np.stack(arrays)).movedim(0, 1).contiguous()  # (3, B, ...) -> (B, 3, ...)
    return ShapesBatch(pixels=pixels, captions=captions, attrs=attrs)


class ShapesWorld:
    """A seeded ShapesWorld: ``world.image('val', 7)`` always returns the same sample."""

    def __init__(self, cfg: ShapesConfig | None = None, seed: int = 0):
        self.cfg = cfg or ShapesConfig()
        self.seed = seed
        check_config(self.cfg)

    def image(self, split: str, index: int) -> tuple[np.ndarray, dict[str, Any], str]:
        """Image ``index`` of ``split``: (uint8 (H, W, 3), attrs, caption)."""
        return sample_image(sample_rng(self.seed, split, "image", index), self.cfg, split)

    def video(self, split: str, index: int) -> tuple[np.ndarray, dict[str, Any], str]:
        """Video ``index`` of ``split``: (uint8 (F, H, W, 3), attrs, caption)."""
        check_config(self.cfg, video=True)
        return sample_video(sample_rng(self.seed, split, "video", index), self.cfg, split)

    def batch(self, split: str, index: int, n: int, kind: str = "image") -> ShapesBatch:
        """See ``make_batch``."""
        return make_batch(self.seed, index, n, split, kind=kind, cfg=self.cfg)


if __name__ == "__main__":
    from mm1d.data.shapes_writer import main

    main()
