"""Rectified flow: noising, timestep sampling, the Euler sampler, and CFG / APG guidance.

Convention (minRF, as in FlexTok): ``t = 1`` is pure noise and ``t = 0`` is data.

- noising: ``x_t = t * noise + (1 - t) * x0``;
- velocity target: ``v = dx_t/dt = noise - x0``;
- sampling: Euler steps from ``t = 1`` down to ``t = 0``, ``x <- x - (t_i - t_{i+1}) * v(x, t_i)``.

Guidance combines a conditional and an unconditional velocity. Plain CFG is ``u + s (c - u)``. APG
("normalized guidance", Sadat et al., arXiv 2410.02416) smooths ``c - u`` with a (negative) momentum,
clips its norm and keeps only the part orthogonal to ``c``. Every statistic (momentum buffer, norm,
projection) is per sample, so a sample's trajectory never depends on the other samples of its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

TimestepSampling = Literal["logit_normal", "uniform"]


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample ``t`` (B,) to broadcast against ``x`` (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1))).to(x.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Noise clean data.

    Args:
        x0: clean data ``(B, ...)``.
        noise: standard normal noise of the same shape.
        t: noise levels ``(B,)`` in [0, 1].

    Returns:
        ``x_t = t * noise + (1 - t) * x0``, shape ``(B, ...)``.
    """
    tb = _bcast(t, x0)
    return tb * noise + (1 - tb) * x0


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity ``noise - x0`` that the model regresses (same shape as ``x0``)."""
    return noise - x0


def predict_x0(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Clean-data estimate from a velocity prediction: ``x0 = x_t - t * v`` (shapes ``(B, ...)``)."""
    return x_t - _bcast(t, x_t) * v


def velocity_from_x0(x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor, t_min: float = 0.05) -> torch.Tensor:
    """The velocity implied by a clean-data prediction (x-prediction, as in JiT): ``(x_t - x0_hat) / t``.

    A network that outputs ``x0_hat`` stays on the low-dimensional data manifold, which is far easier to
    fit with wide patch tokens than the full-rank noise in ``v``; the loss and the Euler sampler still use
    the velocity. ``t`` is clamped below at ``t_min`` so the division stays bounded near clean data.

    Args:
        x_t: noised data ``(B, ...)``.
        x0_hat: predicted clean data, same shape.
        t: noise levels ``(B,)``, or any tensor that broadcasts against ``x_t``.
        t_min: the smallest divisor.

    Returns:
        velocity, same shape as ``x_t``.
    """
    tb = _bcast(t, x_t) if t.dim() == 1 else t.to(x_t.dtype)
    return (x_t - x0_hat) / tb.clamp_min(t_min)


def contrast_weights(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-position loss weights that favour what stands out from a sample's background.

    Small objects cover a few percent of an image, so a plain MSE spends almost all of its gradient on
    flat background. Each position is weighted ``1 + strength * d / max(d)``, where ``d`` is the distance
    of its channel vector from the sample's per-channel median (the background for sparse scenes, a
    contrast measure for natural images) and ``max(d)`` is taken per sample.

    Args:
        x0: clean latents ``(B, C, ...)`` (images ``(B, C, h, w)``, videos ``(B, C, T, h, w)``).
        strength: extra weight of the most distinct position (0: all ones).

    Returns:
        weights ``(B, 1, ...)``, at least 1.
    """
    flat = x0.detach().flatten(2)  # (B, C, P)
    median = flat.median(dim=2, keepdim=True).values  # (B, C, 1)
    d = (flat - median).norm(dim=1, keepdim=True)  # (B, 1, P)
    w = 1.0 + strength * d / d.amax(dim=2, keepdim=True).clamp_min(1e-6)
    return w.reshape(x0.shape[0], 1, *x0.shape[2:])


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error with optional per-position weights ``(B, 1, ...)``, normalised by their sum.

    With ``weights=None`` this is ``F.mse_loss``; constant weights give the same value.
    """
    err = (pred.float() - target.float()) ** 2  # (B, C, ...)
    if weights is None:
        return err.mean()
    w = weights.expand_as(err)
    return (err * w).sum() / w.sum()


def sample_timesteps(
    batch: int,
    mode: TimestepSampling = "logit_normal",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Draw training noise levels.

    Args:
        batch: number of samples B.
        mode: ``"logit_normal"`` (``sigmoid(N(mean, std))``, the SD3/FlexTok default) or ``"uniform"``.
        generator: optional RNG; the draw happens on the generator's device then moves to ``device``.
        device: output device.
        mean, std: logit-normal parameters.

    Returns:
        float32 ``(B,)`` in (0, 1).
    """
    gen_device = generator.device if generator is not None else "cpu"
    if mode == "logit_normal":
        u = torch.randn(batch, generator=generator, device=gen_device) * std + mean
        t = torch.sigmoid(u)
    elif mode == "uniform":
        t = torch.rand(batch, generator=generator, device=gen_device)
    else:
        raise ValueError(f"unknown timestep sampling {mode!r}; expected logit_normal or uniform")
    return t.to(device)


def euler_sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x1: torch.Tensor,
    steps: int,
    progress: bool = False,
    post_step: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate the flow from ``t = 1`` (noise ``x1``) to ``t = 0`` with ``steps`` Euler steps.

    Args:
        velocity_fn: ``(x_t (B, ...), t (B,)) -> v (B, ...)``.
        x1: starting noise ``(B, ...)``.
        steps: number of Euler steps (>= 1); the grid is uniform, ``t_i = 1 - i / steps``.
        progress: show a tqdm bar.
        post_step: optional ``x (B, ...) -> x`` applied after every step, e.g. to write known clean
            values (prefix conditioning) back into the state.

    Returns:
        the sample at ``t = 0``, shape ``(B, ...)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = x1
    for i in tqdm(range(steps), disable=not progress, desc="decode", leave=False):
        t = torch.full((x.shape[0],), ts[i], device=x.device, dtype=torch.float32)
        v = velocity_fn(x, t)
        x = x - (ts[i] - ts[i + 1]) * v
        if post_step is not None:
            x = post_step(x)
    return x


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``uncond + scale * (cond - uncond)``; scale 1 returns ``cond``."""
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


@dataclass
class APGConfig:
    """Adaptive projected guidance settings (the FlexTok image defaults)."""

    momentum: float = -0.5
    norm_threshold: float = 2.5  # <= 0 disables the clip
    eta: float = 0.0  # weight of the component parallel to the conditional prediction


class Guider:
    """Combines conditional and unconditional predictions over the steps of one sampling run.

    Keeps one APG momentum buffer per sample (row of the batch). Use a fresh ``Guider`` for every
    sampling run.

    Args:
        scale: guidance scale (1 disables guidance).
        apg: APG settings, or None for plain CFG.
    """

    def __init__(self, scale: float, apg: APGConfig | None = None) -> None:
        self.scale = float(scale)
        self.apg = apg
        self.buffer: torch.Tensor | None = None  # (B, ...) running average of cond - uncond

    def __call__(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """Guided prediction.

        Args:
            cond, uncond: ``(B, ...)`` predictions with and without the condition.

        Returns:
            ``(B, ...)``.
        """
        if self.apg is None:
            return cfg_combine(cond, uncond, self.scale)
        diff = cond - uncond
        if self.apg.momentum != 0.0:
            if self.buffer is None:
                self.buffer = torch.zeros_like(diff)
            if self.buffer.shape != diff.shape:
                raise ValueError("APG buffer shape changed within one sampling run; use a new Guider")
            self.buffer = diff + self.apg.momentum * self.buffer
            diff = self.buffer
        dims = tuple(range(1, diff.dim()))
        if self.apg.norm_threshold > 0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)  # (B, 1, ...) per-sample norm
            diff = diff * torch.clamp(self.apg.norm_threshold / norm.clamp_min(1e-12), max=1.0)
        unit = cond / cond.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)  # (B, ...)
        parallel = (diff * unit).sum(dim=dims, keepdim=True) * unit
        update = (diff - parallel) + self.apg.eta * parallel
        return cond + (self.scale - 1.0) * update


def guided_velocity(
    model_fn: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
    scale: float,
    apg: APGConfig | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a model into a guided velocity function for :func:`euler_sample`.

    Args:
        model_fn: ``(x (M, ...), t (M,), with_uncond) -> v``. When ``with_uncond`` is True the function
            receives the batch twice (``M = 2B``: conditional rows then unconditional rows) and must
            evaluate rows ``B..2B-1`` without the condition; otherwise ``M = B``, conditional only.
        scale: guidance scale; at 1 the unconditional pass is skipped entirely.
        apg: APG settings, or None for plain CFG.

    Returns:
        ``(x (B, ...), t (B,)) -> v (B, ...)``, carrying its own per-sample guidance state.
    """
    if scale == 1.0:
        return lambda x, t: model_fn(x, t, False)
    guider = Guider(scale, apg)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), True)  # (2B, ...)
        cond, uncond = out.chunk(2)
        return guider(cond, uncond)

    return fn
