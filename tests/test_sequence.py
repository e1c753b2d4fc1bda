"""Sequence formats: build/parse identity for every task, budget truncation, budget sampling, errors."""

from __future__ import annotations

import numpy as np
import pytest

from mm1d.config import BudgetConfig, SequenceConfig, VocabConfig
from mm1d.modality import Vocab
from mm1d.sequence import (
    MOD_IMAGE,
    MOD_TEXT,
    MOD_VIDEO,
    TASKS,
    SequenceFormatError,
    SequenceSample,
    StoredSample,
    UnknownTaskError,
    build_document,
    choose_sample,
    parse_document,
    sample_budget,
)

VOCAB = Vocab.from_config(VocabConfig(text_size=300, image_codebook=64, video_codebook=48, max_budget=16,
                                      max_time_steps=6))
N_IMG, N_VID, T = 16, 12, 5


def _stored(rng: np.random.Generator, auto: bool = False) -> StoredSample:
    return StoredSample(
        text=rng.integers(0, 300, size=int(rng.integers(1, 12))).astype(np.uint16),
        image=rng.integers(0, 64, size=N_IMG).astype(np.uint16),
        video=rng.integers(0, 48, size=(T, N_VID)).astype(np.uint16),
        cond=rng.integers(0, 64, size=N_IMG).astype(np.uint16),
        auto_image=5 if auto else 0,
        auto_video=3 if auto else 0,
        key="s",
    )


def _names(ids: np.ndarray) -> list[str]:
    return [VOCAB.name_of(int(i)) if VOCAB.modality_of(int(i)) == "special" else VOCAB.modality_of(int(i))
            for i in ids]


@pytest.mark.parametrize("task", TASKS)
def test_build_parse_identity_random(task: str) -> None:
    rng = np.random.default_rng(0)
    cfg = SequenceConfig(caption_dropout=0.5, ti2v_text_dropout=0.5, ti2v_image_dropout=0.5, auto_prob=0.5,
                         video_time="random")
    seen_dropped = seen_auto = 0
    for _ in range(60):
        s = choose_sample(_stored(rng, auto=True), task, cfg, VOCAB, rng)
        doc = build_document(s, VOCAB)
        assert doc.ids.dtype == np.int64 and len(doc.ids) == len(doc.modality) == len(doc.prompt)
        back = parse_document(doc.ids, VOCAB)
        assert back == s
        # a padded copy parses the same
        assert parse_document(np.concatenate([doc.ids, [VOCAB.pad_id] * 3]), VOCAB) == s
        seen_dropped += s.caption is None or (task == "ti2v" and s.cond is None)
        seen_auto += s.auto
    if task in ("t2i", "t2v", "ti2v"):
        assert seen_dropped > 0 and seen_auto > 0


def test_exact_formats() -> None:
    cap = np.array([7, 8])
    img = np.arange(4)
    doc = build_document(SequenceSample("t2i", cap, img), VOCAB)
    assert _names(doc.ids) == ["<bos>", "text", "text", "<boi>", "<k_4>"] + ["image"] * 4 + ["<eoi>", "<eos>"]
    assert doc.prompt.tolist() == [False, True, True] + [False] * 8
    doc = build_document(SequenceSample("i2t", cap, img, auto=True), VOCAB)
    assert _names(doc.ids) == ["<bos>", "<boi>", "<kauto>", "<k_4>"] + ["image"] * 4 + ["<eoi>", "text", "text",
                                                                                          "<eos>"]
    vid = np.arange(6).reshape(2, 3)
    doc = build_document(SequenceSample("t2v", None, vid), VOCAB)
    step = ["video"] * 3 + ["<eot>"]
    assert _names(doc.ids) == ["<bos>", "<bov>", "<nt_2>", "<k_3>"] + step * 2 + ["<eov>", "<eos>"]
    assert doc.modality.tolist() == [MOD_TEXT] * 4 + ([MOD_VIDEO] * 3 + [MOD_TEXT]) * 2 + [MOD_TEXT] * 2
    doc = build_document(SequenceSample("ti2v", cap, vid, cond=np.arange(2)), VOCAB)
    assert _names(doc.ids) == (["<bos>", "text", "text", "<bocf>", "<k_2>", "image", "image", "<eocf>", "<bov>",
                                "<nt_2>", "<k_3>"] + step * 2 + ["<eov>", "<eos>"])
    assert doc.modality[5] == MOD_IMAGE and doc.prompt[1:8].all() and not doc.prompt[8:].any()
    doc = build_document(SequenceSample("ti2v", None, vid, cond=None), VOCAB)
    assert _names(doc.ids)[:5] == ["<bos>", "<bocf>", "<nocond>", "<eocf>", "<bov>"]
    doc = build_document(SequenceSample("text", cap), VOCAB)
    assert _names(doc.ids) == ["<bos>", "text", "text", "<eos>"]
    # the visual span is the prompt of understanding tasks
    doc = build_document(SequenceSample("v2t", cap, vid), VOCAB)
    assert doc.prompt.tolist() == [False] + [True] * 12 + [False] * 3


def test_truncation_is_first_k_ids() -> None:
    rng = np.random.default_rng(1)
    st = _stored(rng)
    for task in ("t2i", "i2t", "t2v", "v2t", "ti2v"):
        for _ in range(20):
            s = choose_sample(st, task, SequenceConfig(), VOCAB, rng)
            k = s.budget
            if task in ("t2i", "i2t"):
                np.testing.assert_array_equal(s.codes, st.image[:k])
            else:
                np.testing.assert_array_equal(s.codes, st.video[:, :k])  # per time step
            parsed = parse_document(build_document(s, VOCAB).ids, VOCAB)
            assert parsed.budget == k
            np.testing.assert_array_equal(parsed.codes, s.codes)


def test_budget_distributions() -> None:
    rng = np.random.default_rng(0)
    draws = {m: [sample_budget(rng, BudgetConfig(mode=m), 12, 16) for _ in range(400)]
             for m in ("pow2", "uniform", "uniform_pow2")}
    assert set(draws["pow2"]) == {1, 2, 4, 8}
    assert set(draws["uniform"]) == set(range(1, 13))
    assert set(draws["uniform_pow2"]) == set(range(1, 13))
    fixed = {sample_budget(rng, BudgetConfig(mode="fixed", values=[3, 9]), 12, 16) for _ in range(50)}
    assert fixed == {3, 9}
    # understanding bias: nothing below the bound
    assert min(sample_budget(rng, BudgetConfig(mode="uniform"), 12, 16, min_k=10) for _ in range(100)) == 10
    st = _stored(rng)
    cfg = SequenceConfig(understanding_min_k=8)
    ks = [choose_sample(st, "i2t", cfg, VOCAB, rng).budget for _ in range(50)]
    assert min(ks) >= 8
    assert min(choose_sample(st, "t2i", cfg, VOCAB, rng).budget for _ in range(200)) < 8


def test_adaptive_budget_marks_kauto() -> None:
    rng = np.random.default_rng(0)
    st = _stored(rng, auto=True)
    s = choose_sample(st, "t2i", SequenceConfig(auto_prob=1.0), VOCAB, rng)
    assert s.auto and s.budget == 5
    s = choose_sample(st, "t2v", SequenceConfig(auto_prob=1.0), VOCAB, rng)
    assert s.auto and s.budget == 3
    assert not choose_sample(st, "i2t", SequenceConfig(auto_prob=1.0), VOCAB, rng).auto  # generation only


def test_errors() -> None:
    rng = np.random.default_rng(0)
    st = _stored(rng)
    with pytest.raises(ValueError, match="above N=16"):
        choose_sample(st, "t2i", SequenceConfig(image_budget=BudgetConfig(max_k=20)), VOCAB, rng)
    with pytest.raises(ValueError, match="above N=12"):
        choose_sample(st, "t2v", SequenceConfig(video_budget=BudgetConfig(mode="fixed", values=[13])), VOCAB, rng)
    big = Vocab.from_config(VocabConfig(text_size=300, image_codebook=64, video_codebook=48, max_budget=8))
    with pytest.raises(ValueError, match="max_budget=8"):
        sample_budget(rng, BudgetConfig(max_k=12), 16, big.max_budget)
    with pytest.raises(ValueError, match="budget 17 out of range"):
        build_document(SequenceSample("t2i", None, np.zeros(17, dtype=np.int64)), VOCAB)
    with pytest.raises(UnknownTaskError, match="unknown task 'x2y'"):
        build_document(SequenceSample("x2y", np.array([1]), None), VOCAB)
    with pytest.raises(UnknownTaskError):
        choose_sample(st, "t2a", SequenceConfig(), VOCAB, rng)
    with pytest.raises(ValueError, match="overflows the text range"):
        build_document(SequenceSample("text", np.array([1, 300])), VOCAB)
    with pytest.raises(ValueError, match="outside the code range"):
        build_document(SequenceSample("t2i", None, np.array([64])), VOCAB)
    with pytest.raises(ValueError, match="non-empty caption"):
        build_document(SequenceSample("i2t", np.array([], dtype=np.int64), np.array([1])), VOCAB)
    with pytest.raises(ValueError, match="cannot serve"):
        choose_sample(StoredSample(text=np.array([1])), "t2i", SequenceConfig(), VOCAB, rng)


def test_parse_rejects_malformed() -> None:
    doc = build_document(SequenceSample("t2i", np.array([3]), np.arange(4)), VOCAB).ids
    with pytest.raises(SequenceFormatError, match="expected <bos>"):
        parse_document(doc[1:], VOCAB)
    with pytest.raises(SequenceFormatError):
        parse_document(doc[:-1], VOCAB)  # no <eos>
    bad = doc.copy()
    bad[3] = VOCAB.special("<eoi>")  # <boi> replaced
    with pytest.raises(SequenceFormatError):
        parse_document(bad, VOCAB)
    short = np.delete(doc, 5)  # one image code fewer than the budget says
    with pytest.raises(SequenceFormatError):
        parse_document(short, VOCAB)


@pytest.mark.parametrize("task", TASKS)
def test_build_parse_identity_with_a_shared_visual_range(task: str) -> None:
    """Image and video codes in one id range: the structure tokens alone route each span."""
    shared = Vocab.from_config(VocabConfig(text_size=300, image_codebook=64, video_codebook=64, max_budget=16,
                                           max_time_steps=6, shared_visual=True))
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = choose_sample(_stored(rng, auto=True), task, SequenceConfig(auto_prob=0.5), shared, rng)
        doc = build_document(s, shared)
        assert parse_document(doc.ids, shared) == s
        assert int(doc.ids.max()) < shared.size
