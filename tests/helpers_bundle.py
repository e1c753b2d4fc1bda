"""A tiny random mm1d release bundle for tests (text tokenizer, FlexTok, VideoFlexTok, 2-layer model).

16 px images with 8 tokens, 1000 codes; shared by ``tests/test_generate.py`` and ``tests/test_eval_zeroshot.py``
so that neither imports the other (test modules stay independent).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

COLOURS = ["red", "green", "blue", "yellow", "purple", "cyan", "orange", "white"]
SHAPES = ["circle", "square", "triangle", "diamond"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "center"]


def random_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` ShapesWorld-like captions (image and motion phrasings) to train the tiny text tokenizer on."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c, s, p = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(PLACES)
        out.append(rng.choice([f"a {rng.choice(['small', 'large'])} {c} {s} in the {p}",
                               f"a {c} {s} moving {rng.choice(['left', 'right', 'up', 'down'])}"]))
    return out


def _perturb(model: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    """adaLN-zero starts as the identity; make the decoders depend on their inputs."""
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.startswith(prefixes) and prm.abs().sum() == 0:
                prm.normal_(0, 0.02)


def build_tiny_bundle(root: Path, video: bool = True, seed: int = 0, grouped: bool = False,
                      generation: Any = None) -> Path:
    """Write tokenizers and a random release bundle under ``root``; returns ``root / "bundle"``.

    ``grouped``: the model normalizes each next token within its id group (``model.grouped_softmax``).
    ``generation``: the pretraining config's ``generation`` section (a ``GenerationConfig``; None: defaults).

    Images are 16x16 with 8 FlexTok tokens; videos 16x16 with 4 tokens per time step (chunks of 9 frames);
    the vocabulary has 8 budget tokens and 6 time steps; the model's context is 200 tokens.
    """
    from mm1d.checkpoint import save_release_bundle
    from mm1d.config import (
        FlexTokConfig,
        ModelConfig,
        PretrainConfig,
        TextTokenizerConfig,
        TokenizerPaths,
        VideoFlexTokConfig,
        VocabConfig,
    )
    from mm1d.modality import Vocab
    from mm1d.model import Transformer
    from mm1d.tokenization.flextok import FlexTok
    from mm1d.tokenization.text import TextTokenizer

    root = Path(root)
    text = TextTokenizer.train(random_captions(400), TextTokenizerConfig(vocab_size=100, byte_fallback=False))
    text.save_pretrained(root / "text")
    torch.manual_seed(seed)
    ft = FlexTok(FlexTokConfig(image_size=16, patch_size=4, num_registers=8, fsq_levels=[8, 5, 5, 5], enc_depth=1,
                               enc_dim=32, dec_depth=1, dec_dim=32, head_dim=16, decode_steps=2)).eval()
    _perturb(ft, ("dec_blocks", "dec_final"))
    ft.save_pretrained(root / "image")
    paths = TokenizerPaths(text=str(root / "text"), image=str(root / "image"))
    if video:
        from mm1d.tokenization.videoflextok import VideoFlexTok

        vt = VideoFlexTok(VideoFlexTokConfig(image_size=16, chunk_frames=9, patch_size=8, num_registers=4,
                                             enc_depth=1, enc_dim=32, dec_depth=1, dec_dim=32, head_dim=16,
                                             decode_steps=2)).eval()
        _perturb(vt, ("dec_blocks", "dec_final"))
        vt.save_pretrained(root / "video")
        paths.video = str(root / "video")
    vocab = VocabConfig(text_size=128, image_codebook=1000, video_codebook=1000, max_budget=8, max_time_steps=6)
    mcfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=200,
                       grouped_softmax=grouped)
    model = Transformer(mcfg, Vocab.from_config(vocab).size, Vocab.from_config(vocab).softmax_groups())
    cfg = PretrainConfig(model=mcfg, vocab=vocab, tokenizers=paths)
    if generation is not None:
        cfg.generation = generation
    save_release_bundle(root / "bundle", model.state_dict(), cfg)
    return root / "bundle"
