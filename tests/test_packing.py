"""Packing: document masks, per-document positions, loss masks and per-modality loss weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mm1d.config import LossConfig, SequenceConfig, VocabConfig
from mm1d.data.packing import RowPacker, attention_mask, collate_rows, pack_documents
from mm1d.modality import Vocab
from mm1d.sequence import (
    IGNORE_INDEX,
    MOD_IGNORE,
    TASKS,
    StoredSample,
    build_document,
    choose_sample,
    parse_document,
    split_documents,
)

VOCAB = Vocab.from_config(VocabConfig(text_size=300, image_codebook=64, video_codebook=48, max_budget=16,
                                      max_time_steps=6))


def _docs(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        st = StoredSample(
            text=rng.integers(0, 300, size=int(rng.integers(1, 10))).astype(np.uint16),
            image=rng.integers(0, 64, size=16).astype(np.uint16),
            video=rng.integers(0, 48, size=(3, 8)).astype(np.uint16),
            cond=rng.integers(0, 64, size=16).astype(np.uint16),
        )
        docs.append(build_document(choose_sample(st, TASKS[i % len(TASKS)], SequenceConfig(), VOCAB, rng), VOCAB))
    return docs


def test_rows_roundtrip_and_positions() -> None:
    docs = _docs(30)
    rows = pack_documents(docs, 96, VOCAB.pad_id, LossConfig())
    back = [d for r in rows for d in split_documents(r.input_ids, r.doc_ids)]
    assert len(back) == len(docs)
    for a, b in zip(back, docs, strict=True):
        np.testing.assert_array_equal(a, b.ids)
        parse_document(a, VOCAB)
    for r in rows:
        assert len(r.input_ids) == 96
        for d in range(r.num_docs):
            sel = r.doc_ids == d
            np.testing.assert_array_equal(r.positions[sel], np.arange(sel.sum()))  # restart per document
            assert r.input_ids[sel][0] == VOCAB.special("<bos>")
        pad = r.doc_ids == -1
        assert (r.input_ids[pad] == VOCAB.pad_id).all()
        np.testing.assert_array_equal(r.positions[pad], np.arange(pad.sum()))


def test_targets_are_next_token_within_document() -> None:
    rows = pack_documents(_docs(20), 128, VOCAB.pad_id, LossConfig())
    for r in rows:
        valid = r.targets != IGNORE_INDEX
        idx = np.nonzero(valid)[0]
        np.testing.assert_array_equal(r.targets[idx], r.input_ids[idx + 1])
        assert (r.doc_ids[idx] == r.doc_ids[idx + 1]).all()
        # last token of each document and all padding have no target
        last = np.nonzero(np.diff(np.append(r.doc_ids, -2)) != 0)[0]
        assert (r.targets[last] == IGNORE_INDEX).all()
        assert (r.targets[r.doc_ids == -1] == IGNORE_INDEX).all()
        assert ((r.modality == MOD_IGNORE) == ~valid).all()


def test_no_attention_across_documents() -> None:
    rows = pack_documents(_docs(25, seed=3), 100, VOCAB.pad_id, LossConfig())
    batch = collate_rows(rows, LossConfig())
    mask = batch.attention_mask()
    B, L = batch.input_ids.shape
    assert mask.shape == (B, L, L)
    doc = batch.doc_ids
    for b in range(B):
        for q in range(L):
            allowed = torch.nonzero(mask[b, q]).flatten()
            assert (doc[b, allowed] == doc[b, q]).all()  # never another document
            assert (allowed <= q).all()  # causal
            # and everything earlier in the same document is allowed
            same = torch.nonzero((doc[b] == doc[b, q]) & (torch.arange(L) <= q)).flatten()
            assert torch.equal(allowed, same)
    torch.testing.assert_close(attention_mask(doc), mask)


def test_loss_mask_excludes_prompt_when_configured() -> None:
    docs = _docs(24, seed=5)
    full = pack_documents(docs, 160, VOCAB.pad_id, LossConfig())
    cut = pack_documents(docs, 160, VOCAB.pad_id, LossConfig(caption_loss_in_generation=False,
                                                              visual_loss_in_understanding=False))
    n_prompt_targets = 0
    for rf, rc in zip(full, cut, strict=True):
        for d in range(rf.num_docs):
            sel = np.nonzero(rf.doc_ids == d)[0]
            doc = next(x for x in docs if len(x) == len(sel) and np.array_equal(x.ids, rf.input_ids[sel]))
            tgt_prompt = doc.prompt[1:]  # flag of the token being predicted
            if doc.task in ("t2i", "t2v", "ti2v", "i2t", "v2t"):
                assert (rc.targets[sel[:-1]][tgt_prompt] == IGNORE_INDEX).all()
                n_prompt_targets += int(tgt_prompt.sum())
            np.testing.assert_array_equal(rc.targets[sel[:-1]][~tgt_prompt], rf.targets[sel[:-1]][~tgt_prompt])
            assert (rf.targets[sel[:-1]] != IGNORE_INDEX).all()  # default: loss on every non-pad target
    assert n_prompt_targets > 0


def test_modality_loss_weights_are_weighted_means() -> None:
    loss = LossConfig(text=1.0, image=2.0, video=0.5)
    rows = pack_documents(_docs(30, seed=7), 128, VOCAB.pad_id, loss)
    batch = collate_rows(rows, loss)
    ce = torch.rand(batch.input_ids.shape, generator=torch.Generator().manual_seed(0)) * 5
    means = {m: ce[batch.modality == m].mean() for m in range(3)}
    expected = (1.0 * means[0] + 2.0 * means[1] + 0.5 * means[2]) / 3.5
    torch.testing.assert_close(batch.loss(ce), expected.float(), rtol=1e-5, atol=1e-6)
    assert (batch.loss_weight[batch.targets == IGNORE_INDEX] == 0).all()
    names = batch.modality_losses(ce)
    assert set(names) == {"text", "image", "video"}
    torch.testing.assert_close(torch.tensor(names["image"]), means[1])


def test_errors() -> None:
    packer = RowPacker(16, VOCAB.pad_id, LossConfig())
    long_doc = _docs(6)[1]  # an i2t document of 16 image codes: longer than 16 tokens
    with pytest.raises(ValueError, match="longer than seq_len"):
        packer.add(long_doc)
