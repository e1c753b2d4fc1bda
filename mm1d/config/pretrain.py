"""Schemas of the decoder, the text tokenizer, sequences, packing and the loader, and of pretraining
(``train/pretrain.py``); registers ``train_text`` and ``pretrain``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mm1d.config.common import (
    SCHEMAS,
    EngineConfig,
    OptimConfig,
    ShapesConfig,
    TrackingConfig,
    TrainConfig,
    VocabConfig,
)
from mm1d.config.generation import GenerationConfig

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
    # the generation presets the release bundle carries as generation.json (mm1d.load / mm1d.generate use them);
    # a partial section keeps the other defaults, e.g. ``generation: {image: {rerank: 7}}``
    generation: GenerationConfig = field(default_factory=GenerationConfig)


SCHEMAS["pretrain"] = PretrainConfig
