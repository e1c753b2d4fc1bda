"""Caption input noise for captioning documents (I2T / V2T): what the model *reads* of a caption is corrupted,
the targets stay the true caption.

A captioner trained on ShapesWorld-like data learns a text-only shortcut: after "a small red" it only ever
saw the shapes red came with, so it never writes a colour-shape pair that no training image showed, even when
the visual span shows one (BENCHMARKS.md, main job round 10). Corrupting the caption tokens the model reads
makes the words after a corrupted one depend on the visual span instead of on the words before it.

Two sources of replacement tokens (``SequenceConfig.caption_noise_source``):

* ``uniform``: any text id. Most replacements do not fit their context at all, so the model learns to skip
  them.
* ``bigram``: a word that follows the same previous word somewhere in the training captions, other than the
  true one (``CaptionBigrams``). After "a small" that is usually another colour, so the model reads a plausible
  but wrong colour and must still name the shape it sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mm1d.modality import Vocab
from mm1d.sequence import UNDERSTANDING_TASKS, Document

__all__ = ["CaptionBigrams", "corrupt_caption_inputs"]


class CaptionBigrams:
    """Next-word counts of a caption corpus over local text ids.

    Args:
        counts: ``(T + 1, T)`` counts; ``counts[a, b]`` is how often ``b`` follows ``a``, and row ``T`` counts
            the first word of each caption.
    """

    def __init__(self, counts: np.ndarray) -> None:
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1] + 1:
            raise ValueError(f"bigram counts must have shape (T + 1, T), got {counts.shape}")
        self.counts = counts.astype(np.float64)
        self.text_size = int(counts.shape[1])

    @classmethod
    def from_flat(cls, ids: Sequence[np.ndarray], offsets: Sequence[np.ndarray], text_size: int) -> CaptionBigrams:
        """Count bigrams of captions stored flat.

        Args:
            ids: per block (a shard), ``(n,)`` local text ids of its captions one after another.
            offsets: per block, ``(m + 1,)`` caption boundaries into its ``ids`` (a shard's ``text_off``).
            text_size: T, the text range of the vocabulary.
        """
        counts = np.zeros((text_size + 1, text_size), dtype=np.int64)
        for flat, off in zip(ids, offsets, strict=True):
            flat, off = np.asarray(flat, dtype=np.int64), np.asarray(off, dtype=np.int64)
            if flat.size and int(flat.max()) >= text_size:
                raise ValueError(f"caption id {int(flat.max())} overflows the text range [0, {text_size})")
            starts = off[:-1][np.diff(off) > 0]
            prev = np.concatenate([[text_size], flat[:-1]])
            prev[starts] = text_size
            np.add.at(counts, (prev, flat), 1)
        return cls(counts)

    def sample(self, prev: int | None, exclude: int, rng: np.random.Generator) -> int | None:
        """A word that followed ``prev`` (``None``: a caption start) in the corpus, drawn by count, other than
        ``exclude``; ``None`` when no other word ever followed ``prev``."""
        row = self.counts[self.text_size if prev is None else prev].copy()
        row[exclude] = 0.0
        total = row.sum()
        if total <= 0:
            return None
        return int(np.searchsorted(np.cumsum(row), rng.random() * total, side="right"))


def corrupt_caption_inputs(doc: Document, vocab: Vocab, p: float, rng: np.random.Generator,
                           bigrams: CaptionBigrams | None = None) -> Document:
    """Each caption token the model reads is replaced with probability ``p``; the targets stay the true caption.

    Args:
        doc: a built document; only ``i2t`` / ``v2t`` documents are corrupted (others come back unchanged).
        vocab: the registry (the text range).
        p: replacement probability per caption token, in [0, 1].
        rng: numpy generator; untouched when ``p == 0`` or the document is not a captioning one.
        bigrams: draw each replacement from the words that follow the caption's previous (true) word in the
            corpus (a position with no alternative stays true); None: a uniform text id.

    Returns:
        ``doc`` with ``inputs`` set to the corrupted ids (``(n,)`` int64), or ``doc`` itself.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption input noise must be a probability in [0, 1], got {p}")
    if p == 0.0 or doc.task not in UNDERSTANDING_TASKS:
        return doc
    lo, hi = vocab.range("text")
    caption = np.nonzero(~doc.prompt & (doc.ids >= lo) & (doc.ids < hi))[0]  # the caption's positions, in order
    hit = rng.random(len(caption)) < p
    inputs = doc.ids.copy()
    if bigrams is None:
        inputs[caption[hit]] = rng.integers(lo, hi, size=int(hit.sum()))
    else:
        for j in np.nonzero(hit)[0]:
            prev = None if j == 0 else int(doc.ids[caption[j - 1]]) - lo
            new = bigrams.sample(prev, int(doc.ids[caption[j]]) - lo, rng)
            if new is not None:
                inputs[caption[j]] = new + lo
    return dataclasses.replace(doc, inputs=inputs)
