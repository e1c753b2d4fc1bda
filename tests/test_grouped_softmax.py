"""model.grouped_softmax: each next token is normalized over its id group (text + specials, image, video)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm1d.config import ModelConfig, VocabConfig
from mm1d.modality import Vocab
from mm1d.model import Transformer, load_model_bundle, save_model_bundle
from mm1d.model.code_factors import attach_code_factors, digit_matrix, fold_code_factors

VOCAB = Vocab.from_config(VocabConfig(text_size=20, image_codebook=8, video_codebook=8, max_budget=4,
                                      max_time_steps=2))
LEVELS = {"image": [2, 4], "video": [2, 4]}


def make(grouped: bool = True, seed: int = 0, **kw: object) -> Transformer:
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64,
                      grouped_softmax=grouped, qk_norm=True, **kw)
    torch.manual_seed(seed)
    model = Transformer(cfg, VOCAB.size, VOCAB.softmax_groups()).train()
    attach_code_factors(model, digit_matrix(VOCAB, LEVELS))
    with torch.no_grad():  # factors away from zero, so that a head that skipped the parametrization would show
        for module in (model.model.embed_tokens, model.lm_head):
            module.parametrizations.weight[0].factors.normal_(0.0, 0.5)
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two packed rows with padding; targets in every group, some ignored."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB.size, (2, 24), generator=g)
    targets = torch.randint(0, VOCAB.size, (2, 24), generator=g)
    doc_ids = torch.zeros(2, 24, dtype=torch.long)
    doc_ids[0, 10:] = 1
    doc_ids[1, 20:] = -1
    targets[doc_ids < 0] = -100
    targets[0, 2] = targets[1, 7] = -100
    return ids, targets, doc_ids


def _reference(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ce and lse from full logits with every id outside the target's group masked out."""
    ce, lse = torch.zeros(targets.shape), torch.zeros(targets.shape)
    for lo, hi in VOCAB.softmax_groups():
        at = (targets >= lo) & (targets < hi)
        part = logits[at][:, lo:hi]
        lse[at] = torch.logsumexp(part, dim=-1)
        ce[at] = lse[at] - part.gather(1, (targets[at] - lo)[:, None])[:, 0]
    return ce, lse


def test_vocab_groups_cover_the_ids_and_share_one_visual_group() -> None:
    assert VOCAB.softmax_groups() == ((0, VOCAB.image_offset), VOCAB.range("image"), VOCAB.range("video"))
    assert VOCAB.softmax_groups()[-1][1] == VOCAB.size
    shared = Vocab.from_config(VocabConfig(text_size=20, image_codebook=8, video_codebook=8, max_budget=4,
                                           max_time_steps=2, shared_visual=True))
    assert shared.softmax_groups() == ((0, shared.image_offset), (shared.image_offset, shared.size))


@pytest.mark.parametrize("chunk", [None, 5])
def test_grouped_losses_equal_a_masked_softmax_in_values_and_gradients(chunk: int | None) -> None:
    """Per-token ce and lse, and the gradients of ce + z-loss, equal those of the full logits with every id
    outside the target's group masked, on packed rows with padding (the unpadded training route), through the
    code-factor parametrization of the head, in one chunk or several."""
    ids, targets, doc_ids = _batch()
    model, ref = make(), make(attn_impl="sdpa")
    ce, lse = model(ids, doc_ids=doc_ids, targets=targets, loss_chunk_tokens=chunk)
    ref_ce, ref_lse = _reference(ref(ids, doc_ids=doc_ids), targets)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
    assert (ce[targets == -100] == 0).all() and (lse[targets == -100] == 0).all()
    full_lse = torch.logsumexp(ref(ids, doc_ids=doc_ids), dim=-1)
    assert ((full_lse - lse)[targets >= 0] > 1e-3).all()  # the groups are not the whole vocabulary
    grads = torch.autograd.grad((ce + 1e-2 * lse.pow(2)).sum(), list(model.parameters()))
    ref_grads = torch.autograd.grad((ref_ce + 1e-2 * ref_lse.pow(2)).sum(), list(ref.parameters()))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_grouped_head_computes_each_token_against_its_group_only() -> None:
    """The training loss never builds a token's logits over ids outside its target's group."""
    ids, targets, doc_ids = _batch()
    model = make()
    widths: list[tuple[int, int]] = []
    model.lm_head.register_forward_hook(lambda m, args, out: widths.append(tuple(out.shape)))
    model(ids, doc_ids=doc_ids, targets=targets)
    counts = [int(((targets >= lo) & (targets < hi)).sum()) for lo, hi in VOCAB.softmax_groups()]
    assert widths == [(n, hi - lo) for n, (lo, hi) in zip(counts, VOCAB.softmax_groups(), strict=True)]


def test_target_logprobs_normalize_within_each_group() -> None:
    model = make().eval()
    with torch.no_grad():
        h = model(torch.randint(0, VOCAB.size, (1, 6)), return_hidden=True)[0]  # (6, D)
        for lo, hi in VOCAB.softmax_groups():
            lp = torch.stack([model.target_logprobs(h, torch.full((6,), i)) for i in range(lo, hi)])  # (hi-lo, 6)
            torch.testing.assert_close(lp.exp().sum(0), torch.ones(6), rtol=1e-5, atol=1e-5)
        t = torch.tensor([0, VOCAB.image_offset, VOCAB.video_offset, 5, VOCAB.size - 1, 3])
        ce, _ = model.token_losses(h[None], t[None])
        torch.testing.assert_close(model.target_logprobs(h, t), -ce[0], rtol=1e-5, atol=1e-5)


def test_grouped_bundle_round_trip_and_errors(tmp_path: Path) -> None:
    model = make(seed=1).eval()
    plain = Transformer(model.config, VOCAB.size, VOCAB.softmax_groups()).eval()
    plain.load_state_dict(fold_code_factors(model.state_dict(), digit_matrix(VOCAB, LEVELS)))
    out = save_model_bundle(plain, plain.config, tmp_path / "b")
    loaded = load_model_bundle(out)
    assert loaded.softmax_groups == VOCAB.softmax_groups()
    ids, targets, doc_ids = _batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, doc_ids=doc_ids, targets=targets)[0],
                                   model(ids, doc_ids=doc_ids, targets=targets)[0], rtol=1e-5, atol=1e-5)
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("softmax_groups")
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'softmax_groups' is missing"):
        load_model_bundle(out)
    with pytest.raises(ValueError, match="needs its softmax_groups"):
        save_model_bundle(plain.state_dict(), plain.config, tmp_path / "c")
    with pytest.raises(ValueError, match="needs the vocabulary's id groups"):
        Transformer(plain.config, VOCAB.size)
    with pytest.raises(ValueError, match="contiguous ranges covering"):
        Transformer(plain.config, VOCAB.size, [(0, 10), (11, VOCAB.size)])
    ungrouped = Transformer(make(grouped=False).config, VOCAB.size, VOCAB.softmax_groups())
    assert ungrouped.softmax_groups == ((0, VOCAB.size),)
