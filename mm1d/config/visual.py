"""Schemas of the visual tokenizers (FlexTok, VideoFlexTok), their training and pretokenization; registers
``train_flextok``, ``pretokenize`` and ``train_videoflextok``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mm1d.config.common import SCHEMAS, EngineConfig, OptimConfig, ShapesConfig, TrackingConfig, TrainConfig
from mm1d.config.pretrain import TokenizerPaths

# ----------------------------------------------------------------------------------------------------
# Visual tokenizers: fields FlexTok and VideoFlexTok share; FlexTok image tokenizer (mm1d.tokenization.flextok)
# ----------------------------------------------------------------------------------------------------


@dataclass
class VisualTokenizerConfig:
    """Fields of :class:`FlexTokConfig` and :class:`VideoFlexTokConfig` with the same name, type and default.

    Architecture, training-recipe knobs and inference defaults. Each model's config adds its own fields,
    including the shared names whose defaults differ (``latent_channels``, ``patch_size``, ``num_registers``,
    ``quant_norm``, ``head_dim``).
    """

    image_size: int = 32
    # pixels: the raw image (videos: causal tubelets, 12 channels); vae: an image VAE (videos: a causal 3D VAE)
    latent: Literal["pixels", "vae"] = "pixels"
    # local diffusers VAE directory (latent="vae"): an AutoencoderKL for images, a video VAE for videos
    vae_path: str | None = None
    latent_downsample: int = 1  # must match the backend (1 for pixels, the VAE's spatial factor, e.g. 8 for f8)
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    enc_depth: int = 4
    enc_dim: int = 128
    dec_depth: int = 4
    dec_dim: int = 128
    mlp_ratio: float = 4.0
    # hidden width of MLP patch stems (encoder and decoder input) and of an MLP output head; 0: linear
    # ones, which see and emit only an enc_dim / dec_dim-dimensional subspace of each patch
    patch_mlp: int = 0
    # hidden width of the decoder's MLP output head alone (None: patch_mlp). A linear head emits only a
    # dec_dim-dimensional subspace of each patch: a video tubelet patch (8 px, 12 channels) has 768 values
    head_mlp: int | None = None
    quant_renorm_warmup: int = 0  # quant_norm="renorm": training batches normalized with batch statistics first
    qk_norm: bool = True
    register_modulation: bool = True  # separate adaLN modulation for patches and registers
    # add a pooled summary of the kept registers (of each video time step) to the timestep embedding
    register_summary: bool = False
    # "none": always k = N; a video draws one k for all its steps
    nested_dropout: Literal["pow2", "uniform", "uniform_pow2", "none"] = "pow2"
    cond_dropout: float = 0.1  # probability of the learned null condition (CFG) per sample
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    ln_mean: float = 0.0
    ln_std: float = 1.0
    # what the decoder outputs: the velocity "v", or the clean latents "x0" (converted to a velocity, v-loss)
    prediction: Literal["v", "x0"] = "v"
    # weight of the rectified-flow loss; 0 skips the flow pass and trains only the one-step decoder
    # (aux_recon_mode="zero_noise"), e.g. to tune a one_step decoder on frozen codes at half the cost
    rf_weight: float = 1.0
    aux_recon_weight: float = 0.0  # weight of the direct-reconstruction loss
    aux_recon_mode: Literal["x0", "zero_noise"] = "x0"  # x0 = x_t - t v, or a t=1 pass on zero input
    perturb_prob: float = 0.0  # per-sample probability of latent perturbation during training
    perturb_fraction: float = 0.1  # fraction of a perturbed sample's tokens replaced by random codes
    decode_steps: int = 20  # inference defaults
    # "flow": Euler sampling of the flow decoder from noise; "one_step": one deterministic pass from a
    # zero input (the decoder trained by aux_recon_mode="zero_noise"; the sharper choice for tiny recipes)
    decode_mode: Literal["flow", "one_step"] = "flow"
    guidance_scale: float = 1.0
    apg: bool = True


@dataclass
class FlexTokConfig(VisualTokenizerConfig):
    """FlexTok architecture, training-recipe knobs and inference defaults (shared ones inherited).

    The latent grid is ``image_size / latent_downsample`` per side, split into ``patch_size`` patches;
    widths are ``enc_dim`` / ``dec_dim`` with ``head_dim``-wide heads.
    """

    vae_sample_posterior: bool = False  # sample the VAE posterior during training (mode otherwise)
    latent_channels: int = 3  # must match the backend (3 for pixels, the VAE's latent_channels)
    patch_size: int = 4
    num_registers: int = 32
    quant_norm: Literal["none", "layernorm", "rms", "batch", "renorm"] = "none"  # normalization before FSQ
    head_dim: int = 64
    # extra loss weight on latent positions that stand out from the image's median (0: plain MSE);
    # see flow.contrast_weights
    recon_contrast_weight: float = 0.0
    repa_weight: float = 0.0  # 0 disables REPA
    repa_layer: int = 1  # decoder block whose output (patch tokens) is aligned
    repa_extractor: str | None = None  # "random_conv", "shapes:<dir>", "hf:<dir>" or "module:factory"
    repa_dim: int = 0  # teacher feature width
    # what is aligned: "flow" (decoder block repa_layer on the noised input at a random t), "one_step" (the
    # same block in the zero-input pass of aux_recon_mode="zero_noise", which sees only the registers), or
    # "tokens" (a separate cross-attention readout of the kept register inputs, so the alignment trains the
    # tokens and takes no capacity from the pixel decoder)
    repa_pass: Literal["flow", "one_step", "tokens"] = "flow"


# ----------------------------------------------------------------------------------------------------
# Tokenizer training (tokenizers/train_flextok.py, tokenizers/train_videoflextok.py)
# ----------------------------------------------------------------------------------------------------


@dataclass
class TokenizerDataConfig:
    """Training data of a visual tokenizer: ShapesWorld generated on the fly, or any reader source."""

    source: str = "shapes"  # "shapes", or a path readable by mm1d.data.sources (folder, tar, HF dataset, mp4s)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    val_samples: int = 8  # fixed ShapesWorld val samples shown in the periodic reconstruction grids
    # training batches used to recompute the FSQ batch-norm statistics of the released weights
    # (quant_norm "batch" or "renorm"); 0 keeps the running averages
    calibrate_batches: int = 32
    max_corrupt_fraction: float = 0.05  # reader sources: fail when more than this share is unreadable


@dataclass
class SampleGridConfig:
    """Periodic reconstruction grids at k = 1, 2, 4, ..., N."""

    steps: int = 8  # Euler steps of the decoder
    guidance_scale: float = 1.0


@dataclass
class TrainTokenizerConfig:
    """Fields every visual tokenizer training schema shares; each adds ``model`` and its own ``out_dir``."""

    out_dir: str = "runs/tokenizer"
    seed: int = 0
    # start from the weights of a bundle (a directory or "asset:NAME"); the model section must describe
    # the same architecture
    init_from: str = ""
    # train the decoder only, on the fixed codes of init_from's encoder (token ids stay identical)
    freeze_encoder: bool = False
    # train encoder and decoder with init_from's FSQ statistics held fixed (quant_norm "batch"/"renorm"),
    # so the training codes are the released ones and do not depend on the batch; the ids change as the
    # encoder trains, so data must be pretokenized again
    freeze_quantizer: bool = False
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)
    samples: SampleGridConfig = field(default_factory=SampleGridConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass
class TrainFlexTokConfig(TrainTokenizerConfig):
    """Top-level schema of ``tokenizers/train_flextok.py``."""

    out_dir: str = "runs/flextok_tiny"
    model: FlexTokConfig = field(default_factory=FlexTokConfig)


SCHEMAS["train_flextok"] = TrainFlexTokConfig


# ----------------------------------------------------------------------------------------------------
# Pretokenization (tokenizers/pretokenize.py)
# ----------------------------------------------------------------------------------------------------


@dataclass
class AdaptiveBudgetConfig:
    """Adaptive budget per sample: the smallest candidate k whose reconstruction reaches ``psnr`` dB."""

    enabled: bool = False  # needs detokenize: costs one decoder pass per candidate k
    psnr: float = 24.0  # threshold on pixels scaled to [0, 1], over the whole image / clip
    video_psnr: float | None = None  # the threshold for videos; None: ``psnr``
    candidates: list[int] = field(default_factory=list)  # tried in increasing order; empty: 1, 2, 4, ..., N
    steps: int = 8  # Euler steps of the tokenizer's decoder
    guidance_scale: float = 1.0
    seed: int = 0  # decoder noise seed (fixed, so a re-run gives identical shards)

    def threshold(self, video: bool) -> float:
        """The PSNR (dB) a reconstruction must reach: ``video_psnr`` for videos when set, else ``psnr``."""
        return self.video_psnr if video and self.video_psnr is not None else self.psnr


@dataclass
class PretokenizeConfig:
    """Top-level schema of ``tokenizers/pretokenize.py``; writes shards into ``out_dir``."""

    out_dir: str = "runs/tokens/train"
    seed: int = 0  # ShapesWorld world seed
    source: str = "shapes"  # "shapes", or a path readable by mm1d.data.sources (folder, tar, HF dataset, mp4s)
    split: str = "train"  # ShapesWorld split
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    num_images: int = 2000  # ShapesWorld images
    num_videos: int = 400  # ShapesWorld videos
    max_samples: int = 0  # reader sources: stop after this many samples (0: all)
    max_corrupt_fraction: float = 0.05  # reader sources: fail when more than this share is unreadable
    tokenizers: TokenizerPaths = field(default_factory=TokenizerPaths)  # a missing one skips that modality
    samples_per_shard: int = 512
    batch_size: int = 16  # tokenizer batch size
    video_frames: int = 0  # reader videos: frames kept (1 + 4m); 0: the largest 1 + 4m available
    cond_first_frame: bool = True  # also tokenize each video's first frame with FlexTok (text-image-to-video)
    adaptive: AdaptiveBudgetConfig = field(default_factory=AdaptiveBudgetConfig)
    device: str = "cpu"  # "cpu", "cuda", or "auto"
    # accepted for CLI uniformity (train.max_steps=N); pretokenization has no step loop
    train: TrainConfig = field(default_factory=TrainConfig)


SCHEMAS["pretokenize"] = PretokenizeConfig


# ----------------------------------------------------------------------------------------------------
# VideoFlexTok video tokenizer (mm1d.tokenization.videoflextok) and its training schema
# ----------------------------------------------------------------------------------------------------


@dataclass
class VideoFlexTokConfig(VisualTokenizerConfig):
    """VideoFlexTok architecture, training-recipe knobs and inference defaults (shared ones inherited).

    A chunk of ``chunk_frames = 1 + 4m`` frames is ``1 + m`` latent time steps; each step is a
    ``(image_size / latent_downsample)`` grid split into ``patch_size`` patches, with its own
    ``num_registers`` registers (tokens per step). Longer videos are processed in chunks that overlap by
    one frame.
    """

    chunk_frames: int = 17  # frames per encoder/decoder pass (1 + 4m); sets the number of register sets
    vae_class: str = "AutoencoderKLWan"  # diffusers class of the VAE (4x time, 8x space)
    latent_channels: int = 12  # 12 for pixels (3 colours x 4 frames), the VAE's z_dim otherwise
    patch_size: int = 8
    num_registers: int = 16  # tokens per time step
    quant_norm: Literal["none", "layernorm", "rms", "batch", "renorm"] = "layernorm"
    head_dim: int = 32
    registers_see_past: bool = True  # encoder register i of step t also sees registers <= i of steps < t
    first_step_dropout: Literal["same", "pow2", "uniform", "uniform_pow2", "none"] = "same"  # own k for step 0
    prefix_prob: float = 0.25  # per-sample probability of clean prefix conditioning in training
    max_prefix_steps: int = 1  # p ~ U{1..max_prefix_steps} clean time steps when a prefix is drawn
    mask_prefix_registers: bool = True  # prefix steps' registers are replaced by the mask token


@dataclass
class TrainVideoFlexTokConfig(TrainTokenizerConfig):
    """Top-level schema of ``tokenizers/train_videoflextok.py``."""

    out_dir: str = "runs/videoflextok_tiny"
    model: VideoFlexTokConfig = field(default_factory=VideoFlexTokConfig)


SCHEMAS["train_videoflextok"] = TrainVideoFlexTokConfig
