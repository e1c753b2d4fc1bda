"""Transformer pieces shared by FlexTok and VideoFlexTok.

Everything is batch first: token sequences are ``(B, L, D)``. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` with an explicit boolean mask (True = may attend),
of shape ``(L, L)`` (shared by the batch) or ``(B, L, L)`` (per sample). It works on CPU and GPU and
needs no compilation.

Masks are built from per-token *roles* by :func:`build_attention_mask`:

- ``time`` (long ``(L,)``): the time block of each token (all zeros for images);
- ``is_register`` (bool ``(L,)``): register token (True) or patch token (False);
- ``order`` (long ``(L,)``): the index of a register inside its time block's register set.

FlexTok's encoder mask "causal_last" is ``build_attention_mask(time=0, ..., time_mode="full",
register_mode="causal")``: patches see patches; register i sees all patches and registers 0..i.
VideoFlexTok's time-block-causal variants use ``time_mode="causal"``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

TimeMode = Literal["full", "causal", "block"]
RegisterMode = Literal["causal", "full"]


# ----------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------


def build_attention_mask(
    time: torch.Tensor,
    is_register: torch.Tensor,
    order: torch.Tensor,
    time_mode: TimeMode = "full",
    register_mode: RegisterMode = "causal",
    patches_see_registers: bool = False,
    registers_see_past_registers: bool = True,
) -> torch.Tensor:
    """Boolean attention mask from token roles (True = query may attend to key).

    Rules for a query q and a key k:

    - time: ``time_mode="full"`` allows any pair, ``"causal"`` needs ``time[k] <= time[q]``, ``"block"``
      needs ``time[k] == time[q]``;
    - a patch query sees patch keys, and register keys only if ``patches_see_registers``;
    - a register query sees patch keys; it sees register keys of its own time block when
      ``register_mode="full"`` or when ``order[k] <= order[q]`` (``"causal"``), and register keys of
      earlier time blocks when ``registers_see_past_registers``.

    Args:
        time: long ``(L,)`` time-block id of each token.
        is_register: bool ``(L,)``.
        order: long ``(L,)`` register index within its set (ignored for patches).
        time_mode, register_mode, patches_see_registers, registers_see_past_registers: see above.

    Returns:
        bool ``(L, L)``, rows = queries, columns = keys. Every row has at least its own token.
    """
    if not (time.shape == is_register.shape == order.shape) or time.dim() != 1:
        raise ValueError("time, is_register and order must be 1D tensors of equal length")
    tq, tk = time[:, None], time[None, :]
    if time_mode == "full":
        time_ok = torch.ones_like(tq == tk)
    elif time_mode == "causal":
        time_ok = tk <= tq
    elif time_mode == "block":
        time_ok = tk == tq
    else:
        raise ValueError(f"unknown time_mode {time_mode!r}")
    rq, rk = is_register[:, None], is_register[None, :]
    same_time = tq == tk
    if register_mode == "causal":
        reg_same = order[None, :] <= order[:, None]
    elif register_mode == "full":
        reg_same = torch.ones_like(same_time)
    else:
        raise ValueError(f"unknown register_mode {register_mode!r}")
    reg_reg = torch.where(same_time, reg_same, torch.full_like(same_time, registers_see_past_registers))
    allowed = torch.where(
        rq,
        torch.where(rk, reg_reg, torch.ones_like(rk.expand_as(reg_reg))),  # register query
        ~rk | patches_see_registers,  # patch query
    )
    return allowed & time_ok


def causal_last_mask(num_patches: int, num_registers: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """FlexTok encoder mask over ``[patches ; registers]``: bool ``(P + R, P + R)``."""
    n = num_patches + num_registers
    is_reg = torch.arange(n, device=device) >= num_patches
    order = torch.clamp(torch.arange(n, device=device) - num_patches, min=0)
    return build_attention_mask(torch.zeros(n, dtype=torch.long, device=device), is_reg, order)


# ----------------------------------------------------------------------------------------------------
# Position and timestep embeddings
# ----------------------------------------------------------------------------------------------------


def sincos_1d(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of float positions ``(N,)`` -> float32 ``(N, dim)`` ([cos ; sin] halves)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = positions.float()[:, None] * freqs.to(positions.device)[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding for a ``height x width`` grid, row-major.

    Returns:
        float32 ``(height * width, dim)``; the first half of the channels encodes the row, the second
        half the column.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs dim divisible by 4, got {dim}")
    rows = torch.arange(height).repeat_interleave(width)  # (H*W,)
    cols = torch.arange(width).repeat(height)  # (H*W,)
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim // 2)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Noise level t in [0, 1] -> conditioning vector: sinusoidal(t * 1000) then a 2-layer MLP.

    Args:
        dim: output width D.
        freq_dim: width of the sinusoidal features.
    """

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: float ``(B,)`` -> ``(B, D)``."""
        emb = sincos_1d(t * 1000.0, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# ----------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------


def layer_norm_fp32(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Non-affine LayerNorm over the last dim, computed in float32, returned in ``x.dtype``."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention via SDPA with an optional boolean mask; no biases.

    Args:
        dim: model width D.
        num_heads: heads H (D must be divisible by H).
        qk_norm: RMS-normalize queries and keys per head (learned scale).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend.

        Args:
            x: ``(B, L, D)``.
            mask: None (full attention), bool ``(L, L)`` or bool ``(B, L, L)`` (True = attend), or a float
                additive bias on the attention logits of the same shapes (in ``x``'s dtype).

        Returns:
            ``(B, L, D)``.
        """
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        if mask is not None:
            if mask.dtype != torch.bool and mask.dtype != q.dtype:
                raise ValueError(f"attention mask must be bool or a {q.dtype} bias, got {mask.dtype}")
            if mask.dim() == 3:
                mask = mask[:, None]  # (B, 1, L, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    """SwiGLU MLP without biases; hidden width ``int(2/3 * mlp_ratio * dim)`` rounded up to 8.

    Args:
        dim: model width D.
        mlp_ratio: the nominal (GELU-equivalent) expansion ratio.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(2 * mlp_ratio * dim / 3)
        hidden = 8 * ((hidden + 7) // 8)
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``."""
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm transformer block (non-affine fp32 LayerNorm, attention, SwiGLU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, qk_norm)
        self.mlp = SwiGLU(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``(B, L, D)``, mask as in :class:`Attention` -> ``(B, L, D)``."""
        x = x + self.attn(layer_norm_fp32(x), mask)
        return x + self.mlp(layer_norm_fp32(x))


def _modulation(
    linear: nn.Linear,
    cond: torch.Tensor,
    chunks: int,
    groups: torch.Tensor | None,
    num_groups: int,
    cond_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Compute adaLN parameters per token.

    Args:
        linear: maps D -> ``num_groups * chunks * D``.
        cond: ``(B, D)`` (one vector per sample), ``(B, L, D)`` (one per token), or ``(B, S, D)`` (one
            per segment, with ``cond_index``).
        chunks: parameters per group (6 for a block, 2 for the final layer).
        groups: long ``(L,)`` group id per token (needed when ``num_groups > 1``).
        num_groups: G.
        cond_index: optional long ``(L,)``: the segment ``[0, S)`` whose conditioning vector each token
            uses (e.g. its time step), so the modulation is computed once per segment, not per token.

    Returns:
        ``(B, L or 1, chunks, D)``.
    """
    if cond.dim() == 2:
        cond = cond[:, None]  # (B, 1, D)
    b, lc, d = cond.shape
    mod = linear(F.silu(cond)).view(b, lc, num_groups, chunks, d)  # (B, Lc, G, C, D)
    if cond_index is not None:
        slot = cond_index.to(mod.device) * num_groups  # (L,) row of the flattened (Lc * G) table
        if num_groups > 1:
            if groups is None:
                raise ValueError("per-group modulation needs the group id of every token")
            slot = slot + groups.to(mod.device)
        return mod.reshape(b, lc * num_groups, chunks, d).index_select(1, slot)  # (B, L, C, D)
    if num_groups == 1:
        return mod[:, :, 0]
    if groups is None:
        raise ValueError("per-group modulation needs the group id of every token")
    if lc == 1:
        return mod[:, 0].index_select(1, groups)  # (B, L, C, D)
    idx = groups.view(1, -1, 1, 1, 1).expand(b, lc, 1, chunks, d)
    return mod.gather(2, idx)[:, :, 0]  # (B, L, C, D)


class AdaLNBlock(nn.Module):
    """Transformer block with adaLN-zero modulation (DiT): shift/scale/gate from a conditioning vector.

    Args:
        dim: model width D.
        num_heads: heads.
        mlp_ratio: SwiGLU ratio.
        qk_norm: QK-norm in attention.
        num_groups: number of sub-sequences with their own modulation (e.g. 2 = patches and
            registers); the modulation layer is zero-initialized so the block starts as identity.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True, num_groups: int = 1
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.attn = Attention(dim, num_heads, qk_norm)
        self.mlp = SwiGLU(dim, mlp_ratio)
        self.modulation = nn.Linear(dim, num_groups * 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        groups: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cond_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(B, L, D)``.
            cond: ``(B, D)`` or ``(B, L, D)`` conditioning (e.g. timestep embedding), or ``(B, S, D)``
                per segment together with ``cond_index``.
            groups: long ``(L,)`` sub-sequence id per token in ``[0, num_groups)``.
            mask: as in :class:`Attention`.
            cond_index: optional long ``(L,)`` segment of each token (see :func:`_modulation`).

        Returns:
            ``(B, L, D)``.
        """
        mod = _modulation(self.modulation, cond, 6, groups, self.num_groups, cond_index)  # (B, L|1, 6, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)
        h = layer_norm_fp32(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn(h, mask)
        h = layer_norm_fp32(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class AdaLNFinal(nn.Module):
    """Output head: LayerNorm with adaLN shift/scale, then a zero-initialized linear to ``out_dim``.

    With ``hidden > 0`` the head is an MLP instead (``linear`` to ``hidden``, GELU, zero-initialized
    ``out`` to ``out_dim``): a linear head can only emit outputs in a ``dim``-dimensional subspace, which
    binds when a patch has more values than the model is wide (an 8 px RGB patch: 192 values).
    """

    def __init__(self, dim: int, out_dim: int, num_groups: int = 1, hidden: int = 0) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.modulation = nn.Linear(dim, num_groups * 2 * dim)
        self.linear = nn.Linear(dim, hidden or out_dim)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, out_dim)) if hidden else None
        zeroed = (self.modulation, self.linear) if self.out is None else (self.modulation, self.out[1])
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        groups: torch.Tensor | None = None,
        cond_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x ``(B, L, D)``, cond ``(B, D)``/``(B, L, D)`` (or ``(B, S, D)`` with ``cond_index (L,)``),
        groups ``(L,)`` -> ``(B, L, out_dim)``."""
        shift, scale = _modulation(self.modulation, cond, 2, groups, self.num_groups, cond_index).unbind(2)
        h = self.linear(layer_norm_fp32(x) * (1 + scale) + shift)
        return h if self.out is None else self.out(h)

    @torch.no_grad()
    def widen_from(self, linear_head: AdaLNFinal) -> None:
        """Take over a linear head's function exactly, as the first units of this MLP head.

        With ``W = U V`` (a rank-``r`` split of the old weight, ``r = min(dim, out_dim)``), units ``0..r-1``
        compute ``GELU(V h)`` and units ``r..2r-1`` compute ``GELU(-V h)``; since ``GELU(z) - GELU(-z) = z``,
        output weights ``[U, -U]`` give back ``W h + b``. The other hidden units keep their random input
        weights and get zero output weights, so they add capacity without changing the function at start.

        Raises:
            ValueError: this head is not an MLP of at least ``2 r`` hidden units, or the shapes differ.
        """
        if linear_head.out is not None or self.out is None:
            raise ValueError("widen_from copies a linear head into an MLP head")
        w, b = linear_head.linear.weight.float(), linear_head.linear.bias.float()  # (O, D), (O,)
        r = min(w.shape)
        hidden = self.linear.out_features
        if self.linear.in_features != w.shape[1] or self.out[1].out_features != w.shape[0] or hidden < 2 * r:
            raise ValueError(f"cannot widen a {w.shape[1]}->{w.shape[0]} linear head into a "
                             f"{self.linear.in_features}->{hidden}->{self.out[1].out_features} MLP head "
                             f"(it needs at least {2 * r} hidden units)")
        u, s, vt = torch.linalg.svd(w, full_matrices=False)  # (O, r), (r,), (r, D)
        root = s.sqrt()
        up, down = vt * root[:, None], u * root[None]  # (r, D), (O, r)
        self.modulation.load_state_dict(linear_head.modulation.state_dict())
        dtype = self.linear.weight.dtype
        self.linear.weight[:r] = up.to(dtype)
        self.linear.weight[r:2 * r] = -up.to(dtype)
        self.linear.bias[: 2 * r] = 0.0
        self.out[1].weight.zero_()
        self.out[1].weight[:, :r] = down.to(dtype)
        self.out[1].weight[:, r:2 * r] = -down.to(dtype)
        self.out[1].bias.copy_(b.to(dtype))


class PatchStem(nn.Linear):
    """Patch embedding ``(..., in_dim) -> (..., out_dim)``: a linear map, or with ``hidden > 0`` an MLP
    (this linear to ``hidden``, GELU, ``out`` to ``out_dim``), which can keep more of a patch than a
    rank-``out_dim`` projection. The first layer's parameters keep the names of the linear stem."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0) -> None:
        super().__init__(in_dim, hidden or out_dim)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, out_dim)) if hidden else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)
        return h if self.out is None else self.out(h)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, (H/p)(W/p), C p p)``, patches in row-major order."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"spatial size {h}x{w} is not divisible by the patch size {patch}")
    x = x.view(b, c, h // patch, patch, w // patch, patch)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(x: torch.Tensor, patch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, hw, C p p) -> (B, C, H, W)`` for an ``H x W`` output."""
    b = x.shape[0]
    h, w = height // patch, width // patch
    x = x.view(b, h, w, channels, patch, patch)  # (B, h, w, C, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)
