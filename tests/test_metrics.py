"""Pixel metrics, feature statistics and the Fréchet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mm1d.evaluation.metrics import (
    RunningStats,
    feature_stats,
    finite_mean,
    frechet_distance,
    frechet_distance_features,
    load_stats,
    psnr,
    psnr_per_frame,
    save_stats,
    ssim,
    ssim_video,
)


def test_psnr_identical_is_inf_and_known_mse() -> None:
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full((2, 3, 8, 8), 0.1)  # MSE 0.01 with peak 2 -> 10 log10(4 / 0.01)
    assert torch.allclose(psnr(a, b), torch.full((2,), 10 * math.log10(400.0), dtype=torch.float64))
    # the same pair on a (0, 1) scale: values halve, peak 1, MSE 0.0025 -> same dB
    assert torch.allclose(psnr((a + 1) / 2, (b + 1) / 2, value_range=(0, 1)), psnr(a, b))


def test_psnr_clamps_to_range() -> None:
    a = torch.zeros(1, 3, 4, 4)
    assert torch.isinf(psnr(torch.full_like(a, 1.0), torch.full_like(a, 1.7)))  # both clamp to 1


def test_psnr_per_frame_matches_frames() -> None:
    x, y = torch.rand(2, 3, 5, 8, 8), torch.rand(2, 3, 5, 8, 8)
    per = psnr_per_frame(x, y, value_range=(0, 1))
    assert per.shape == (2, 5)
    assert torch.allclose(per[1, 3], psnr(x[1:2, :, 3], y[1:2, :, 3], value_range=(0, 1))[0])


def _naive_ssim(a: np.ndarray, b: np.ndarray, peak: float, size: int = 11, sigma: float = 1.5) -> float:
    """Window-by-window SSIM of one channel, straight from the definition."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    vals = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identical_constant_and_reference() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # constant images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1), on the [0, 1] scale
    a, b = 0.2, -0.3
    c1 = 0.01**2
    got = ssim(torch.full((1, 3, 16, 16), a, dtype=torch.float64), torch.full((1, 3, 16, 16), b, dtype=torch.float64))
    a01, b01 = (a + 1) / 2, (b + 1) / 2
    assert got.item() == pytest.approx((2 * a01 * b01 + c1) / (a01**2 + b01**2 + c1), rel=1e-9)
    # a noisy pair against the window-by-window definition, on the (0, 1) scale
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    x01, y01 = (x + 1) / 2, (y + 1) / 2
    ref = np.mean([_naive_ssim(x01[0, c].double().numpy(), y01[0, c].double().numpy(), 1.0) for c in range(3)])
    assert ssim(x01[:1], y01[:1], value_range=(0, 1)).item() == pytest.approx(ref, rel=1e-9)
    assert ssim(x[:1], y[:1]).item() == pytest.approx(ref, rel=1e-7)  # the storage range does not matter
    assert ssim(x[:1] * 127.5 + 127.5, y[:1] * 127.5 + 127.5, value_range=(0, 255)).item() == pytest.approx(ref)
    assert ssim(x[:1], y[:1]).item() < 0.99


def test_ssim_video_and_errors() -> None:
    v = torch.rand(1, 3, 3, 12, 12)
    assert torch.allclose(ssim_video(v, v, value_range=(0, 1)), torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="value_range"):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), value_range=(1, 1))


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_matches_scipy_on_random_gaussians() -> None:
    rng = np.random.default_rng(0)
    for d in (1, 4, 16):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-7)


def test_frechet_self_is_zero_and_singular_is_finite() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(10, 32))  # N < D: singular covariance
    mu, sigma = feature_stats(feats)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    other = rng.normal(size=(10, 32)) + 0.5
    value = frechet_distance_features(feats, other)
    assert np.isfinite(value) and value > 0
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(mu, sigma, mu[:3], sigma)


def test_running_stats_and_npz_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(50, 6)) * 3 + 100  # a large offset tests the centring
    rs = RunningStats()
    for chunk in np.array_split(feats, 4):
        rs.update(torch.from_numpy(chunk))
    mu, sigma = rs.stats()
    mu_ref, sigma_ref = feature_stats(feats)
    assert np.allclose(mu, mu_ref) and np.allclose(sigma, sigma_ref)
    save_stats(tmp_path / "ref.npz", mu, sigma)
    mu2, sigma2 = load_stats(tmp_path / "ref.npz")
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_stats(tmp_path / "missing.npz")


def test_finite_mean_skips_inf() -> None:
    assert finite_mean([1.0, 3.0, math.inf]) == 2.0
    assert math.isnan(finite_mean([math.inf]))
