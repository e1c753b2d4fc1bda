"""FSQ: codebook size, ids <-> codes round trip, straight-through gradients, normalization options."""

from __future__ import annotations

import pytest
import torch

from mm1d.tokenization.fsq import FSQ, round_ste


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8, 5, 5, 5], [3, 4]])
def test_codebook_size_and_full_round_trip(levels: list[int]) -> None:
    fsq = FSQ(levels)
    size = 1
    for v in levels:
        size *= v
    assert fsq.codebook_size == size
    ids = torch.arange(size)
    codes = fsq.indices_to_codes(ids)
    assert codes.shape == (size, len(levels))
    assert codes.min() >= -1 and codes.max() <= 1
    assert torch.equal(fsq.codes_to_indices(codes), ids)
    # every code vector is distinct
    assert torch.unique(codes, dim=0).shape[0] == size


def test_quantized_codes_are_grid_points_and_ids_match() -> None:
    fsq = FSQ([8, 5, 5, 5])
    z = torch.randn(4, 7, 4) * 3
    codes, ids = fsq(z)
    assert ids.shape == (4, 7) and ids.dtype == torch.long
    assert ids.min() >= 0 and ids.max() < fsq.codebook_size
    assert torch.equal(fsq.indices_to_codes(ids), codes)
    # quantizing an exact code again is the identity on ids (codes are fixed points up to the bound)
    assert torch.equal(fsq.codes_to_indices(codes), ids)


def test_all_levels_reachable() -> None:
    fsq = FSQ([8, 5])
    z = torch.linspace(-6, 6, 2001)[:, None].expand(-1, 2).reshape(1, -1, 2)
    codes, _ = fsq(z)
    assert torch.unique(codes[..., 0]).numel() == 8
    assert torch.unique(codes[..., 1]).numel() == 5


def test_straight_through_gradient() -> None:
    x = torch.tensor([0.2, 1.7, -2.4], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y.detach(), torch.tensor([0.0, 2.0, -2.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    fsq = FSQ([8, 5, 5, 5])
    z = torch.randn(2, 3, 4, requires_grad=True)
    codes, _ = fsq(z)
    codes.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["layernorm", "rms", "batch"])
def test_normalization_spreads_tiny_inputs(norm: str) -> None:
    """Near-zero encoder outputs collapse to one code without normalization, not with it."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 8, 4, generator=gen) * 1e-3
    plain = FSQ([8, 5, 5, 5])
    _, ids_plain = plain(z)
    assert torch.unique(ids_plain).numel() <= 2
    fsq = FSQ([8, 5, 5, 5], norm=norm, num_positions=8)
    _, ids = fsq(z)
    assert torch.unique(ids).numel() > 50


def test_batch_norm_eval_is_per_token() -> None:
    """In eval mode the batch norm uses running stats: a token's id ignores the rest of the batch."""
    fsq = FSQ([8, 5, 5, 5], norm="batch", num_positions=6, momentum=0.5)
    z = torch.randn(16, 6, 4)
    fsq.train()
    fsq(z)
    assert not torch.allclose(fsq.running_mean, torch.zeros(6, 4))
    fsq.eval()
    _, ids_all = fsq(z)
    _, ids_one = fsq(z[:1, :3])
    assert torch.equal(ids_all[:1, :3], ids_one)
    with pytest.raises(ValueError, match="positions"):
        fsq(torch.randn(1, 7, 4))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="levels"):
        FSQ([8, 1])
    with pytest.raises(ValueError, match="num_positions"):
        FSQ([8, 5], norm="batch")
    fsq = FSQ([8, 5, 5, 5])
    with pytest.raises(ValueError, match="outside the codebook"):
        fsq.indices_to_codes(torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="outside the codebook"):
        fsq.indices_to_codes(torch.tensor([-1]))
    with pytest.raises(ValueError, match="integer"):
        fsq.indices_to_codes(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="last dim"):
        fsq(torch.randn(1, 2, 3))


def test_random_ids_in_range() -> None:
    fsq = FSQ([3, 4])
    ids = fsq.random_ids((50, 3), generator=torch.Generator().manual_seed(1))
    assert ids.min() >= 0 and ids.max() < 12
    seen = set(ids.flatten().tolist())
    assert seen == set(range(12))
