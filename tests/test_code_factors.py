"""Factorized visual-code rows (mm1d.model.code_factors): the digit map, exact folding, and shared learning."""

from __future__ import annotations

import pytest
import torch

from mm1d.config import ModelConfig, VocabConfig
from mm1d.modality import Vocab
from mm1d.model.code_factors import attach_code_factors, digit_matrix, fold_code_factors, has_code_factors
from mm1d.model.transformer import Transformer
from mm1d.tokenization.fsq import FSQ, ids_to_digits

LEVELS = [4, 3, 2]  # 24 codes
CFG = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64)


def vocab(shared: bool = False) -> Vocab:
    return Vocab.from_config(VocabConfig(text_size=16, image_codebook=24, video_codebook=24, max_budget=4,
                                         max_time_steps=2, shared_visual=shared))


def test_digits_follow_the_fsq_id_convention() -> None:
    fsq = FSQ(LEVELS)
    ids = torch.arange(24)
    digits = ids_to_digits(ids, LEVELS)
    assert ((digits * fsq.basis).sum(-1) == ids).all()  # the mixed-radix sum gives the id back
    half = (fsq.levels // 2).float()
    assert torch.equal(fsq.indices_to_codes(ids), (digits.float() - half) / half)


def test_digit_matrix_marks_each_visual_code_digits_and_nothing_else() -> None:
    v = vocab()
    m = digit_matrix(v, {"image": LEVELS, "video": LEVELS})
    assert m.shape == (v.size, 2 * sum(LEVELS))
    assert m[: v.image_offset].abs().sum() == 0  # text and specials have no factors
    for modality, base in (("image", 0), ("video", sum(LEVELS))):
        start, _ = v.range(modality)
        for local in (0, 5, 23):
            d = ids_to_digits(torch.tensor(local), LEVELS)
            want = torch.zeros(m.shape[1])
            want[base + torch.tensor([0, 4, 7]) + d] = 1.0  # channel offsets 0, 4, 4+3
            assert torch.equal(m[start + local], want), (modality, local)
    shared = digit_matrix(vocab(shared=True), {"image": LEVELS, "video": LEVELS})
    assert shared.shape[1] == sum(LEVELS)  # one range, one set of slots
    with pytest.raises(ValueError, match="do not fit the image codebook of 24"):
        digit_matrix(v, {"image": [5, 5]})
    with pytest.raises(ValueError, match="levels differ"):
        digit_matrix(vocab(shared=True), {"image": LEVELS, "video": [2, 3, 4]})
    with pytest.raises(ValueError, match="not 'text'"):
        digit_matrix(v, {"text": LEVELS})


def test_attach_starts_as_the_plain_model_and_folds_exactly() -> None:
    v = vocab()
    m = digit_matrix(v, {"image": LEVELS, "video": LEVELS})
    torch.manual_seed(0)
    model = Transformer(CFG, v.size).eval()
    ids = torch.randint(0, v.size, (2, 20))
    with torch.no_grad():
        before = model(ids)
        attach_code_factors(model, m)
        assert torch.equal(model(ids), before)  # zero factors: the same function
        for p in model.parameters():
            if p.shape == (m.shape[1], CFG.d_model):
                p.normal_()
        factored = model(ids)
    assert not torch.allclose(factored, before)
    state = model.state_dict()
    assert has_code_factors(state)
    plain = Transformer(CFG, v.size).eval()
    plain.load_state_dict(fold_code_factors(state, m))  # strict: plain names only
    with torch.no_grad():
        assert torch.allclose(plain(ids), factored, atol=1e-6)
    assert not has_code_factors(plain.state_dict())
    with pytest.raises(ValueError, match="untied"):
        attach_code_factors(Transformer(ModelConfig(**{**CFG.__dict__, "tie_embeddings": True}), v.size), m)


def test_a_gradient_on_one_code_moves_the_codes_that_share_a_digit() -> None:
    v = vocab()
    m = digit_matrix(v, {"image": LEVELS})
    model = Transformer(CFG, v.size)
    attach_code_factors(model, m)
    emb = model.model.embed_tokens
    start, _ = v.range("image")
    digits = ids_to_digits(torch.arange(24), LEVELS)
    c = 0
    shares = int(next(i for i in range(1, 24) if (digits[i] == digits[c]).any()))
    disjoint = int(next(i for i in range(1, 24) if not (digits[i] == digits[c]).any()))
    before = emb.weight.detach().clone()
    emb(torch.tensor([start + c])).sum().backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    moved = (emb.weight.detach() - before).abs().sum(-1)  # (V,)
    assert moved[start + c] > 0 and moved[start + shares] > 0
    assert moved[start + disjoint] == 0 and moved[: v.image_offset].sum() == 0
