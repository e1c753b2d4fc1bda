"""Pixel metrics (PSNR, SSIM, per-frame PSNR), the Fréchet distance and feature statistics.

Value ranges: every pixel metric takes ``value_range=(lo, hi)``, the range the images are meant to
live in. mm1d's convention is ``(-1, 1)`` (the default); pass ``(0, 1)`` or ``(0, 255)`` for other
data. Both inputs are clamped to that range first (a decoder may overshoot it slightly; a saved image
could not), and the peak signal is ``hi - lo``.

SSIM follows Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``,
``K2 = 0.03``, statistics over "valid" windows only (no padding), computed per channel and averaged
over channels and positions. Images smaller than the window use a window shrunk to the image size.
SSIM's luminance term is not shift-invariant, so the images are first mapped from ``value_range`` onto
``[0, 1]``: a pair gets the standard SSIM (the one computed on ``[0, 1]`` or ``[0, 255]`` data) whatever
range it is stored in. Computed directly on ``[-1, 1]`` values it would be a different, lower number.

The Fréchet distance between N(mu1, S1) and N(mu2, S2) is
``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace term is computed as the sum of
square roots of the eigenvalues of the symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)``, which has the
same spectrum as ``S1 S2``. Unlike ``scipy.linalg.sqrtm(S1 @ S2)`` this never produces imaginary parts
and stays finite for singular (rank-deficient) covariances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_RANGE: tuple[float, float] = (-1.0, 1.0)


# ---- pixel metrics ---------------------------------------------------------------------------------
def _check_pair(x: torch.Tensor, y: torch.Tensor, min_dim: int) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"expected two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() < min_dim:
        raise ValueError(f"expected at least {min_dim} dims (B, C, ..., H, W), got shape {tuple(x.shape)}")


def _clamped(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
    return x.detach().to(torch.float64).clamp(lo, hi)


def mse(x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = DEFAULT_RANGE) -> torch.Tensor:
    """Mean squared error per sample.

    Args:
        x, y: float ``(B, ...)`` of equal shape, in ``value_range``.
        value_range: the images' nominal range; values outside are clamped.

    Returns:
        float64 ``(B,)``.
    """
    _check_pair(x, y, 2)
    d = _clamped(x, value_range) - _clamped(y, value_range)
    return d.pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = DEFAULT_RANGE) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample, with peak ``hi - lo``.

    Args:
        x, y: float ``(B, ...)`` (images ``(B, 3, H, W)`` or videos ``(B, 3, F, H, W)``).
        value_range: the images' nominal range (default ``(-1, 1)``).

    Returns:
        float64 ``(B,)``; ``inf`` where ``x == y``.
    """
    peak = float(value_range[1]) - float(value_range[0])
    err = mse(x, y, value_range)
    return 10.0 * torch.log10(peak**2 / err)  # err == 0 -> inf


def psnr_per_frame(x: torch.Tensor, y: torch.Tensor,
                   value_range: tuple[float, float] = DEFAULT_RANGE) -> torch.Tensor:
    """PSNR of every frame of a batch of videos.

    Args:
        x, y: float ``(B, C, F, H, W)``.
        value_range: the videos' nominal range.

    Returns:
        float64 ``(B, F)``.
    """
    _check_pair(x, y, 5)
    if x.dim() != 5:
        raise ValueError(f"videos must be (B, C, F, H, W), got shape {tuple(x.shape)}")
    b, c, f, h, w = x.shape
    frames_x = x.transpose(1, 2).reshape(b * f, c, h, w)  # (B*F, C, H, W)
    frames_y = y.transpose(1, 2).reshape(b * f, c, h, w)
    return psnr(frames_x, frames_y, value_range).reshape(b, f)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1D Gaussian, float64 ``(size,)``."""
    if size < 1 or sigma <= 0:
        raise ValueError(f"window size must be >= 1 and sigma > 0, got {size}, {sigma}")
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = DEFAULT_RANGE,
         window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity per image (Gaussian window, valid positions only).

    Args:
        x, y: float ``(B, C, H, W)`` in ``value_range``.
        value_range: ``(-1, 1)`` by default, or ``(0, 1)``, ``(0, 255)``, ...; mapped onto ``[0, 1]``
            (``L = 1``) before the statistics, so the result does not depend on the storage range.
        window: Gaussian window side (shrunk to ``min(H, W)`` for tiny images).
        sigma: Gaussian standard deviation, in pixels.
        k1, k2: the stabilising constants (``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``).

    Returns:
        float64 ``(B,)``; exactly 1 where ``x == y``.
    """
    _check_pair(x, y, 4)
    if x.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(x.shape)}; use ssim_video for videos")
    lo, peak = float(value_range[0]), float(value_range[1]) - float(value_range[0])
    a = (_clamped(x, value_range) - lo) / peak  # (B, C, H, W) in [0, 1]
    b = (_clamped(y, value_range) - lo) / peak
    c = a.shape[1]
    size = min(window, a.shape[-1], a.shape[-2])
    g = gaussian_window(size, sigma)
    kernel_h = g.view(1, 1, 1, size).repeat(c, 1, 1, 1)  # (C, 1, 1, S): filter along W
    kernel_v = g.view(1, 1, size, 1).repeat(c, 1, 1, 1)  # (C, 1, S, 1): filter along H

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kernel_h, groups=c), kernel_v, groups=c)  # (B, C, H-S+1, W-S+1)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = k1**2, k2**2  # L = 1 after the mapping
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(1)


def ssim_video(x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = DEFAULT_RANGE,
               **kwargs: float) -> torch.Tensor:
    """SSIM of every frame: ``(B, C, F, H, W)`` pairs -> float64 ``(B, F)`` (see :func:`ssim`)."""
    _check_pair(x, y, 5)
    if x.dim() != 5:
        raise ValueError(f"videos must be (B, C, F, H, W), got shape {tuple(x.shape)}")
    b, c, f, h, w = x.shape
    out = ssim(x.transpose(1, 2).reshape(b * f, c, h, w), y.transpose(1, 2).reshape(b * f, c, h, w),
               value_range, **kwargs)  # (B*F,)
    return out.reshape(b, f)


# ---- feature statistics and the Fréchet distance ---------------------------------------------------
def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set.

    Args:
        features: ``(N, D)`` with ``N >= 2``.

    Returns:
        (mu float64 ``(D,)``, sigma float64 ``(D, D)``).
    """
    f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    f = f.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


class RunningStats:
    """Streaming mean and covariance (float64 sums), for feature sets too large to hold at once.

    ``update(features (n, D))`` any number of times, then ``stats()`` gives the same (mu, sigma) as
    :func:`feature_stats` on the concatenation.
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None
        self._shift: np.ndarray | None = None  # first batch mean; centring keeps the sums well conditioned

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        if f.ndim != 2:
            raise ValueError(f"features must be (n, D), got shape {f.shape}")
        f = f.astype(np.float64)
        if self._shift is None:
            self._shift = f.mean(0)
            self._sum = np.zeros(f.shape[1])
            self._outer = np.zeros((f.shape[1], f.shape[1]))
        elif f.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature width changed from {self._shift.shape[0]} to {f.shape[1]}")
        g = f - self._shift
        self._sum += g.sum(0)
        self._outer += g.T @ g
        self.n += f.shape[0]

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu ``(D,)``, unbiased sigma ``(D, D)``) of everything seen so far."""
        if self.n < 2 or self._sum is None or self._outer is None or self._shift is None:
            raise ValueError(f"need at least 2 feature vectors, got {self.n}")
        mean_g = self._sum / self.n
        sigma = (self._outer - self.n * np.outer(mean_g, mean_g)) / (self.n - 1)
        return self._shift + mean_g, sigma


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write reference statistics as ``.npz`` with arrays ``mu`` and ``sigma``."""
    from mm1d.utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma)


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read statistics written by :func:`save_stats` (or any ``.npz`` with ``mu`` and ``sigma``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature statistics file not found: {path}")
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise ValueError(f"{path} must hold arrays 'mu' and 'sigma', found {list(data.keys())}")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues set to 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between two Gaussians, e.g. FID/FVD feature statistics.

    Args:
        mu1, mu2: means ``(D,)``.
        sigma1, sigma2: covariances ``(D, D)`` (symmetric PSD, possibly singular).

    Returns:
        the squared distance, a non-negative float (tiny negatives from round-off are clipped to 0).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes disagree: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("feature statistics contain NaN or inf")
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1  # symmetric PSD, same eigenvalues as s1 @ s2
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def frechet_distance_features(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


# ---- small aggregation helpers ----------------------------------------------------------------------
def finite_mean(values: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """Mean over finite entries (an identical pair's ``inf`` PSNR is left out); NaN when none is finite."""
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan
