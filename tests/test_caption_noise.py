"""Caption input noise: what the model reads of an I2T / V2T caption is corrupted, never the targets."""

from __future__ import annotations

import numpy as np
import pytest

from mm1d.config import VocabConfig
from mm1d.data.caption_noise import CaptionBigrams, corrupt_caption_inputs
from mm1d.modality import Vocab
from mm1d.sequence import SequenceSample, build_document

VOCAB = Vocab.from_config(VocabConfig(text_size=300, image_codebook=64, video_codebook=48, max_budget=16,
                                      max_time_steps=6))
CAP = np.arange(40, 60)


def _caption_mask(doc) -> np.ndarray:
    lo, hi = VOCAB.range("text")
    return ~doc.prompt & (doc.ids >= lo) & (doc.ids < hi)


@pytest.mark.parametrize("task,codes", [("i2t", np.arange(10)), ("v2t", np.arange(16).reshape(2, 8) % 48)])
def test_uniform_noise_touches_only_the_caption_the_model_reads(task: str, codes: np.ndarray) -> None:
    lo, hi = VOCAB.range("text")
    doc = build_document(SequenceSample(task, CAP, codes), VOCAB)
    noisy = corrupt_caption_inputs(doc, VOCAB, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(noisy.ids, doc.ids)  # the targets stay the true caption
    assert noisy.inputs is not None and noisy.inputs.shape == doc.ids.shape
    changed = noisy.inputs != doc.ids
    caption = _caption_mask(doc)
    assert caption.sum() == len(CAP)
    assert changed.any() and not (changed & ~caption).any()  # only caption tokens, never <eos> or codes
    assert ((noisy.inputs[changed] >= lo) & (noisy.inputs[changed] < hi)).all()
    all_hit = corrupt_caption_inputs(doc, VOCAB, 1.0, np.random.default_rng(1))
    assert (all_hit.inputs != doc.ids).sum() >= len(CAP) - 2  # p = 1 redraws every caption token


def test_other_documents_and_zero_noise_come_back_unchanged_without_drawing() -> None:
    for task, codes, p in (("t2i", np.arange(10), 0.5), ("text", None, 0.5), ("i2t", np.arange(10), 0.0)):
        doc = build_document(SequenceSample(task, CAP, codes), VOCAB)
        rng = np.random.default_rng(3)
        assert corrupt_caption_inputs(doc, VOCAB, p, rng) is doc
        assert rng.random() == np.random.default_rng(3).random()
    with pytest.raises(ValueError, match="probability"):
        corrupt_caption_inputs(doc, VOCAB, 1.5, np.random.default_rng(0))


def test_bigram_counts_and_draws() -> None:
    # two blocks of flat captions: [5 6 7], [5 8], [] and [9 6]
    ids = [np.array([5, 6, 7, 5, 8]), np.array([9, 6])]
    offs = [np.array([0, 3, 5, 5]), np.array([0, 2])]
    bg = CaptionBigrams.from_flat(ids, offs, 10)
    assert bg.counts.sum() == 7 and bg.counts[10, 5] == 2 and bg.counts[10, 9] == 1
    assert bg.counts[5, 6] == 1 and bg.counts[5, 8] == 1 and bg.counts[6, 7] == 1 and bg.counts[9, 6] == 1
    assert bg.counts[7, 5] == 0 and bg.counts[8, 9] == 0  # no bigram across caption boundaries
    rng = np.random.default_rng(0)
    assert {bg.sample(5, 6, rng) for _ in range(20)} == {8}  # the true word is never drawn
    assert {bg.sample(None, 5, rng) for _ in range(20)} == {9}
    assert bg.sample(6, 7, rng) is None  # nothing else ever followed 6
    draws = [bg.sample(None, 0, rng) for _ in range(3000)]
    assert abs(np.mean(np.array(draws) == 5) - 2 / 3) < 0.04  # drawn by count
    with pytest.raises(ValueError, match="overflows"):
        CaptionBigrams.from_flat([np.array([10])], [np.array([0, 1])], 10)


def test_bigram_noise_replaces_a_word_by_another_follower_of_the_previous_true_word() -> None:
    lo = VOCAB.range("text")[0]
    caps = [np.array([1, 2, 3, 4]), np.array([1, 5, 3, 6]), np.array([7, 2, 8])]
    bg = CaptionBigrams.from_flat([np.concatenate(caps)], [np.array([0, 4, 8, 11])], 300)
    doc = build_document(SequenceSample("i2t", caps[0], np.arange(10)), VOCAB)
    pos = np.nonzero(_caption_mask(doc))[0]
    seen: dict[int, set[int]] = {j: set() for j in range(4)}
    for seed in range(60):
        noisy = corrupt_caption_inputs(doc, VOCAB, 1.0, np.random.default_rng(seed), bg)
        np.testing.assert_array_equal(noisy.ids, doc.ids)
        for j, i in enumerate(pos):
            seen[j].add(int(noisy.inputs[i]) - lo)
    # start: 1 -> 7; after 1: 2 -> 5; after 2: 3 -> 8; after 3: 4 -> 6 (each the only other follower)
    assert seen == {0: {7}, 1: {5}, 2: {8}, 3: {6}}
