"""Builders for tiny, random-weight assets shared by tests: tokenizer bundles and pretokenized shards.

Everything is made from configs in seconds; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mm1d.config import (
    FlexTokConfig,
    PretokenizeConfig,
    ShapesConfig,
    TextCorpusConfig,
    TextTokenizerConfig,
    TokenizerPaths,
    VideoFlexTokConfig,
    VocabConfig,
)

SMALL = dict(enc_depth=1, dec_depth=1, enc_dim=32, dec_dim=32, head_dim=16)
N_IMAGE, N_VIDEO, FRAMES = 8, 4, 9


def make_tokenizers(root: Path, text_vocab: int = 256) -> TokenizerPaths:
    """Write a SentencePiece model, a tiny FlexTok and a tiny VideoFlexTok under ``root``."""
    from mm1d.data.corpus import text_corpus
    from mm1d.tokenization.flextok import FlexTok
    from mm1d.tokenization.text import TextTokenizer
    from mm1d.tokenization.videoflextok import VideoFlexTok

    torch.manual_seed(0)
    text = TextTokenizer.train(text_corpus(TextCorpusConfig(shapes_images=300, shapes_videos=60)),
                               TextTokenizerConfig(vocab_size=text_vocab, byte_fallback=False))
    text.save_pretrained(root / "text")
    FlexTok(FlexTokConfig(num_registers=N_IMAGE, **SMALL)).save_pretrained(root / "flextok")
    VideoFlexTok(VideoFlexTokConfig(num_registers=N_VIDEO, chunk_frames=FRAMES, **SMALL)).save_pretrained(root / "vft")
    return TokenizerPaths(text=str(root / "text"), image=str(root / "flextok"), video=str(root / "vft"))


def tiny_vocab(text_vocab: int = 256) -> VocabConfig:
    return VocabConfig(text_size=text_vocab, image_codebook=1000, video_codebook=1000, max_budget=N_IMAGE,
                       max_time_steps=4)


def make_shards(out: Path, paths: TokenizerPaths, num_images: int = 24, num_videos: int = 6, split: str = "train",
                seed: int = 0) -> Path:
    """Pretokenize a small in-memory ShapesWorld split with the tiny tokenizers into ``out``."""
    from mm1d.data.pretokenize import run_pretokenize

    cfg = PretokenizeConfig(out_dir=str(out), seed=seed, split=split, num_images=num_images, num_videos=num_videos,
                            shapes=ShapesConfig(frames=FRAMES), tokenizers=paths, samples_per_shard=16,
                            batch_size=16)
    run_pretokenize(cfg)
    return out
