"""The ShapesWorld judge: recovers attributes from pixels and from captions, analytically (nothing learned).

Images (``judge_image``), in JPEG's (Y, Cb, Cr) space, where compression keeps luma sharp and blurs
chroma:
  1. foreground is luma above ``FG_LUMA``; each 8-connected component big enough is one object
     (ShapesWorld keeps objects apart by ``MIN_GAP``);
  2. colour: the object's interior (its brightest pixels) is compared with each palette colour by luma
     and by chroma direction, allowing chroma to fade (``classify_colour``);
  3. coverage: luma / palette luma per pixel, so anti-aliased rims count partly;
  4. shape and size: every (shape, size) template from ``mm1d.data.shapes.coverage`` is placed on the
     object's centroid and scored by soft IoU with the object's coverage map; the best wins. This is the
     fill-ratio/moment test done exactly: circles, squares, triangles and diamonds fill their boxes
     differently and triangles carry their mass low;
  5. position: the fitted box centre's nearest anchor.

Videos (``judge_video``): the dominant colour over all frames, the centroid of its heaviest object in
each frame, and a least-squares line through that track. A displacement under 35% of the travel of a
moving object means 'still'; otherwise the larger axis and its sign give left/right/up/down. Shape, size
and start position come from the first frame.

Scoring: ground truth and judged objects are matched as sets (an assignment that maximises the number
of equal attributes). Per-attribute accuracy counts ground-truth objects whose matched object has the
same value (unmatched objects count as wrong); ``image_accuracy`` counts images whose judged set equals
the ground-truth set exactly (same count, every attribute of every object).

Captions (``parse_caption``) are read back with word patterns covering every template and a few
synonyms; ``score_captions`` scores them like images.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from mm1d.data.shapes import (
    ANCHORS,
    BACKGROUND,
    COLOURS,
    MOTIONS,
    POSITIONS,
    SHAPES,
    SIDE,
    SIZES,
    TRAVEL,
    coverage,
)

IMAGE_ATTRS: tuple[str, ...] = ("shape", "colour", "size", "position")
VIDEO_ATTRS: tuple[str, ...] = IMAGE_ATTRS + ("motion",)

_NAMES = list(COLOURS)
_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                   dtype=np.float32)  # JPEG's full-range RGB -> (Y, Cb, Cr)
_PAL_YCC = (np.array([COLOURS[n] for n in _NAMES], np.float32) - np.array(BACKGROUND, np.float32)) @ _TO_YCC.T
_PAL_Y, _PAL_C = _PAL_YCC[:, 0], _PAL_YCC[:, 1:]  # (K,), (K, 2)
_PAL_C_SQ = (_PAL_C**2).sum(1)  # (K,)
FG_LUMA = 0.4 * float(_PAL_Y.min())  # least luma of a foreground pixel
LUMA_TOL, CHROMA_TOL = 30.0, 20.0  # scales of the colour distance
MIN_SATURATION = 0.25  # chroma may fade to this share of the palette colour's (chroma subsampling)
INTERIOR = 0.75  # pixels with luma >= INTERIOR * the object's brightest are its interior
MIN_OBJECT_FRACTION = 0.35  # least object weight, relative to the smallest object ShapesWorld draws
STILL_FRACTION = 0.35  # displacements below this share of TRAVEL count as 'still'
_EIGHT = np.ones((3, 3), dtype=bool)


# ---- input handling ---------------------------------------------------------------------------------
def to_hwc(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image or video in any of our layouts -> float32 (..., H, W, 3) in [0, 255].

    Accepted: uint8 numpy (H, W, 3) / (F, H, W, 3); uint8 tensors (3, H, W) / (3, F, H, W); float
    tensors or arrays in [-1, 1] in the same layouts (the model's output range).
    """
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu()
        arr = arr.float().numpy() if arr.dtype != torch.uint8 else arr.numpy()
        if arr.ndim in (3, 4) and arr.shape[0] == 3:
            arr = np.moveaxis(arr, 0, -1)  # (3, ..., H, W) -> (..., H, W, 3)
    else:
        arr = np.asarray(x)
        if arr.ndim in (3, 4) and arr.shape[-1] != 3 and arr.shape[0] == 3:
            arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image or video, got shape {tuple(np.shape(x))}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    return (np.clip(arr.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5


def _ycc(pix: np.ndarray) -> np.ndarray:
    """float (..., H, W, 3) RGB in [0, 255] -> (..., H, W, 3) (Y, Cb, Cr) relative to the background."""
    return (pix - np.array(BACKGROUND, np.float32)) @ _TO_YCC.T


def classify_colour(y: float, c: np.ndarray) -> int:
    """Palette index for an object's interior luma ``y`` and mean chroma ``c`` = (Cb, Cr).

    The distance allows the chroma to fade towards grey (JPEG and yuv420p subsample chroma, so small
    objects lose saturation) but not to turn: it is the distance from ``c`` to the segment
    ``[MIN_SATURATION, 1.1] * palette chroma``, plus the luma difference.
    """
    beta = np.clip((_PAL_C @ c) / np.maximum(_PAL_C_SQ, 1e-6), MIN_SATURATION, 1.1)  # (K,)
    beta = np.where(_PAL_C_SQ < 25.0, 0.0, beta)  # white/grey: no chroma to fade
    chroma = np.linalg.norm(c[None] - beta[:, None] * _PAL_C, axis=1) / CHROMA_TOL
    luma = (y - _PAL_Y) / LUMA_TOL
    return int(np.argmin(chroma**2 + luma**2))


def _min_weight(size: int) -> float:
    smallest = 0.5 * (SIDE["small"] * size) ** 2  # a small triangle or diamond, in pixels
    return MIN_OBJECT_FRACTION * smallest


def _objects(ycc: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Objects of one frame ycc (H, W, 3): (palette index, coverage map float32 (H, W)), heaviest first.

    Foreground is luma above ``FG_LUMA``; each 8-connected component is one object. Its colour comes
    from the interior's mean (Y, Cb, Cr); its coverage map is luma / palette luma over the component
    grown by one pixel (the faint anti-aliased rim), without pixels of other components.
    """
    size = ycc.shape[0]
    luma = ycc[..., 0]
    labels, n = ndimage.label(luma >= FG_LUMA, structure=_EIGHT)
    found = []
    for j in range(1, n + 1):
        mask = labels == j
        top = luma[mask].max()
        interior = mask & (luma >= INTERIOR * top)
        k = classify_colour(float(luma[interior].mean()), ycc[interior][:, 1:].mean(0))
        region = ndimage.binary_dilation(mask, structure=_EIGHT) & ((labels == 0) | mask)
        m = np.where(region, np.clip(luma / _PAL_Y[k], 0.0, 1.0), 0.0).astype(np.float32)
        if m.sum() >= _min_weight(size):
            found.append((k, m))
    return sorted(found, key=lambda o: -float(o[1].sum()))


def _centroid(weights: np.ndarray) -> tuple[float, float]:
    """Weighted centroid (x, y) in pixels of a (H, W) map, pixel centres at +0.5."""
    total = weights.sum()
    ys, xs = np.indices(weights.shape, dtype=np.float32)
    return float((weights * (xs + 0.5)).sum() / total), float((weights * (ys + 0.5)).sum() / total)


def _centre_offset(shape: str, side: float) -> float:
    """Vertical distance from the bounding-box centre down to the area centroid."""
    return side / 6.0 if shape == "triangle" else 0.0


def _fit_template(m: np.ndarray, size: int) -> tuple[str, str, float, float, float]:
    """Best (shape, size name, box centre x, y in pixels, soft IoU) for a coverage map m (H, W)."""
    gx, gy = _centroid(m)
    best = ("", "", 0.0, 0.0, -1.0)
    for shape in SHAPES:
        for size_name in SIZES:
            side = SIDE[size_name] * size
            cx, cy = gx, gy - _centre_offset(shape, side)
            t = coverage(shape, cx, cy, side, size)[0]  # (H, W)
            iou = float(np.minimum(m, t).sum() / max(np.maximum(m, t).sum(), 1e-6))
            if iou > best[4]:
                best = (shape, size_name, cx, cy, iou)
    return best


def _nearest_position(fx: float, fy: float) -> str:
    return min(POSITIONS, key=lambda p: (ANCHORS[p][0] - fx) ** 2 + (ANCHORS[p][1] - fy) ** 2)


def _describe(k: int, m: np.ndarray) -> dict[str, Any]:
    size = m.shape[0]
    shape, size_name, cx, cy, iou = _fit_template(m, size)
    fx, fy = cx / size, cy / size
    return {"shape": shape, "colour": _NAMES[k], "size": size_name, "position": _nearest_position(fx, fy),
            "cx": round(fx, 4), "cy": round(fy, 4), "iou": round(iou, 4)}


# ---- images -----------------------------------------------------------------------------------------
def judge_image(image: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Recover the objects of one ShapesWorld-style image.

    Args:
        image: uint8 (H, W, 3) array, uint8 (3, H, W) tensor, or float (3, H, W) in [-1, 1]. Square.

    Returns:
        ``{"kind": "image", "objects": [{"shape", "colour", "size", "position", "cx", "cy", "iou"}]}``
        with cx/cy the fitted box centre as fractions of the side, heaviest object first.
    """
    pix = to_hwc(image)
    if pix.ndim != 3:
        raise ValueError(f"judge_image expects one image, got shape {pix.shape}")
    if pix.shape[0] != pix.shape[1]:
        raise ValueError(f"ShapesWorld images are square, got {pix.shape[0]}x{pix.shape[1]}")
    return {"kind": "image", "objects": [_describe(k, m) for k, m in _objects(_ycc(pix))]}


# ---- videos -----------------------------------------------------------------------------------------
def judge_video(video: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Recover the moving (or still) object of a ShapesWorld-style video.

    Args:
        video: uint8 (F, H, W, 3) array, uint8 (3, F, H, W) tensor, or float (3, F, H, W) in [-1, 1].

    Returns:
        ``{"kind": "video", "objects": [{"shape", "colour", "size", "position", "motion", "dx", "dy"}]}``
        (empty objects when nothing is visible); position is the start position; dx/dy the fitted
        displacement over the clip as fractions of the side.
    """
    pix = to_hwc(video)
    if pix.ndim != 4:
        raise ValueError(f"judge_video expects (F, H, W, 3) frames, got shape {pix.shape}")
    f, size = pix.shape[0], pix.shape[1]
    per_frame = [_objects(_ycc(frame)) for frame in pix]
    weights = np.zeros(len(_NAMES))
    for objs in per_frame:
        for k, m in objs:
            weights[k] += m.sum()
    if weights.max() <= 0:
        return {"kind": "video", "objects": []}
    k = int(weights.argmax())  # the dominant colour; in each frame its heaviest object is tracked
    times, xs, ys, first = [], [], [], None
    for t, objs in enumerate(per_frame):
        mine = [m for kk, m in objs if kk == k]
        if not mine:
            continue
        first = first if first is not None else mine[0]
        x, y = _centroid(mine[0])
        times.append(t / max(f - 1, 1))
        xs.append(x / size)
        ys.append(y / size)
    dx = dy = 0.0
    if len(times) >= 2:
        dx = float(np.polyfit(times, xs, 1)[0])  # slope over the whole clip = displacement
        dy = float(np.polyfit(times, ys, 1)[0])
    if max(abs(dx), abs(dy)) < STILL_FRACTION * TRAVEL:
        motion = "still"
    elif abs(dx) >= abs(dy):
        motion = "right" if dx > 0 else "left"
    else:
        motion = "down" if dy > 0 else "up"
    assert first is not None
    obj = {key: v for key, v in _describe(k, first).items() if key in ("shape", "colour", "size", "position")}
    obj.update(motion=motion, dx=round(dx, 4), dy=round(dy, 4))
    return {"kind": "video", "objects": [obj]}


# ---- scoring ----------------------------------------------------------------------------------------
def compare(pred: dict[str, Any], truth: dict[str, Any], keys: Sequence[str]) -> tuple[bool, dict[str, int], int]:
    """Match judged objects to ground-truth objects as sets.

    Returns:
        (exact, correct, n): ``exact`` when the counts agree and every matched pair agrees on every key;
        ``correct[key]`` the number of ground-truth objects whose match has the same value; ``n`` the
        number of ground-truth objects.
    """
    gt, pr = truth.get("objects", []), pred.get("objects", [])
    correct = dict.fromkeys(keys, 0)
    if not gt or not pr:
        return len(gt) == len(pr), correct, len(gt)
    agree = np.array([[[g.get(k) == p.get(k) for k in keys] for p in pr] for g in gt], dtype=np.int64)  # (G,P,A)
    rows, cols = linear_sum_assignment(-agree.sum(-1))
    for r, c in zip(rows, cols):
        for i, k in enumerate(keys):
            correct[k] += int(agree[r, c, i])
    exact = len(gt) == len(pr) and all(agree[r, c].all() for r, c in zip(rows, cols))
    return exact, correct, len(gt)


def _tally(preds: list[dict], truths: list[dict], keys: Sequence[str]) -> dict[str, int]:
    """Raw counts: entries, exact entries, entries with the right object count, objects, per-key hits."""
    if len(preds) != len(truths):
        raise ValueError(f"got {len(preds)} predictions for {len(truths)} ground-truth entries")
    counts = {"entries": len(truths), "exact": 0, "count_ok": 0, "objects": 0} | dict.fromkeys(keys, 0)
    for p, t in zip(preds, truths):
        ok, correct, n = compare(p, t, keys)
        counts["exact"] += ok
        counts["count_ok"] += len(p.get("objects", [])) == len(t.get("objects", []))
        counts["objects"] += n
        for k in keys:
            counts[k] += correct[k]
    return counts


def _rates(counts: dict[str, int], keys: Sequence[str], prefix: str, exact_name: str) -> dict[str, float]:
    if counts["entries"] == 0:
        raise ValueError("nothing to score")
    out = {exact_name: counts["exact"] / counts["entries"],
           f"{prefix}count_accuracy": counts["count_ok"] / counts["entries"]}
    for k in keys:
        out[f"{prefix}{k}_accuracy"] = counts[k] / max(counts["objects"], 1)
    return out


def score_images(images: Sequence[Any] | torch.Tensor, attrs_list: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Judge images against their ground-truth attrs.

    Args:
        images: a sequence of images (see ``judge_image``) or a tensor (B, 3, H, W).
        attrs_list: ground-truth ``{"objects": [...]}`` per image.

    Returns:
        ``image_accuracy`` (all attributes of all objects exact), ``count_accuracy`` and
        ``{shape,colour,size,position}_accuracy``, plus ``num_images``.
    """
    preds = [judge_image(img) for img in images]
    out = _rates(_tally(preds, list(attrs_list), IMAGE_ATTRS), IMAGE_ATTRS, "", "image_accuracy")
    return {**out, "num_images": len(preds)}


def score_videos(videos: Sequence[Any] | torch.Tensor, attrs_list: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Judge videos against their ground-truth attrs.

    Args:
        videos: a sequence of videos (see ``judge_video``) or a tensor (B, 3, F, H, W).
        attrs_list: ground-truth ``{"objects": [{..., "motion"}]}`` per video.

    Returns:
        ``video_motion_accuracy``, ``video_colour_accuracy``, ``video_{shape,size,position}_accuracy``,
        ``video_accuracy`` (everything exact) and ``num_videos``.
    """
    preds = [judge_video(v) for v in videos]
    out = _rates(_tally(preds, list(attrs_list), VIDEO_ATTRS), VIDEO_ATTRS, "video_", "video_accuracy")
    out.pop("video_count_accuracy")
    return {**out, "num_videos": len(preds)}


# ---- captions ---------------------------------------------------------------------------------------
_SHAPE_WORDS = {"circle": "circle", "disc": "circle", "disk": "circle", "ball": "circle", "square": "square",
                "box": "square", "triangle": "triangle", "diamond": "diamond", "rhombus": "diamond"}
_COLOUR_WORDS = {c: c for c in COLOURS} | {"violet": "purple", "magenta": "purple", "aqua": "cyan",
                                           "turquoise": "cyan"}
_SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large",
               "huge": "large"}
_POS_RE = re.compile(r"\b(top|upper|bottom|lower)[\s-]+(left|right)\b|\b(center|centre|middle)\b")
_DIR_RE = re.compile(r"\b(left|right|up|upwards?|down|downwards?)\b")
_STILL_RE = re.compile(r"\b(still|motionless|resting|static|stationary|not move|does not move|doesn't move)\b")
_VIDEO_RE = re.compile(r"\b(mov(e|es|ing)|slid(e|es|ing)|travel(s|ling|ing)?|still|motionless|resting|static|"
                       r"stationary|not move)\b")
_SPLIT_RE = re.compile(r"\s*(?:;|,|\band\b|\bas well as\b|\btogether with\b|\bplus\b)\s*")
_WORD_RE = re.compile(r"[a-z']+")


def _position_of(match: re.Match[str]) -> str:
    if match.group(3):
        return "center"
    vert = "top" if match.group(1) in ("top", "upper") else "bottom"
    return f"{vert} {match.group(2)}"


def _parse_object(text: str) -> dict[str, Any]:
    words = _WORD_RE.findall(text)
    pos = _POS_RE.search(text)
    obj = {
        "shape": next((_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS), None),
        "colour": next((_COLOUR_WORDS[w] for w in words if w in _COLOUR_WORDS), None),
        "size": next((_SIZE_WORDS[w] for w in words if w in _SIZE_WORDS), None),
        "position": _position_of(pos) if pos else None,
    }
    return obj


def parse_caption(text: str, kind: str = "auto") -> dict[str, Any]:
    """Read attributes back from a caption.

    Args:
        text: a caption (any of ShapesWorld's templates, or similar free text).
        kind: 'image', 'video' or 'auto' (video when the text talks about motion).

    Returns:
        ``{"kind": ..., "objects": [...]}`` like ShapesWorld attrs; unknown attributes are None. For an
        image every clause with a shape word is one object; a video has one object with a ``motion``.
    """
    t = text.lower().strip()
    if kind == "auto":
        kind = "video" if _VIDEO_RE.search(t) else "image"
    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image', 'video' or 'auto', got {kind!r}")
    if kind == "video":
        obj = _parse_object(t)
        rest = _POS_RE.sub(" ", t)  # 'top left' must not read as the direction 'left'
        direction = _DIR_RE.search(rest)
        if direction:
            obj["motion"] = direction.group(1).replace("wards", "").replace("ward", "")
        else:
            obj["motion"] = "still" if _STILL_RE.search(rest) else None
        has_any = any(v is not None for v in obj.values())
        return {"kind": "video", "objects": [obj] if has_any else []}
    objects = []
    for clause in _SPLIT_RE.split(t):
        words = set(_WORD_RE.findall(clause))
        shapes_here = [w for w in _WORD_RE.findall(clause) if w in _SHAPE_WORDS]
        if not shapes_here:
            continue
        if len(shapes_here) == 1 or not (words & set(_COLOUR_WORDS)):
            objects.append(_parse_object(clause))
            continue
        # several shapes without a separator: cut before each determiner that starts a new object
        for piece in re.split(r"\b(?=(?:a|an|the|one)\s)", clause):
            if any(w in _SHAPE_WORDS for w in _WORD_RE.findall(piece)):
                objects.append(_parse_object(piece))
    return {"kind": "image", "objects": objects}


def score_captions(texts: Sequence[str], attrs_list: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Parse captions and score them against ground-truth attrs (images and videos may be mixed).

    Returns:
        ``caption_accuracy`` (every attribute exact), ``caption_count_accuracy``,
        ``caption_{shape,colour,size,position}_accuracy`` over all objects,
        ``caption_motion_accuracy`` over video objects (when there are videos), and ``num_captions``.
    """
    if len(texts) != len(attrs_list):
        raise ValueError(f"got {len(texts)} captions for {len(attrs_list)} ground-truth entries")
    groups: dict[str, tuple[list[dict], list[dict]]] = {"image": ([], []), "video": ([], [])}
    for text, attrs in zip(texts, attrs_list):
        kind = "video" if attrs.get("kind") == "video" else "image"
        groups[kind][0].append(parse_caption(text, kind))
        groups[kind][1].append(attrs)
    image = _tally(*groups["image"], IMAGE_ATTRS)
    video = _tally(*groups["video"], VIDEO_ATTRS)
    total = {k: image.get(k, 0) + video.get(k, 0) for k in video}
    out = _rates(total, IMAGE_ATTRS, "caption_", "caption_accuracy")
    if video["entries"]:
        out["caption_motion_accuracy"] = video["motion"] / max(video["objects"], 1)
    return {**out, "num_captions": len(texts)}


__all__ = ["IMAGE_ATTRS", "VIDEO_ATTRS", "MOTIONS", "compare", "judge_image", "judge_video", "parse_caption",
           "score_captions", "score_images", "score_videos", "to_hwc"]
