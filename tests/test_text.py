"""SentencePiece text tokenizer: in-process training, save/load round trip, id range, clear errors."""

from __future__ import annotations

import random

import pytest

from mm1d.config import TextTokenizerConfig
from mm1d.tokenization.text import MODEL_FILENAME, TextTokenizer

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "center"]


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"a {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)} "
        f"at the {rng.choice(PLACES)}"
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(iter(_captions(600)), TextTokenizerConfig(vocab_size=320))


def test_roundtrip_and_range(tok: TextTokenizer) -> None:
    assert tok.vocab_size <= 320
    for cap in _captions(50, seed=1) + ["Zürich ☃ 42 unseen words!"]:
        ids = tok.encode(cap)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == cap  # byte fallback makes unseen characters lossless


def test_no_control_pieces_inside_text_range(tok: TextTokenizer) -> None:
    # SentencePiece's own <s>, </s>, <pad> are disabled: mm1d's specials live outside the text range.
    pieces = {tok.id_to_piece(i) for i in range(tok.vocab_size)}
    assert "<s>" not in pieces and "</s>" not in pieces and "<pad>" not in pieces
    assert tok.unk_id == 0


def test_bpe_keeps_words_whole(tok: TextTokenizer) -> None:
    # A caption vocabulary this small must be learned as (nearly) whole words.
    assert len(tok.encode("a small red circle at the top left")) <= 10


def test_save_load_bytes_and_dir(tok: TextTokenizer, tmp_path) -> None:
    path = tok.save_pretrained(tmp_path / "bundle")
    assert path.name == MODEL_FILENAME and path.read_bytes() == tok.to_bytes()
    cap = "a large blue star at the center"
    for other in (TextTokenizer.from_pretrained(tmp_path / "bundle"), TextTokenizer.load(path),
                  TextTokenizer.load(tok.to_bytes())):
        assert other.encode(cap) == tok.encode(cap)
        assert other.vocab_size == tok.vocab_size
    assert tok.encode_batch([cap, "a"]) == [tok.encode(cap), tok.encode("a")]


def test_training_is_deterministic() -> None:
    cfg = TextTokenizerConfig(vocab_size=300)
    a = TextTokenizer.train(_captions(300), cfg)
    b = TextTokenizer.train(_captions(300), cfg)
    assert a.to_bytes() == b.to_bytes()


def test_unigram_trains() -> None:
    tok = TextTokenizer.train(_captions(300), TextTokenizerConfig(model_type="unigram", vocab_size=300))
    assert tok.decode(tok.encode("a red star")) == "a red star"


def test_clear_errors(tok: TextTokenizer, tmp_path) -> None:
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(FileNotFoundError, match="text tokenizer not found"):
        TextTokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        TextTokenizer.load(b"garbage")
    with pytest.raises(ValueError, match="empty corpus"):
        TextTokenizer.train(["", "  "], TextTokenizerConfig(vocab_size=300))
    with pytest.raises(ValueError, match="byte_fallback"):
        TextTokenizer.train(["abc"], TextTokenizerConfig(vocab_size=100))
