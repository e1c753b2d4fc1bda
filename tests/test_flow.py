"""Rectified flow: noising, timestep sampling, Euler exactness, CFG/APG properties."""

from __future__ import annotations

import pytest
import torch

from mm1d.tokenization.flow import (
    APGConfig,
    Guider,
    add_noise,
    cfg_combine,
    contrast_weights,
    euler_sample,
    guided_velocity,
    predict_x0,
    sample_timesteps,
    velocity_from_x0,
    velocity_target,
    weighted_mse,
)


def test_noising_endpoints_and_velocity() -> None:
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert torch.equal(add_noise(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(add_noise(x0, noise, torch.ones(3)), noise)
    t = torch.tensor([0.1, 0.5, 0.9])
    xt = add_noise(x0, noise, t)
    v = velocity_target(x0, noise)
    # dx_t/dt equals the velocity target
    eps = 1e-3
    fd = (add_noise(x0, noise, t + eps) - add_noise(x0, noise, t - eps)) / (2 * eps)
    assert torch.allclose(fd, v, atol=1e-3)
    assert torch.allclose(predict_x0(xt, v, t), x0, atol=1e-6)


@pytest.mark.parametrize("mode", ["logit_normal", "uniform"])
def test_timestep_sampling(mode: str) -> None:
    t1 = sample_timesteps(4096, mode, torch.Generator().manual_seed(0))
    t2 = sample_timesteps(4096, mode, torch.Generator().manual_seed(0))
    assert torch.equal(t1, t2)
    assert t1.shape == (4096,) and t1.min() > 0 and t1.max() < 1
    assert abs(float(t1.mean()) - 0.5) < 0.03
    if mode == "logit_normal":  # concentrated in the middle
        assert float(((t1 > 0.25) & (t1 < 0.75)).float().mean()) > 0.6
    with pytest.raises(ValueError, match="timestep sampling"):
        sample_timesteps(2, "bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [1, 3, 20])
def test_euler_with_exact_velocity_recovers_x0(steps: int) -> None:
    x0 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(x0)
    calls = []

    def v_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(float(t[0]))
        assert torch.allclose(x, add_noise(x0, noise, t), atol=1e-6)  # on the straight path (t is fp32)
        return noise - x0

    out = euler_sample(v_fn, noise, steps)
    assert torch.allclose(out, x0, atol=1e-10)
    assert len(calls) == steps and calls[0] == 1.0
    with pytest.raises(ValueError, match="steps"):
        euler_sample(v_fn, noise, 0)


@pytest.mark.parametrize("steps", [1, 4])
def test_x0_prediction_gives_the_exact_velocity_and_euler_recovers_x0(steps: int) -> None:
    x0 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.3, 1.0], dtype=torch.float64)
    xt = add_noise(x0, noise, t)
    assert torch.allclose(velocity_from_x0(xt, x0, t), velocity_target(x0, noise), atol=1e-12)
    # below t_min the divisor is clamped, so the velocity stays bounded (not (x_t - x0) / t)
    tiny = torch.full((2,), 1e-4, dtype=torch.float64)
    wrong = x0 + 1.0
    assert torch.allclose(velocity_from_x0(x0, wrong, tiny, t_min=0.05), torch.full_like(x0, -20.0))
    # a perfect clean-data predictor, sampled with Euler through velocity_from_x0, lands on x0
    out = euler_sample(lambda x, tt: velocity_from_x0(x, x0, tt.to(x.dtype)), noise, steps)
    assert torch.allclose(out, x0, atol=1e-6)


def test_cfg_scale_one_is_conditional() -> None:
    cond, uncond = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.equal(cfg_combine(cond, uncond, 1.0), cond)
    assert torch.allclose(cfg_combine(cond, uncond, 3.0), uncond + 3 * (cond - uncond))
    g = Guider(1.0, APGConfig())
    for _ in range(3):  # APG at scale 1 is the conditional prediction at every step
        assert torch.allclose(g(cond, uncond), cond)
    calls = []

    def model(x: torch.Tensor, t: torch.Tensor, with_uncond: bool) -> torch.Tensor:
        calls.append(with_uncond)
        return x * 2

    fn = guided_velocity(model, 1.0, APGConfig())
    assert torch.equal(fn(cond, torch.zeros(2)), cond * 2)
    assert calls == [False]  # no unconditional pass at scale 1


def test_apg_projection_and_clip() -> None:
    cond = torch.tensor([[1.0, 0.0, 0.0]])
    uncond = torch.tensor([[0.0, -3.0, -1.0]])  # diff = (1, 3, 1)
    g = Guider(2.0, APGConfig(momentum=0.0, norm_threshold=0.0, eta=0.0))
    out = g(cond, uncond)
    assert torch.allclose(out, torch.tensor([[1.0, 3.0, 1.0]]))  # parallel part (1,0,0) removed
    g = Guider(2.0, APGConfig(momentum=0.0, norm_threshold=1.0, eta=1.0))
    out = g(cond, uncond)
    diff = torch.tensor([[1.0, 3.0, 1.0]])
    assert torch.allclose(out, cond + diff / diff.norm())


def test_apg_momentum_is_per_sample() -> None:
    """A batch of 2 gives, over several steps, the same result as each sample guided alone."""
    gen = torch.Generator().manual_seed(0)
    conds = [torch.randn(2, 3, 4, 4, generator=gen) for _ in range(4)]
    unconds = [torch.randn(2, 3, 4, 4, generator=gen) * 3 for _ in range(4)]
    cfg = APGConfig(momentum=-0.5, norm_threshold=2.5, eta=0.0)
    both, first, second = Guider(5.0, cfg), Guider(5.0, cfg), Guider(5.0, cfg)
    for c, u in zip(conds, unconds, strict=True):
        out = both(c, u)
        assert torch.allclose(out[:1], first(c[:1], u[:1]), atol=1e-6)
        assert torch.allclose(out[1:], second(c[1:], u[1:]), atol=1e-6)
    # momentum really is active: a guider without momentum differs at step 2+
    nomom = Guider(5.0, APGConfig(momentum=0.0))
    outs = [nomom(c, u) for c, u in zip(conds, unconds, strict=True)]
    fresh = Guider(5.0, cfg)
    outs_m = [fresh(c, u) for c, u in zip(conds, unconds, strict=True)]
    assert torch.allclose(outs[0], outs_m[0])
    assert not torch.allclose(outs[1], outs_m[1])


def test_guided_sampling_batched_equals_alone() -> None:
    """Full Euler runs with APG: batch of 2 equals each sample alone."""
    w = torch.randn(3, 3)

    def model(x: torch.Tensor, t: torch.Tensor, with_uncond: bool) -> torch.Tensor:
        out = torch.einsum("ij,bjhw->bihw", w, x) * t[:, None, None, None]
        if with_uncond:
            half = x.shape[0] // 2
            out = torch.cat([out[:half], 0.3 * out[half:] - 1.0])
        return out

    noise = torch.randn(2, 3, 4, 4)
    batched = euler_sample(guided_velocity(model, 4.0, APGConfig()), noise, 5)
    for i in range(2):
        alone = euler_sample(guided_velocity(model, 4.0, APGConfig()), noise[i : i + 1], 5)
        assert torch.allclose(batched[i : i + 1], alone, atol=1e-5)


def test_contrast_weights_mark_what_stands_out() -> None:
    """Background positions get weight 1, the most distinct one 1 + strength, per sample."""
    x = -torch.ones(2, 3, 8, 8)  # black background
    x[0, :, 2:4, 2:4] = 1.0  # a white square in sample 0
    x[1, 0, 5, 5] = 0.0  # a dimmer red dot in sample 1
    w = contrast_weights(x, 9.0)
    assert w.shape == (2, 1, 8, 8)
    assert torch.all(w[0, 0, 2:4, 2:4] == 10.0) and torch.all(w[1, 0, 5, 5] == 10.0)  # max per sample
    assert w[0].sum() == 64 + 4 * 9 and w[1].sum() == 64 + 9  # everything else is background
    assert torch.equal(contrast_weights(x, 0.0), torch.ones(2, 1, 8, 8))
    v = torch.randn(1, 4, 3, 5, 5)  # videos (B, C, T, h, w) work the same way
    assert contrast_weights(v, 2.0).shape == (1, 1, 3, 5, 5)


def test_weighted_mse() -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.allclose(weighted_mse(a, b), torch.nn.functional.mse_loss(a, b))
    assert torch.allclose(weighted_mse(a, b, torch.full((2, 1, 4, 4), 3.0)), weighted_mse(a, b))
    w = torch.ones(2, 1, 4, 4)
    w[0, 0, 0, 0] = 1e6  # one heavy position dominates
    err = ((a - b) ** 2)[0, :, 0, 0].mean()
    assert torch.allclose(weighted_mse(a, b, w), err, rtol=1e-3)
