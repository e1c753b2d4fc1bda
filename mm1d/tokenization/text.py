"""Text tokenizer: SentencePiece (unigram or BPE), trained in-process, saved as ``text.model`` in a bundle.

The text range of the unified vocabulary is ``[0, V_text)`` (``mm1d.modality.Vocab``). SentencePiece's own
``<s>``/``</s>``/``<pad>`` pieces are disabled at training time, so every id this tokenizer produces is an
ordinary text piece (id 0 is ``<unk>``, which byte fallback makes practically unreachable). mm1d's
structural tokens (``<bos>``, ``<eos>``, ``<pad>``, ...) live in the special block *after* the text range and
are never produced by SentencePiece.

When the corpus is too small to support ``vocab_size`` pieces, training keeps fewer
(``hard_vocab_limit=False``); the model then uses ids ``[0, num_pieces)`` with ``num_pieces <= V_text`` and
the rest of the text range stays unused.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from mm1d.config import TextTokenizerConfig
from mm1d.utils import atomic_path

MODEL_FILENAME = "text.model"


def text_model_path(source: str | Path) -> Path:
    """The SentencePiece file for ``source``: a ``.model`` file, or a bundle directory holding ``text.model``.

    Raises:
        FileNotFoundError: naming the missing file and how to create it.
    """
    path = Path(source)
    if path.is_dir():
        path = path / MODEL_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"text tokenizer not found: {path}. Train one with `python tokenizers/train_text.py --config "
            f"configs/tokenizer/text_tiny.yaml out_dir=DIR`, which writes DIR/bundle/{MODEL_FILENAME}"
        )
    return path


class TextTokenizer:
    """A loaded SentencePiece model.

    Build with ``TextTokenizer.train(texts, cfg)``, ``TextTokenizer.load(path_or_bytes)`` or
    ``TextTokenizer.from_pretrained(bundle_dir)``.
    """

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        if not isinstance(model_proto, (bytes, bytearray)) or not model_proto:
            raise ValueError("TextTokenizer needs the non-empty bytes of a SentencePiece model")
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with a terse message
            raise ValueError(f"not a valid SentencePiece model: {e}") from e
        for name, pid in (("bos", self._sp.bos_id()), ("eos", self._sp.eos_id()), ("pad", self._sp.pad_id())):
            if pid >= 0:
                raise ValueError(
                    f"SentencePiece model defines its own {name} piece (id {pid}); mm1d needs models trained "
                    f"with {name}_id=-1 so that no control id sits inside the text range (train it with "
                    "tokenizers/train_text.py)"
                )

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], cfg: TextTokenizerConfig) -> TextTokenizer:
        """Train a SentencePiece model in memory.

        Args:
            texts: an iterable of strings (one sentence / caption each). Empty strings are skipped.
            cfg: model type, vocab size, byte fallback, coverage, normalization, seed.

        Returns:
            The trained tokenizer. ``vocab_size`` may be below ``cfg.vocab_size`` on tiny corpora.
        """
        import sentencepiece as spm

        if cfg.vocab_size < 8:
            raise ValueError(f"text.vocab_size must be at least 8, got {cfg.vocab_size}")
        if cfg.byte_fallback and cfg.vocab_size < 260:
            raise ValueError(
                f"text.vocab_size={cfg.vocab_size} is too small for byte_fallback (needs 256 byte pieces + "
                "<unk> + some pieces); raise it to >= 260 or set text.byte_fallback=false"
            )
        count = 0

        def sentences() -> Iterator[str]:
            nonlocal count
            for t in texts:
                if not isinstance(t, str):
                    raise ValueError(f"text corpus items must be strings, got {type(t).__name__}")
                t = t.strip()
                if t:
                    count += 1
                    yield t

        buf = io.BytesIO()
        spm.set_random_generator_seed(cfg.seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(),
                model_writer=buf,
                model_type=cfg.model_type,
                vocab_size=cfg.vocab_size,
                hard_vocab_limit=False,
                byte_fallback=cfg.byte_fallback,
                character_coverage=cfg.character_coverage,
                normalization_rule_name=cfg.normalization,
                split_digits=cfg.split_digits,
                max_sentence_length=cfg.max_sentence_length,
                input_sentence_size=cfg.input_sentence_size,
                shuffle_input_sentence=True,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                num_threads=cfg.num_threads,
                minloglevel=2,
            )
        except RuntimeError as e:
            if count == 0:
                raise ValueError("cannot train a text tokenizer on an empty corpus") from e
            raise ValueError(f"SentencePiece training failed on {count} sentences: {e}") from e
        return cls(buf.getvalue())

    @classmethod
    def load(cls, source: str | Path | bytes) -> TextTokenizer:
        """Load from a ``.model`` file, a bundle directory holding ``text.model``, or the model's bytes."""
        if isinstance(source, (bytes, bytearray)):
            return cls(bytes(source))
        return cls(text_model_path(source).read_bytes())

    @classmethod
    def from_pretrained(cls, bundle_dir: str | Path) -> TextTokenizer:
        """Load ``bundle_dir/text.model``."""
        return cls.load(Path(bundle_dir) / MODEL_FILENAME)

    def save_pretrained(self, bundle_dir: str | Path) -> Path:
        """Write ``bundle_dir/text.model`` atomically; returns the file path."""
        path = Path(bundle_dir) / MODEL_FILENAME
        with atomic_path(path) as tmp:
            tmp.write_bytes(self._proto)
        return path

    def to_bytes(self) -> bytes:
        """The serialized model (what ``save_pretrained`` writes)."""
        return self._proto

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of pieces; every id produced is in ``[0, vocab_size)``."""
        return int(self._sp.get_piece_size())

    @property
    def unk_id(self) -> int:
        return int(self._sp.unk_id())

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(self._check_id(i))

    # ---- encode / decode ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """One string -> local text ids (no bos/eos; mm1d adds its own structural tokens)."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a string, got {type(text).__name__}")
        return list(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Several strings -> one list of local ids per string."""
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"encode_batch expects strings, got {type(t).__name__}")
        return [list(x) for x in self._sp.encode(list(texts), out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        """Local text ids -> string. Raises for ids outside ``[0, vocab_size)``."""
        ids = [self._check_id(int(i)) for i in ids]
        return self._sp.decode(ids)

    def _check_id(self, i: int) -> int:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"text id {i} outside the tokenizer's range [0, {self.vocab_size})")
        return i

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size})"
