"""Shared config sections (vocabulary, optimizer, engine, tracking, training loop, ShapesWorld) and the
``SCHEMAS`` registry that each schema module fills with its top-level configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# ----------------------------------------------------------------------------------------------------
# Shared sections
# ----------------------------------------------------------------------------------------------------


@dataclass
class VocabConfig:
    """Sizes of each id range; the registry in ``mm1d.modality`` derives every offset from these."""

    text_size: int = 512  # SentencePiece vocab size
    image_codebook: int = 1000  # product of the FlexTok FSQ levels
    video_codebook: int = 1000  # product of the VideoFlexTok FSQ levels
    max_budget: int = 32  # number of budget tokens <k_1>..<k_N> (max tokens per image / video step)
    max_time_steps: int = 16  # number of video length tokens <nt_1>..<nt_T>
    # image and video codes share one id range (and so one embedding/head row per code), as in Emu3;
    # needs image_codebook == video_codebook. The structure tokens (<boi>/<bov>, <nt_T>) tell them apart.
    shared_visual: bool = False


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class EngineConfig:
    """How the model is wrapped for training (DeepSpeed ZeRO, or plain torch in one process)."""

    backend: Literal["auto", "deepspeed", "torch"] = "auto"  # auto: deepspeed if importable
    zero_stage: int = 0  # 0..3
    deepspeed_config: str | None = None  # optional JSON whose keys override the generated ones
    precision: Literal["fp32", "bf16"] = "fp32"
    activation_checkpointing: bool = False
    grad_accum: int = 1
    compile: bool = False  # torch.compile in place: per block plus the loss when the model offers it


@dataclass
class TrackingConfig:
    """metrics.jsonl is always written; wandb is optional and never prompts for a login."""

    wandb: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "mm1d"
    run_name: str | None = None


@dataclass
class TrainConfig:
    """Loop settings shared by tokenizer training and pretraining."""

    max_steps: int = 1000
    batch_size: int = 32  # per rank, per micro-step
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_last: int = 2  # checkpoints kept
    sample_every: int = 500  # sample grids / generations
    ema_decay: float = 0.0  # 0 disables EMA
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    num_workers: int = 0
    threads: int = 0  # torch intra-op threads on CPU; 0 leaves the default


@dataclass
class ShapesConfig:
    """ShapesWorld generation (see ``mm1d.data.shapes``)."""

    size: int = 32
    frames: int = 17
    max_objects: int = 2
    fps: int = 8  # frame rate written into the mp4 files
    jitter: float = 0.03  # max random offset of an object from its anchor, as a fraction of the side
    holdout: list[str] = field(
        default_factory=lambda: ["red triangle", "blue circle", "green square", "yellow triangle"]
    )  # colour+shape combinations never seen in the train split


# Registry of top-level schemas by name for YAML files carrying a `_schema_` key. Each section of the
# schema modules (pretrain, visual, generation) registers its top-level config.
SCHEMAS: dict[str, type] = {}
