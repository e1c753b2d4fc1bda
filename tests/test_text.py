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


def test_corpus_sources(tmp_path) -> None:
    from mm1d.config import TextCorpusConfig
    from mm1d.data.corpus import text_corpus

    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    (tmp_path / "b.jsonl").write_text('{"caption": "a red star"}\n{"caption": "a blue dot"}\n')
    assert list(text_corpus(TextCorpusConfig(source="files", paths=[str(tmp_path / "a.txt")]))) == [
        "first line", "second line"]
    assert list(text_corpus(TextCorpusConfig(source="jsonl", paths=[str(tmp_path / "b.jsonl")],
                                             max_sentences=1))) == ["a red star"]
    caps = list(text_corpus(TextCorpusConfig(shapes_images=3, shapes_videos=2), seed=0))
    assert len(caps) == 5 and caps == list(text_corpus(TextCorpusConfig(shapes_images=3, shapes_videos=2)))
    with pytest.raises(FileNotFoundError, match="not found"):
        list(text_corpus(TextCorpusConfig(source="files", paths=[str(tmp_path / "missing.txt")])))
    with pytest.raises(ValueError, match="no string field 'text'"):
        list(text_corpus(TextCorpusConfig(source="jsonl", paths=[str(tmp_path / "b.jsonl")], text_key="text")))


def test_train_text_entry_point(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "tokenizers/train_text.py"), "--config",
           str(root / "configs/tokenizer/text_tiny.yaml"), f"out_dir={tmp_path}", "corpus.shapes_images=300",
           "corpus.shapes_videos=50", "text.vocab_size=300", "train.max_steps=1", "seed=3"]
    subprocess.run(cmd, check=True, cwd=root, capture_output=True, timeout=120)
    tok = TextTokenizer.from_pretrained(tmp_path / "bundle")
    assert 0 < tok.vocab_size <= 300
    assert tok.decode(tok.encode("a small red circle")) == "a small red circle"
