"""Inputs of the zero-shot sweeps (see ``mm1d.evaluation.zeroshot``): ShapesBench groups, prompt files,
folders to caption with their COCO-format references, reference sets for FID/FVD, and the optional metric
networks (FID Inception, FVD I3D, CLIP). Everything a run needs is checked here before any generation, so a
missing file fails fast with an error naming it and how to get it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm1d.config import ShapesConfig, ZeroShotEvalConfig
from mm1d.data.shapes import SPLITS, caption_for, check_split, make_batch

SPLIT_LABELS: dict[str, str] = {"train": "train", "val": "seen", "holdout": "heldout"}
SPLIT_SEED_STRIDE = 1_000_000  # sample i of split s uses seed + SPLITS.index(s) * stride + i
EXTRA_REFERENCES = 4  # ShapesWorld captioning: template rewordings added to each sample's own caption
PROMPTS_HELP = ("a prompt file is .txt (one prompt per line), .jsonl (objects with 'prompt', 'caption' or 'text'; "
                "GenEval's prompts/evaluation_metadata.jsonl from https://github.com/djghosh13/geneval works as is) "
                "or a COCO captions .json (annotations/captions_val2014.json from https://cocodataset.org/#download)")
REFERENCE_IMAGES_HELP = ("FID compares with a folder of real images, e.g. COCO val2014 images "
                         "(https://cocodataset.org/#download); pass it with --reference DIR")
REFERENCE_VIDEOS_HELP = ("FVD compares with a folder of real videos (.mp4/.webm/.avi/.mov/.mkv), e.g. the MSR-VTT "
                         "test clips or UCF-101; pass it with --reference DIR")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_PROMPT_KEYS = ("prompt", "caption", "text")


@dataclass
class Group:
    """One evaluated set: a ShapesWorld split, the prompt file, or a folder of inputs.

    Attributes:
        label: metric prefix (``"seen"``, ``"heldout"``; ``""`` for a prompt file or folder).
        prompts: text-to-X prompts; for captioning the input's own caption (``""`` when unknown).
        attrs: ShapesWorld ground truth per input (None: nothing for the judge).
        pixels: the ground-truth renders / the inputs to caption, ``(N, 3, H, W)`` or ``(N, 3, F, H, W)``,
            float in [-1, 1] or uint8; None for a prompt file. Read them through :meth:`batch`.
        seed_offset: added to the run seed, so each split has its own noise.
        records: one metadata record per input (GenEval's ``metadata.jsonl`` line for prompt files).
        references: captioning: reference captions per input (None: no CIDEr/BLEU).
        ids: cached full tokenization of ``pixels`` (set by the sweep).
    """

    label: str
    prompts: list[str]
    attrs: list[dict[str, Any]] | None = None
    pixels: torch.Tensor | None = None
    seed_offset: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    references: list[list[str]] | None = None
    ids: torch.Tensor | None = None

    @property
    def prefix(self) -> str:
        return f"{self.label}/" if self.label else ""

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Inputs ``start..stop-1`` as float in [-1, 1] (folders are held as uint8 to save memory)."""
        if self.pixels is None:
            raise ValueError("this group has no pixels (a prompt file)")
        x = self.pixels[start:stop]
        return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x

    def __len__(self) -> int:
        return len(self.prompts)


# ---- ShapesBench -------------------------------------------------------------------------------------------
def shapes_config(cfg: ZeroShotEvalConfig, size: int, frames: int) -> ShapesConfig:
    """The ShapesWorld settings of a run: the tokenizer's size, the run's frames, holdout and object count."""
    d = ShapesConfig()
    return ShapesConfig(size=size, frames=frames or d.frames, max_objects=cfg.max_objects or d.max_objects,
                        fps=d.fps, jitter=d.jitter, holdout=list(cfg.holdout) if cfg.holdout is not None else d.holdout)


def shapes_groups(cfg: ZeroShotEvalConfig, kind: str, size: int, frames: int = 0) -> list[Group]:
    """ShapesBench: the first ``cfg.num`` samples of each split in ``cfg.splits`` (val = seen colour+shape
    combinations, holdout = held-out ones), with captions, attributes, renders and reference captions."""
    if cfg.num < 1:
        raise ValueError(f"num must be >= 1 for ShapesBench, got {cfg.num}")
    if not cfg.splits:
        raise ValueError("no ShapesWorld splits given (use val and/or holdout)")
    shapes = shapes_config(cfg, size, frames)
    groups = []
    for split in cfg.splits:
        check_split(split)
        s_id = SPLITS.index(split)
        batch = make_batch(cfg.data_seed, 0, cfg.num, split, kind=kind, cfg=shapes)
        refs = [[cap] + [caption_for(a, np.random.default_rng([cfg.data_seed, 7, s_id, i, j]))
                         for j in range(EXTRA_REFERENCES)]
                for i, (cap, a) in enumerate(zip(batch.captions, batch.attrs))]
        records = [{"prompt": cap, "split": split, "index": i} for i, cap in enumerate(batch.captions)]
        groups.append(Group(SPLIT_LABELS[split], list(batch.captions), list(batch.attrs), batch.pixels,
                            s_id * SPLIT_SEED_STRIDE, records, refs))
    return groups


# ---- prompt files ------------------------------------------------------------------------------------------
def _prompt_of(record: Any, where: str) -> dict[str, Any]:
    if isinstance(record, str):
        return {"prompt": record}
    if isinstance(record, dict):
        for key in _PROMPT_KEYS:
            if isinstance(record.get(key), str) and record[key].strip():
                return {**record, "prompt": record[key].strip()}
    raise ValueError(f"{where}: expected a string or an object with one of {list(_PROMPT_KEYS)}, got {record!r:.120}")


def read_prompts(path: str | Path, limit: int = 0) -> list[dict[str, Any]]:
    """Prompt records ``{"prompt": str, ...the file's fields}`` from a .txt, .jsonl or COCO .json file.

    A COCO captions file gives one prompt per image (its first caption, by image id), with ``image_id``.

    Raises:
        FileNotFoundError: the file is missing (naming the formats and where to get them).
        ValueError: a line or record has no prompt, or the file is empty.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}; {PROMPTS_HELP}")
    records: list[dict[str, Any]] = []
    if p.suffix.lower() == ".jsonl":
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(_prompt_of(json.loads(line), f"{p}:{n}"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{n} is not valid JSON: {e}") from e
    elif p.suffix.lower() == ".json":
        data = json.loads(p.read_text())
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            first: dict[Any, str] = {}
            for a in data["annotations"]:
                if "image_id" not in a or "caption" not in a:
                    raise ValueError(f"{p}: COCO annotations need image_id and caption, got {a!r:.120}")
                first.setdefault(a["image_id"], str(a["caption"]).strip())
            records = [{"prompt": c, "image_id": i} for i, c in sorted(first.items(), key=lambda kv: str(kv[0]))]
        elif isinstance(data, list):
            records = [_prompt_of(r, f"{p}[{n}]") for n, r in enumerate(data)]
        else:
            raise ValueError(f"{p}: expected a COCO captions file or a JSON list of prompts; {PROMPTS_HELP}")
    else:
        records = [{"prompt": line.strip()} for line in p.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{p} holds no prompts; {PROMPTS_HELP}")
    return records[:limit] if limit else records


def prompt_group(cfg: ZeroShotEvalConfig) -> Group:
    """The prompt-file benchmark as one group (no ground truth)."""
    if not cfg.prompts:
        raise ValueError(f"--benchmark prompts needs --prompts FILE; {PROMPTS_HELP}")
    records = read_prompts(cfg.prompts, cfg.num)
    return Group("", [r["prompt"] for r in records], records=records)


# ---- folders to caption and their references ----------------------------------------------------------------
def _media_files(root: Path, suffixes: tuple[str, ...], what: str, help_text: str) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {root}; {help_text}")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"no {what} ({', '.join(suffixes)}) under {root}; {help_text}")
    return files


def load_media(path: Path, modality: str, size: int, frames: int) -> torch.Tensor:
    """One image ``(3, size, size)`` or video ``(3, frames, size, size)`` file as uint8, centre-cropped square."""
    if modality == "video":
        from mm1d.tokenization.video_io import read_video

        return read_video(path, num_frames=frames, size=size)
    from mm1d.data.media import decode_image

    x = decode_image(path)  # (3, H, W) uint8
    h, w = x.shape[-2:]
    side = min(h, w)
    x = x[:, (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]  # (3, side, side)
    if side == size:
        return x
    y = torch.nn.functional.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)[0]
    return y.round().clamp(0, 255).to(torch.uint8)


def _reference_index(path: Path) -> dict[str, list[str]]:
    """COCO-format references keyed by file name (from ``images``) and by image id (as text)."""
    from mm1d.evaluation.captions import load_coco_references

    refs = load_coco_references(path)
    data = json.loads(Path(path).read_text())
    index = {str(k): v for k, v in refs.items()}
    for im in data.get("images", []) if isinstance(data, dict) else []:
        if "file_name" in im and im.get("id") in refs:
            index[Path(im["file_name"]).name] = refs[im["id"]]
            index[Path(im["file_name"]).stem] = refs[im["id"]]
    return index


def _refs_for(file: Path, index: dict[str, list[str]]) -> list[str] | None:
    for key in (file.name, file.stem):
        if key in index:
            return index[key]
    digits = re.findall(r"\d+", file.stem)
    return index.get(str(int(digits[-1]))) if digits else None  # COCO_val2014_000000391895.jpg -> 391895


def folder_group(cfg: ZeroShotEvalConfig, size: int, frames: int) -> Group:
    """Captioning benchmark "folder": every image (or video) under ``cfg.inputs`` that has references in
    ``cfg.references`` (matched by file name, then image id, then the file name's last number)."""
    if not cfg.inputs:
        raise ValueError("--benchmark folder needs --inputs DIR (the images or videos to caption)")
    if not cfg.references:
        raise ValueError("--benchmark folder needs --references FILE (COCO-format captions, e.g. "
                         "annotations/captions_val2014.json from https://cocodataset.org/#download)")
    video = cfg.modality == "video"
    files = _media_files(Path(cfg.inputs), VIDEO_SUFFIXES if video else IMAGE_SUFFIXES,
                         "videos" if video else "images", "pass the folder to caption with --inputs DIR")
    index = _reference_index(Path(cfg.references))
    matched = [(f, r) for f in files if (r := _refs_for(f, index))]
    if not matched:
        raise ValueError(f"none of the {len(files)} files under {cfg.inputs} has references in {cfg.references} "
                         "(matched by file name, COCO image id, or the last number in the file name)")
    matched = matched[: cfg.num] if cfg.num else matched
    pixels = torch.stack([load_media(f, cfg.modality, size, frames) for f, _ in matched])
    records = [{"file": str(f), "unmatched_in_folder": len(files) - len(matched)} for f, _ in matched]
    return Group("", [r[0] for _, r in matched], pixels=pixels, records=records, references=[r for _, r in matched])


# ---- metric networks and reference sets -----------------------------------------------------------------------
@dataclass
class Meters:
    """Optional metric networks of a run (None: that metric is not computed)."""

    image_features: Any = None  # ImageFeatureExtractor (FID)
    video_features: Any = None  # VideoFeatureExtractor (FVD)
    clip: Any = None  # CLIPScorer (CLIP score / CLIPSIM)


def load_meters(cfg: ZeroShotEvalConfig) -> Meters:
    """Load the metric networks named in ``cfg`` (raises FileNotFoundError naming a missing one)."""
    m = Meters()
    if cfg.inception and cfg.task == "t2i":
        from mm1d.evaluation.fid import ImageFeatureExtractor

        path = None if cfg.inception == "default" else cfg.inception
        m.image_features = ImageFeatureExtractor.from_file(path, batch_size=cfg.batch_size, device=cfg.device)
    if cfg.i3d and cfg.task == "t2v":
        from mm1d.evaluation.fid import VideoFeatureExtractor

        m.video_features = VideoFeatureExtractor.from_file(cfg.i3d, batch_size=cfg.batch_size, device=cfg.device)
    if cfg.clip and cfg.task in ("t2i", "t2v"):
        from mm1d.evaluation.clip_score import CLIPScorer

        m.clip = CLIPScorer(cfg.clip, device=cfg.device, batch_size=cfg.batch_size)
    return m


def check_inputs(cfg: ZeroShotEvalConfig) -> None:
    """Fail fast on settings that cannot work, before the model is loaded (see the module docstring)."""
    if cfg.task not in ("t2i", "t2v", "caption"):
        raise ValueError(f"task must be t2i, t2v or caption, got {cfg.task!r}")
    allowed = {"t2i": ("shapes", "prompts"), "t2v": ("shapes", "prompts"), "caption": ("shapes", "folder")}[cfg.task]
    if cfg.benchmark not in allowed:
        raise ValueError(f"{cfg.task} takes --benchmark {' or '.join(allowed)}, got {cfg.benchmark!r}")
    if cfg.num < 0 or cfg.num_samples < 1 or cfg.batch_size < 1 or cfg.grid_count < 1:
        raise ValueError("num must be >= 0 and num_samples, batch_size, grid_count >= 1")
    if any(b < 1 for b in cfg.budgets):
        raise ValueError(f"budgets must be positive integers, got {cfg.budgets}")
    if cfg.benchmark == "prompts":
        prompt_group(cfg)  # the file exists and holds prompts
        if cfg.task == "t2i" and cfg.inception and not cfg.reference:
            raise ValueError(f"FID on a prompt file needs real images: {REFERENCE_IMAGES_HELP}")
        if cfg.task == "t2v" and cfg.i3d and not cfg.reference:
            raise ValueError(f"FVD on a prompt file needs real videos: {REFERENCE_VIDEOS_HELP}")
    if cfg.reference:
        video = cfg.task == "t2v"
        _media_files(Path(cfg.reference), VIDEO_SUFFIXES if video else IMAGE_SUFFIXES, "reference "
                     + ("videos" if video else "images"), REFERENCE_VIDEOS_HELP if video else REFERENCE_IMAGES_HELP)
        if not (cfg.inception if cfg.task == "t2i" else cfg.i3d if cfg.task == "t2v" else None):
            raise ValueError("--reference is used by FID (t2i, with --inception PATH|default) or FVD (t2v, with "
                             "--i3d PATH); give the network too")
    if cfg.task == "caption" and cfg.references and not Path(cfg.references).is_file():
        raise FileNotFoundError(f"COCO caption references not found: {cfg.references} (e.g. "
                                "annotations/captions_val2014.json from https://cocodataset.org/#download)")
    if cfg.task == "caption" and cfg.tokenization == "ptb":
        from mm1d.evaluation.captions import java_available

        if not java_available():
            raise FileNotFoundError("--tokenization ptb runs Stanford's Java PTB tokenizer, but `java` is not on "
                                    "PATH: install it (Debian: apt-get install default-jre-headless) or use "
                                    "--tokenization python")


def iter_reference(cfg: ZeroShotEvalConfig, modality: str, size: int, frames: int) -> Iterator[torch.Tensor]:
    """Batches of the ``--reference`` folder: images ``(b, 3, S, S)`` or videos ``(b, 3, F, S, S)`` in [-1, 1]."""
    if modality == "image":
        from mm1d.evaluation.fid import iter_image_folder

        yield from iter_image_folder(cfg.reference, batch_size=cfg.batch_size, size=size)
        return
    files = _media_files(Path(cfg.reference), VIDEO_SUFFIXES, "reference videos", REFERENCE_VIDEOS_HELP)
    for i in range(0, len(files), cfg.batch_size):
        batch = torch.stack([load_media(f, "video", size, frames) for f in files[i:i + cfg.batch_size]])
        yield batch.float().div(127.5).sub(1.0)  # (b, 3, F, S, S)
