"""Finite scalar quantization (FSQ, Mentzer et al. 2023).

Each of the ``D = len(levels)`` channels is bounded with a tanh to ``levels[d]`` integer values and
rounded with a straight-through estimator. A code vector maps to one integer id by a mixed-radix sum,
so the codebook size is ``prod(levels)`` and needs no learned embedding table.

Codes live in [-1, 1]: channel ``d`` takes the values ``(j - L//2) / (L//2)`` for ``j`` in ``0..L-1``
(for even ``L`` the top value is ``1 - 2/L``).

An optional normalization before the bound keeps the quantizer from collapsing onto a handful of
codes early in training (the encoder output starts near zero, so every token rounds to one code):

- ``"layernorm"``: per token, non-affine LayerNorm over the D channels (deterministic, prefix-safe);
- ``"rms"``: per token, divide by the RMS over the D channels;
- ``"batch"``: per register position and channel, standardize with batch statistics in training and
  running statistics in eval mode (tokens then depend only on the own token at inference, so prefix
  invariance and determinism hold in eval mode);
- ``"renorm"``: batch renormalization (Ioffe 2017) per register position and channel. Training
  normalizes with the running statistics in the forward pass, as eval mode does, so a sample's codes
  never depend on the rest of its batch; the gradient flows through the batch statistics as in
  ``"batch"``. With ``"batch"``, about half of a trained tiny tokenizer's ids change when the same image
  sits in another batch of 64 (BENCHMARKS.md), so its decoder trains on noisy codes; ``"renorm"`` removes
  that noise. Measured on the tiny recipe it does worse, though: the forward pass follows the lagging
  running statistics, and the codes collapsed to 3-12 per batch for hundreds of steps, also when
  renormalization starts only after a warm-up of 500 or 1,000 steps (BENCHMARKS.md).
  The running statistics start as a cumulative average (momentum ``max(momentum, 1/steps)``), so the
  first step equals plain batch normalization;
- ``"none"``: no normalization (the paper's setting).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

QuantNorm = Literal["none", "layernorm", "rms", "batch", "renorm"]
BATCH_NORMS = ("batch", "renorm")  # the modes with per-position running statistics


def ids_to_digits(ids: torch.Tensor, levels: list[int] | tuple[int, ...]) -> torch.Tensor:
    """The mixed-radix digits of FSQ ids: ``ids`` ``(...)`` -> ``(..., D)`` long, digit d in ``[0, levels[d])``.

    The first level is the least significant (``id = sum_d digit_d * prod(levels[:d])``), the convention
    of ``FSQ.codes_to_indices``.
    """
    basis = digit_basis(levels).to(ids.device)
    return (ids.long().unsqueeze(-1) // basis) % torch.tensor(list(levels), dtype=torch.long, device=ids.device)


def digit_basis(levels: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Place values of the FSQ digits, ``(D,)`` long: ``[1, L0, L0*L1, ...]``."""
    return torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.long), dim=0)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer in the forward pass; identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class FSQ(nn.Module):
    """Finite scalar quantizer.

    Args:
        levels: number of values per channel, e.g. ``[8, 5, 5, 5]`` (1000 codes).
        norm: normalization applied to the input before bounding (see module docstring).
        num_positions: number of token positions (registers); required for ``norm`` "batch" and
            "renorm", whose statistics are kept per position.
        momentum: running-statistics momentum for ``norm="batch"`` / ``"renorm"``.
        renorm_warmup: ``norm="renorm"`` trains with plain batch statistics for this many batches first.
        eps: slack of the tanh bound, so rounding never hits the open interval's edge.
    """

    def __init__(
        self,
        levels: list[int] | tuple[int, ...],
        norm: QuantNorm = "none",
        num_positions: int | None = None,
        momentum: float = 0.01,
        eps: float = 1e-3,
        renorm_warmup: int = 0,
    ) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or any(v < 2 for v in levels):
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        if norm not in ("none", "layernorm", "rms", *BATCH_NORMS):
            raise ValueError(f"unknown FSQ norm {norm!r}; expected none, layernorm, rms, batch or renorm")
        if norm in BATCH_NORMS and (num_positions is None or num_positions < 1):
            raise ValueError(f"FSQ norm={norm!r} needs num_positions (the number of register positions)")
        self.levels_list = levels
        self.norm = norm
        self.eps = eps
        self.momentum = momentum
        self.renorm_warmup = renorm_warmup
        lv = torch.tensor(levels, dtype=torch.long)
        basis = digit_basis(levels)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        if norm in BATCH_NORMS:
            assert num_positions is not None
            self.register_buffer("running_mean", torch.zeros(num_positions, len(levels)))
            self.register_buffer("running_var", torch.ones(num_positions, len(levels)))
        if norm == "renorm":
            self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))  # training batches seen

    @property
    def dim(self) -> int:
        """Number of channels D."""
        return len(self.levels_list)

    @property
    def codebook_size(self) -> int:
        """Number of distinct codes, ``prod(levels)``."""
        return math.prod(self.levels_list)

    # ---- normalization and bound --------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Apply the configured pre-quantization normalization.

        Args:
            z: float ``(B, n, D)``; for ``norm="batch"`` positions ``0..n-1`` use statistics ``[:n]``.

        Returns:
            float ``(B, n, D)``.
        """
        if self.norm == "none":
            return z
        if self.norm == "layernorm":
            return F.layer_norm(z, (self.dim,), eps=1e-5)
        if self.norm == "rms":
            return z * torch.rsqrt(z.pow(2).mean(dim=-1, keepdim=True) + 1e-5)
        n = z.shape[1]
        if n > self.running_mean.shape[0]:
            raise ValueError(f"FSQ batch norm was built for {self.running_mean.shape[0]} positions, got {n}")
        if not self.training:
            return (z - self.running_mean[:n]) * torch.rsqrt(self.running_var[:n] + 1e-5)
        mean = z.mean(dim=0)  # (n, D)
        var = z.var(dim=0, unbiased=False)  # (n, D)
        momentum, seen = self.momentum, 0
        if self.norm == "renorm":
            self.num_batches += 1
            seen = int(self.num_batches)  # the one host read of the counter per step
            momentum = max(momentum, 1.0 / seen)  # a cumulative average at first
        with torch.no_grad():
            self.running_mean[:n].lerp_(mean.detach(), momentum)
            self.running_var[:n].lerp_(var.detach(), momentum)
        normed = (z - mean) * torch.rsqrt(var + 1e-5)  # (B, n, D), batch statistics
        if self.norm == "batch" or seen <= self.renorm_warmup:
            return normed
        # batch renormalization: the forward value is the running-statistics one, the gradient is BN's
        run_mean, run_var = self.running_mean[:n], self.running_var[:n]
        r = torch.sqrt((var.detach() + 1e-5) / (run_var + 1e-5))  # (n, D)
        d = (mean.detach() - run_mean) * torch.rsqrt(run_var + 1e-5)  # (n, D)
        return normed * r + d

    @torch.no_grad()
    def calibrate(self, z: torch.Tensor) -> None:
        """Set the running statistics of ``norm="batch"`` exactly from a sample of encoder outputs.

        The running averages lag the encoder while it trains (momentum 0.01 is a ~100-step window), so
        inference codes drift away from the codes the decoder was trained on. Calling this with the final
        weights ("precise BN") removes that gap.

        Args:
            z: float ``(M, n, D)`` pre-quantization outputs of ``M`` samples for positions ``0..n-1``.
        """
        if self.norm not in BATCH_NORMS:
            raise ValueError(f"calibrate() applies to norm='batch' or 'renorm', this FSQ uses norm={self.norm!r}")
        n = z.shape[1]
        if z.dim() != 3 or z.shape[2] != self.dim or n > self.running_mean.shape[0] or z.shape[0] < 2:
            raise ValueError(f"calibrate() needs (M >= 2, n <= {self.running_mean.shape[0]}, {self.dim}), "
                             f"got {tuple(z.shape)}")
        z64 = z.double()
        self.running_mean[:n] = z64.mean(dim=0).to(self.running_mean.dtype)
        self.running_var[:n] = z64.var(dim=0, unbiased=False).to(self.running_var.dtype)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash ``z`` so that rounding yields integers in ``[-(L//2), L - 1 - L//2]`` per channel."""
        lv = self.levels.to(z.dtype)
        half_l = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize.

        Args:
            z: float ``(B, n, D)`` encoder outputs.

        Returns:
            ``(codes, ids)``: codes float ``(B, n, D)`` in [-1, 1] with straight-through gradients, and
            ids long ``(B, n)`` in ``[0, codebook_size)``.
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ expects last dim {self.dim}, got shape {tuple(z.shape)}")
        orig_dtype = z.dtype
        z = self.normalize(z.float())
        half_width = (self.levels // 2).to(z.dtype)
        codes = round_ste(self.bound(z)) / half_width
        return codes.to(orig_dtype), self.codes_to_indices(codes.detach())

    # ---- ids <-> codes -----------------------------------------------------------------------------
    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Map codes ``(..., D)`` in [-1, 1] to ids ``(...)`` (long) by the mixed-radix sum."""
        half_width = (self.levels // 2).to(codes.dtype)
        digits = torch.round(codes.float() * half_width + half_width).long()  # (..., D) in [0, L)
        return (digits * self.basis).sum(dim=-1)

    def indices_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Map ids ``(...)`` (long) to codes ``(..., D)`` (float32) in [-1, 1].

        Raises:
            ValueError: if any id lies outside ``[0, codebook_size)``.
        """
        self.check_ids(ids)
        digits = ids_to_digits(ids, self.levels_list)  # (..., D)
        half_width = (self.levels // 2).float()
        return (digits.float() - half_width) / half_width

    def check_ids(self, ids: torch.Tensor) -> None:
        """Raise a ValueError naming the offending value if ``ids`` are not valid codebook ids."""
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be an integer tensor, got dtype {ids.dtype}")
        if ids.numel() == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.codebook_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the codebook [0, {self.codebook_size})")

    def random_ids(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform random ids of ``shape`` (long), e.g. for latent perturbation."""
        gen_device = generator.device if generator is not None else "cpu"
        ids = torch.randint(0, self.codebook_size, shape, generator=generator, device=gen_device)
        return ids.to(device)

    def extra_repr(self) -> str:
        return f"levels={self.levels_list}, codebook_size={self.codebook_size}, norm={self.norm!r}"
