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


@pytest.mark.parametrize("norm", ["layernorm", "rms", "batch", "renorm"])
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


def test_renorm_training_codes_ignore_the_batch_and_gradients_match_batch_norm() -> None:
    """Batch renormalization: the first step equals batch norm (values and gradients); later training
    steps give each sample the codes that eval mode gives with the statistics after that step, whatever
    the rest of the batch is, while batch norm's codes depend on the batch."""
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(16, 3, 4, generator=gen) * 3 + 1).requires_grad_(True)
    weights = torch.arange(4.0)
    renorm, batch = FSQ([8, 5, 5, 5], norm="renorm", num_positions=3), FSQ([8, 5, 5, 5], norm="batch", num_positions=3)
    (c_r, i_r), (c_b, i_b) = renorm(z), batch(z)
    assert torch.equal(i_r, i_b) and torch.allclose(c_r, c_b, atol=1e-6)
    g_r = torch.autograd.grad((c_r * weights).sum(), z)[0]
    g_b = torch.autograd.grad((c_b * weights).sum(), z)[0]
    assert torch.allclose(g_r, g_b, atol=1e-6)
    for _ in range(30):
        z_i = torch.randn(16, 3, 4, generator=gen) * 3 + 1
        renorm(z_i), batch(z_i)
    assert int(renorm.num_batches) == 31 and "num_batches" in renorm.state_dict()
    x = torch.randn(4, 3, 4, generator=gen) * 3 + 1
    ids_r, ids_b = [], []
    for shift in (0.0, 2.0):  # two batches whose other members differ a lot
        others = torch.randn(12, 3, 4, generator=gen) * 3 + 1 + shift
        for fsq, out in ((renorm, ids_r), (batch, ids_b)):
            fsq.train()
            train_ids = fsq(torch.cat([x, others]))[1][:4]
            fsq.eval()
            if fsq is renorm:
                assert torch.equal(train_ids, fsq(x)[1])  # = eval mode with the updated statistics
            out.append(train_ids)
    assert (ids_r[0] != ids_r[1]).float().mean() < 0.1  # only the slow statistics moved
    assert (ids_b[0] != ids_b[1]).float().mean() > 0.2


def test_renorm_warmup_trains_with_batch_statistics_first() -> None:
    """With renorm_warmup=W the first W training batches are normalized exactly as norm="batch" does."""
    gen = torch.Generator().manual_seed(1)
    warm = FSQ([8, 5, 5, 5], norm="renorm", num_positions=2, renorm_warmup=3)
    batch = FSQ([8, 5, 5, 5], norm="batch", num_positions=2)
    for step in range(1, 6):
        z = torch.randn(8, 2, 4, generator=gen) * 2 + 0.5
        same = torch.allclose(warm(z)[0], batch(z)[0], atol=1e-6)
        assert same == (step <= 3)


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
