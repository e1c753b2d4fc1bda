"""The decoder-only transformer: causality, packing, KV cache, losses, bundles, parameter counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mm1d.config import ModelConfig, VocabConfig
from mm1d.modality import Vocab
from mm1d.model import StaticKVCache, Transformer, attention, load_model_bundle, save_model_bundle
from mm1d.model.attention import (
    AttentionMask,
    attend,
    bucket_length,
    build_attention_mask,
    dense_doc_causal_mask,
    doc_cu_seqlens,
    doc_segments,
    flash_available,
    resolve_impl,
)
from mm1d.model.bundle import check_state_dict
from mm1d.model.summary import build_meta, load_model_sections, summarize

V = 97
REPO = Path(__file__).resolve().parents[1]


def tiny(**kw: object) -> ModelConfig:
    base = dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=64, rope_theta=1000.0)
    base.update(kw)
    return ModelConfig(**base)


def make(seed: int = 0, **kw: object) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(tiny(**kw), V).eval()
    with torch.no_grad():  # non-trivial norm weights so that a missing norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_causality_later_token_changes_no_earlier_logit(qk_norm: bool) -> None:
    model = make(qk_norm=qk_norm)
    x = torch.randint(0, V, (2, 24))
    t = 13
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % V
    with torch.no_grad():
        a, b = model(x), model(y)
    close(a[:, :t], b[:, :t], 1e-6)
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-3  # the change is visible from t on


def test_packed_rows_equal_documents_run_one_by_one() -> None:
    model = make(qk_norm=True)
    lengths = [[7, 11, 5], [20, 3]]
    docs = [[torch.randint(0, V, (1, n)) for n in row] for row in lengths]
    ids = torch.cat([torch.cat(row, 1) for row in docs])  # (2, 23)
    doc_ids = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths])
    positions = torch.tensor([[p for n in row for p in range(n)] for row in lengths])
    with torch.no_grad():
        packed = model(ids, positions, doc_ids)
        for r, row in enumerate(docs):
            start = 0
            for d in row:
                alone = model(d)
                close(packed[r : r + 1, start : start + d.shape[1]], alone)
                start += d.shape[1]


def test_no_cross_document_attention() -> None:
    model = make()
    ids = torch.randint(0, V, (1, 20))
    doc_ids = torch.tensor([[0] * 8 + [1] * 12])
    positions = torch.tensor([list(range(8)) + list(range(12))])
    changed = ids.clone()
    changed[0, :8] = (changed[0, :8] + 5) % V  # rewrite all of document 0
    with torch.no_grad():
        a = model(ids, positions, doc_ids)
        b = model(changed, positions, doc_ids)
    close(a[:, 8:], b[:, 8:], 1e-6)  # document 1 cannot see document 0
    assert (a[:, :8] - b[:, :8]).abs().max() > 1e-3
    mask = dense_doc_causal_mask(doc_ids)[0, 0]
    assert not mask[8:, :8].any() and mask[8:, 8:].equal(torch.ones(12, 12, dtype=torch.bool).tril())


def test_attention_mask_choice_and_flash_segments() -> None:
    cpu = torch.device("cpu")
    assert resolve_impl("auto", cpu) == "segments"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_impl("flash", cpu)
    with pytest.raises(ValueError, match="unknown attn_impl"):
        resolve_impl("xformers", cpu)
    assert build_attention_mask(None, "auto", cpu).kind == "causal"
    assert build_attention_mask(torch.zeros(2, 5, dtype=torch.long), "auto", cpu).kind == "causal"
    assert build_attention_mask(torch.tensor([[0, 0, 1]]), "sdpa", cpu).kind == "dense"
    assert build_attention_mask(torch.tensor([[0, 0, 1]]), "auto", cpu).kind == "segments"
    cu, longest = doc_cu_seqlens(torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [3, 4, 4, 5, 5]]))
    assert cu.tolist() == [0, 2, 5, 10, 11, 13, 15] and longest == 5


def test_bucket_lengths_hold_the_run_with_at_most_half_padding() -> None:
    assert [bucket_length(n) for n in (1, 16, 17, 24, 25, 33, 49, 65, 97, 129, 200, 512)] == [
        16, 16, 24, 24, 32, 48, 64, 96, 128, 192, 256, 512]
    assert all(n <= bucket_length(n) <= max(16, 1.5 * n) for n in range(1, 2000))


def test_segments_kernel_equals_dense_document_mask_in_values_and_gradients() -> None:
    """Gathering runs into length buckets, causal SDPA per bucket and scattering back is the dense mask's math,
    forward and backward, with GQA; a run that spans a row boundary is two runs."""
    torch.manual_seed(0)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7 + [2] * 30 + [3] * 2, [0] * 44, [4] * 20 + [5] * 24, [5] * 1 + [6] * 43])
    B, L = doc_ids.shape
    gathers, take = doc_segments(doc_ids)
    assert sorted(g.shape[1] for g in gathers) == [16, 24, 32, 48]  # runs of 1-7 / 20 / 24-30 / 43-44 tokens
    assert sorted(take.tolist()) == sorted(set(take.tolist())) and len(take) == B * L  # one output row each
    qkv = [torch.randn(B, h, L, 8, requires_grad=True) for h in (4, 2, 2)]
    got = attend(*qkv, AttentionMask("segments", gathers=gathers, take=take))
    want = attend(*qkv, AttentionMask("dense", dense=dense_doc_causal_mask(doc_ids)))
    close(got, want, 1e-5)
    w = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad((got * w).sum(), qkv), torch.autograd.grad((want * w).sum(), qkv)):
        close(a, b, 1e-5)


def test_segments_model_equals_dense_model_and_compiles_once() -> None:
    """The CPU default kernel gives the dense kernel's losses and gradients, and a compiled block does not
    recompile when only the document layout changes."""
    import torch._dynamo

    seg, dense = make(qk_norm=True).train(), make(qk_norm=True, attn_impl="sdpa").train()
    seg.compile_blocks(backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for cuts in ([5, 20], [3], [2, 9, 15, 30], list(range(1, 18))):
            doc_ids = torch.zeros(2, 40, dtype=torch.long)
            for c in cuts:
                doc_ids[0, c:] += 1
            doc_ids[1, 33:] = 1
            ids = torch.randint(0, V, (2, 40))
            losses = [m(ids, doc_ids=doc_ids, targets=ids)[0] for m in (seg, dense)]
            close(losses[0], losses[1], 1e-5)
            grads = [torch.autograd.grad(loss.sum(), list(m.parameters())) for loss, m in zip(losses, (seg, dense))]
            for a, b in zip(*grads):
                close(a, b, 1e-4)


def test_training_forward_drops_padding_and_keeps_the_padded_losses() -> None:
    """Under the variable-length kernel a training forward runs the blocks on the real tokens only (one
    concatenated sequence); its per-token losses and gradients equal the dense mask's on the padded batch,
    whatever the padding holds, and a compiled block does not recompile as the amount of padding changes."""
    import torch._dynamo

    seg, dense = make(qk_norm=True).train(), make(qk_norm=True, attn_impl="sdpa").train()
    seen: list[tuple[int, ...]] = []
    seg.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    seg.compile_blocks(backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for real in ((40, 31), (17, 40), (5, 28), (40, 40)):
            doc_ids = torch.full((2, 40), -1)
            doc_ids[0, : real[0]] = 0
            doc_ids[0, 9 : real[0]] = 1  # the first row's second document is cut by its padding
            doc_ids[1, : real[1]] = 0
            ids, targets = torch.randint(0, V, (2, 40)), torch.randint(0, V, (2, 40))
            targets[doc_ids < 0] = -100
            seen.clear()
            ce, lse = seg(ids, doc_ids=doc_ids, targets=targets)
            assert seen[-1][:2] == (1, sum(real))
            ce_d, lse_d = dense(ids, doc_ids=doc_ids, targets=targets)
            real_mask = doc_ids >= 0
            close(ce, ce_d, 1e-5)
            close(lse[real_mask], lse_d[real_mask], 1e-5)
            assert (ce[~real_mask] == 0).all() and (lse[~real_mask] == 0).all()
            other = torch.where(real_mask, ids, (ids + 1) % V)  # what the padding holds does not matter
            close(seg(other, doc_ids=doc_ids, targets=targets)[0], ce, 0.0)
            loss, loss_d = (ce + 1e-3 * lse).sum(), (ce_d + 1e-3 * torch.where(real_mask, lse_d, 0.0)).sum()
            for a, b in zip(torch.autograd.grad(loss, list(seg.parameters())),
                            torch.autograd.grad(loss_d, list(dense.parameters()))):
                close(a, b, 1e-4)
    targets[0, -1], doc_ids[0, -1] = 3, -1
    with pytest.raises(ValueError, match="padding tokens"):
        seg(ids, doc_ids=doc_ids, targets=targets)


def _segment_reference(q, k, v, cu_q, cu_k, max_q, max_k, *, is_causal=False):  # noqa: ANN001, ANN202
    """A CPU stand-in for torch's varlen_attn (no enable_gqa, as in older torch): causal SDPA per segment."""
    assert is_causal and q.shape[1] == k.shape[1], "the glue must ask for causal and repeat the KV heads"
    out = torch.empty_like(q)
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        seg = [t[s:e].transpose(0, 1)[None] for t in (q, k, v)]  # (1, H, n, hd)
        out[s:e] = F.scaled_dot_product_attention(*seg, is_causal=True)[0].transpose(0, 1)
    return out


def test_flash_varlen_glue_matches_dense_document_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flattening, segment offsets and GQA head repeat around the varlen kernel equal the dense mask."""
    monkeypatch.setattr(attention, "_varlen_kernel",
                        lambda: ("torch", _segment_reference, frozenset(["is_causal"])))
    torch.manual_seed(0)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7 + [2] * 4, [0] * 16])
    q, k, v = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    cu, longest = doc_cu_seqlens(doc_ids)
    got = attend(q, k, v, AttentionMask("flash", cu_seqlens=cu, max_seqlen=longest))
    want = attend(q, k, v, AttentionMask("dense", dense=dense_doc_causal_mask(doc_ids)))
    close(got, want, 1e-5)

def test_gradient_checkpointing_gives_same_gradients() -> None:
    x = torch.randint(0, V, (2, 16))
    grads = []
    for ckpt in (False, True):
        model = make(qk_norm=True).train()
        model.gradient_checkpointing = ckpt
        doc_ids = torch.tensor([[0] * 6 + [1] * 10, [0] * 16])
        F.cross_entropy(model(x, doc_ids=doc_ids).flatten(0, 1), x.flatten()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    close(grads[0], grads[1], 1e-6)


def test_token_losses_match_full_logits_and_gradients() -> None:
    x = torch.randint(0, V, (2, 16))
    targets = torch.randint(0, V, (2, 16))
    targets[0, :3] = -100
    ref_model, model = make(), make()
    logits = ref_model(x)
    ref_ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(2, 16)
    ref_lse = torch.logsumexp(logits, -1)
    (ref_ce.sum() + 1e-2 * ref_lse.pow(2).sum()).backward()
    h = model(x, return_hidden=True)
    ce, lse = model.token_losses(h, targets, chunk_tokens=5)  # several chunks, a ragged last one
    (ce.sum() + 1e-2 * lse.pow(2).sum()).backward()
    close(ce, ref_ce.detach())
    close(lse, ref_lse.detach())
    assert (ce[0, :3] == 0).all()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        close(p.grad, q.grad, 1e-5)
    ce2, _ = model(x, targets=targets)  # the forward(targets=...) route gives the same numbers
    close(ce2, ce.detach())


@pytest.mark.parametrize("qk_norm", [False, True])
def test_cached_decoding_equals_full_recomputation(qk_norm: bool) -> None:
    model = make(qk_norm=qk_norm)
    prompts = [torch.randint(0, V, (7,)), torch.randint(0, V, (4,))]
    steps = 5
    width = max(len(p) for p in prompts)
    ids = torch.zeros(2, width, dtype=torch.long)
    token_mask = torch.zeros(2, width, dtype=torch.bool)
    for r, p in enumerate(prompts):  # left-pad the shorter prompt
        ids[r, width - len(p) :] = p
        token_mask[r, width - len(p) :] = True
    cache = model.new_kv_cache(2, width + steps)
    seqs = [p.clone() for p in prompts]
    with torch.no_grad():
        logits = model(ids, kv_cache=cache, token_mask=token_mask)
        for r, p in enumerate(prompts):
            close(logits[r, width - len(p) :], model(p[None])[0])
        for _ in range(steps):
            nxt = logits[:, -1].argmax(-1)  # (2,)
            seqs = [torch.cat([s, nxt[r : r + 1]]) for r, s in enumerate(seqs)]
            logits = model(nxt[:, None], kv_cache=cache)
            for r, s in enumerate(seqs):
                close(logits[r, -1], model(s[None])[0, -1])
    assert cache.length == width + steps
    assert cache.next_pos.tolist() == [len(s) for s in seqs]
    with pytest.raises(ValueError, match="KV cache full"):
        model(nxt[:, None], kv_cache=cache)


def test_chunked_prefill_equals_one_prefill() -> None:
    model = make(n_kv_heads=1)  # multi-query: 4 query heads share one KV head
    x = torch.randint(0, V, (1, 12))
    cache = StaticKVCache.for_model(model, 1, 16)
    with torch.no_grad():
        a = model(x[:, :5], kv_cache=cache)
        b = model(x[:, 5:], kv_cache=cache)
        full = model(x)
    close(torch.cat([a, b], 1), full)


def test_bundle_round_trip_and_shape_errors(tmp_path: Path) -> None:
    for tie in (False, True):
        model = make(tie_embeddings=tie)
        out = save_model_bundle(model, model.config, tmp_path / f"b{tie}", extra={"vocab": {"text_size": 5}})
        loaded = load_model_bundle(out)
        x = torch.randint(0, V, (1, 9))
        with torch.no_grad():
            close(loaded(x), model(x), 0.0)
        assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    other = Transformer(tiny(d_model=32), V)
    with pytest.raises(ValueError, match="does not match this model shape"):
        check_state_dict(other, make().state_dict())
    with pytest.raises(FileNotFoundError, match="no model bundle"):
        load_model_bundle(tmp_path / "missing")
    with pytest.raises(ValueError, match="reserved"):
        save_model_bundle(make(), tiny(), tmp_path / "x", extra={"model": 1})


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="multiple of model.n_kv_heads"):
        Transformer(tiny(n_kv_heads=3), V)
    with pytest.raises(ValueError, match="max_seq_len"):
        make()(torch.zeros(1, 65, dtype=torch.long))


def _expected_counts(cfg: ModelConfig, vocab: int) -> tuple[int, int]:
    hd = cfg.head_dim or cfg.d_model // cfg.n_heads
    attn = cfg.d_model * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + (2 * hd if cfg.qk_norm else 0)
    layer = attn + 3 * cfg.d_model * cfg.ffn_hidden + 2 * cfg.d_model
    non_emb = cfg.n_layers * layer + cfg.d_model
    emb = vocab * cfg.d_model
    return non_emb, non_emb + emb * (1 if cfg.tie_embeddings else 2)


@pytest.mark.parametrize("tie,qk", [(False, False), (True, True)])
def test_meta_summary_counts_match_closed_form(tie: bool, qk: bool) -> None:
    cfg = ModelConfig(d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_hidden=704, qk_norm=qk, tie_embeddings=tie)
    vcfg = VocabConfig()
    vocab = Vocab.from_config(vcfg).size
    model = build_meta(cfg, Vocab.from_config(vcfg))
    assert next(model.parameters()).device.type == "meta"
    s = summarize(cfg, vcfg)
    non_emb, total = _expected_counts(cfg, vocab)
    assert (s["non_embedding"], s["total"], s["vocab_size"]) == (non_emb, total, vocab)


@pytest.mark.parametrize("name,target", [("mm_350m", 350e6), ("mm_1b", 1e9), ("mm_3b", 3e9)])
def test_release_configs_are_within_five_percent_of_their_name(name: str, target: float) -> None:
    cfg, vcfg = load_model_sections(REPO / "configs" / f"{name}.yaml")
    s = summarize(cfg, vcfg)
    assert abs(s["total"] / target - 1) < 0.05, s


def test_mm_3b_has_the_issue_shape() -> None:
    cfg, vcfg = load_model_sections(REPO / "configs" / "mm_3b.yaml", ["model.max_seq_len=4096"])
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden) == (3072, 28, 24, 8, 8192)
    assert cfg.qk_norm and cfg.rope_theta == 1e6 and cfg.max_seq_len == 4096
    assert summarize(cfg, vcfg)["total"] == _expected_counts(cfg, Vocab.from_config(vcfg).size)[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flex_attention_on_gpu_matches_dense_mask_and_documents() -> None:
    flex = make(qk_norm=True, attn_impl="flex", max_seq_len=256).cuda().train()
    dense = make(qk_norm=True, attn_impl="sdpa", max_seq_len=256).cuda().train()  # same seed: same weights
    lengths = [[70, 130, 56], [256]]
    ids = torch.randint(0, V, (2, 256), device="cuda")
    doc_ids = torch.tensor([[i for i, n in enumerate(r) for _ in range(n)] for r in lengths], device="cuda")
    positions = torch.tensor([[p for n in r for p in range(n)] for r in lengths], device="cuda")
    a = flex(ids, positions, doc_ids)
    b = dense(ids, positions, doc_ids)
    close(a, b, 1e-4)
    a.square().mean().backward()
    b.square().mean().backward()
    for p, q in zip(flex.parameters(), dense.parameters()):
        close(p.grad, q.grad, 1e-4)
    with torch.no_grad():  # the second document of row 0 equals its run alone
        close(a[0:1, 70:200], flex(ids[0:1, 70:200]), 1e-4)



@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and flash_available()), reason="needs CUDA and a varlen kernel")
def test_flash_varlen_on_gpu_matches_dense_mask_and_documents() -> None:
    flash = make(qk_norm=True, attn_impl="flash", max_seq_len=256).cuda().bfloat16().train()
    dense = make(qk_norm=True, attn_impl="sdpa", max_seq_len=256).cuda().bfloat16().train()
    lengths = [[70, 130, 56], [256]]
    ids = torch.randint(0, V, (2, 256), device="cuda")
    doc_ids = torch.tensor([[i for i, n in enumerate(r) for _ in range(n)] for r in lengths], device="cuda")
    positions = torch.tensor([[p for n in r for p in range(n)] for r in lengths], device="cuda")
    assert build_attention_mask(doc_ids, "flash", ids.device).kind == "flash"
    a, b = flash(ids, positions, doc_ids).float(), dense(ids, positions, doc_ids).float()
    rel = lambda x, y: float((x - y).norm() / y.norm())  # noqa: E731
    assert rel(a, b) < 1e-2  # bf16: two kernels agree to rounding
    a.square().mean().backward()
    b.square().mean().backward()
    for p, q in zip(flash.parameters(), dense.parameters()):
        assert rel(p.grad.float(), q.grad.float()) < 3e-2
    with torch.no_grad():  # the second document of row 0 equals its run alone
        assert rel(a[0:1, 70:200], flash(ids[0:1, 70:200]).float()) < 1e-2

@pytest.mark.slow
def test_flex_attention_compiles_once_for_any_document_layout() -> None:
    """The compiled FlexAttention is reused when only doc_ids change (no recompile per packed batch).

    Runs on the CPU (inductor); the first compile takes minutes here, hence ``slow``.
    """
    import torch._dynamo

    from mm1d.model.attention import _compiled_flex, _flex_block_mask

    torch.manual_seed(0)
    b, h, length, hd = 2, 4, 128, 16
    q, k, v = torch.randn(b, h, length, hd), torch.randn(b, 2, length, hd), torch.randn(b, 2, length, hd)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for cuts in ([40, 90], [5], [10, 20, 30, 100]):
            doc = torch.zeros(b, length, dtype=torch.long)
            for c in cuts:
                doc[0, c:] += 1
            doc[1, length // 2 :] = 1
            out = _compiled_flex()(q, k, v, block_mask=_flex_block_mask(doc), enable_gqa=True)
            dense = dense_doc_causal_mask(doc)
            ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                 attn_mask=dense)
            assert torch.allclose(out, ref, atol=1e-5)


def test_compile_blocks_keeps_parameter_names_and_losses() -> None:
    from mm1d.model.transformer import ce_and_lse

    model = make(qk_norm=True)
    x, t = torch.randint(0, V, (2, 24)), torch.randint(0, V, (2, 24))
    t[0, :5] = -100
    names = list(model.state_dict())
    ce, lse = model(x, targets=t, loss_chunk_tokens=16)
    model.compile_blocks(backend="eager")  # the wiring, without inductor's CPU compile time
    assert list(model.state_dict()) == names  # checkpoints and HF export stay interchangeable
    assert model._ce_and_lse is not ce_and_lse
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    ce2, lse2 = model(x, targets=t, loss_chunk_tokens=16)
    close(ce2, ce, 1e-6)
    close(lse2, lse, 1e-6)
    assert (ce[0, :5] == 0).all()


def test_engine_compile_flag_compiles_in_place() -> None:
    from mm1d.config import EngineConfig, OptimConfig
    from mm1d.training.engine import Engine

    model = make()
    names = list(model.state_dict())
    Engine(model, EngineConfig(backend="torch", compile=True), OptimConfig(), total_steps=10)
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    assert list(model.state_dict()) == names
