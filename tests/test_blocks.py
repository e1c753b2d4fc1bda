"""Shared transformer pieces: masks, attention causality, adaLN, embeddings, patchify."""

from __future__ import annotations

import pytest
import torch

from mm1d.tokenization.blocks import (
    AdaLNBlock,
    AdaLNFinal,
    Attention,
    Block,
    TimestepEmbedder,
    build_attention_mask,
    causal_last_mask,
    patchify,
    sincos_2d,
    unpatchify,
)


def test_causal_last_mask_structure() -> None:
    p, r = 3, 4
    m = causal_last_mask(p, r)
    assert m.shape == (7, 7) and m.dtype == torch.bool
    assert m[:p, :p].all() and not m[:p, p:].any()  # patches: all patches, no registers
    assert m[p:, :p].all()  # registers see all patches
    assert torch.equal(m[p:, p:], torch.tril(torch.ones(r, r, dtype=torch.bool)))


def test_time_block_causal_mask() -> None:
    # two time blocks, each [2 patches ; 2 registers]
    time = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    is_reg = torch.tensor([False, False, True, True] * 2)
    order = torch.tensor([0, 0, 0, 1] * 2)
    m = build_attention_mask(time, is_reg, order, time_mode="causal", register_mode="causal")
    assert not m[:4, 4:].any()  # block 0 never sees block 1
    assert m[4:6, 0:2].all() and not m[4:6, 2:4].any()  # later patches see past patches only
    assert m[6:, :4].all()  # later registers see past patches and registers
    assert m[6, 6] and not m[6, 7] and m[7, 6]
    m_block = build_attention_mask(time, is_reg, order, time_mode="block")
    assert not m_block[4:, :4].any()
    m_nopast = build_attention_mask(time, is_reg, order, time_mode="causal", registers_see_past_registers=False)
    assert m_nopast[6, :2].all() and not m_nopast[6, 2:4].any()
    assert m.diagonal().all() and m_block.diagonal().all()
    with pytest.raises(ValueError):
        build_attention_mask(time, is_reg, order[:3])


def test_encoder_register_causality_exact() -> None:
    """With the causal_last mask, register i's output ignores later registers and patches ignore all."""
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([Block(32, 2) for _ in range(2)])
    x = torch.randn(2, 5 + 6, 32)
    y = x.clone()
    y[:, 5 + 3 :] += torch.randn(2, 3, 32)  # change registers 3..5
    mask = causal_last_mask(5, 6)

    def run(z: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            z = blk(z, mask)
        return z

    ox, oy = run(x), run(y)
    assert torch.allclose(ox[:, : 5 + 3], oy[:, : 5 + 3], atol=1e-6)
    assert not torch.allclose(ox[:, 5 + 3 :], oy[:, 5 + 3 :])


def test_attention_per_sample_mask_matches_shared() -> None:
    torch.manual_seed(0)
    attn = Attention(32, 4, qk_norm=True)
    x = torch.randn(2, 6, 32)
    m0 = causal_last_mask(3, 3)
    m1 = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    out = attn(x, torch.stack([m0, m1]))
    assert torch.allclose(out[:1], attn(x[:1], m0), atol=1e-6)
    assert torch.allclose(out[1:], attn(x[1:], m1), atol=1e-6)
    # a float mask is an additive bias on the logits: -inf where the bool mask is False gives the same output
    bias = torch.zeros(6, 6).masked_fill(~m1, float("-inf"))
    torch.testing.assert_close(attn(x, bias), attn(x, m1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="bool or a torch.float32 bias"):
        attn(x, m0.double())
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, 4)


def test_adaln_zero_init_is_identity_and_groups() -> None:
    torch.manual_seed(0)
    blk = AdaLNBlock(16, 2, num_groups=2)
    x, cond = torch.randn(2, 5, 16), torch.randn(2, 16)
    groups = torch.tensor([0, 0, 0, 1, 1])
    assert torch.equal(blk(x, cond, groups), x)
    torch.nn.init.normal_(blk.modulation.weight)
    out = blk(x, cond, groups)
    # per-token conditioning equal to the broadcast vector gives the same result
    out_tok = blk(x, cond[:, None].expand(-1, 5, -1), groups)
    assert torch.allclose(out, out_tok, atol=1e-5)
    # group 1 tokens use different parameters than group 0 (mask: tokens 0..2 do not see 3..4)
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[:3, 3:] = False
    out = blk(x, cond, groups, mask)
    out_same = blk(x, cond, torch.zeros(5, dtype=torch.long), mask)
    assert torch.allclose(out[:, :3], out_same[:, :3], atol=1e-6)
    assert not torch.allclose(out[:, 3:], out_same[:, 3:])
    final = AdaLNFinal(16, 7, num_groups=2)
    assert torch.equal(final(x, cond, groups), torch.zeros(2, 5, 7))
    with pytest.raises(ValueError, match="group"):
        blk(x, cond)


@pytest.mark.parametrize("dim,out_dim", [(16, 40), (16, 6)])
def test_adaln_final_widens_exactly(dim: int, out_dim: int) -> None:
    """An MLP head widened from a linear head computes the same function, then trains its extra units."""
    torch.manual_seed(0)
    old = AdaLNFinal(dim, out_dim, num_groups=2)
    for p in old.parameters():
        torch.nn.init.normal_(p, std=0.5)
    r = min(dim, out_dim)
    wide = AdaLNFinal(dim, out_dim, num_groups=2, hidden=2 * r + 9)
    wide.widen_from(old)
    x, cond = torch.randn(3, 5, dim), torch.randn(3, 5, dim)
    groups = torch.tensor([0, 0, 0, 1, 1])
    torch.testing.assert_close(wide(x, cond, groups), old(x, cond, groups), atol=1e-4, rtol=1e-4)
    # the extra units have random inputs and zero outputs: the loss reaches their output weights
    wide(x, cond, groups).square().sum().backward()
    assert wide.out[1].weight.grad[:, 2 * r:].abs().sum() > 0
    with pytest.raises(ValueError, match=f"at least {2 * r} hidden units"):
        AdaLNFinal(dim, out_dim, num_groups=2, hidden=2 * r - 1).widen_from(old)
    with pytest.raises(ValueError, match="linear head into an MLP head"):
        AdaLNFinal(dim, out_dim, num_groups=2, hidden=2 * r).widen_from(wide)


def test_embeddings() -> None:
    pe = sincos_2d(4, 3, 16)
    assert pe.shape == (12, 16)
    assert torch.unique(pe, dim=0).shape[0] == 12
    with pytest.raises(ValueError):
        sincos_2d(2, 2, 6)
    te = TimestepEmbedder(8)
    out = te(torch.tensor([0.0, 0.5, 1.0]))
    assert out.shape == (3, 8) and not torch.allclose(out[0], out[2])


def test_patchify_round_trip() -> None:
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(p[0, 1], x[0, :, 0:4, 4:8].reshape(-1))
    assert torch.equal(unpatchify(p, 4, 3, 8, 12), x)
    with pytest.raises(ValueError, match="divisible"):
        patchify(x, 5)
