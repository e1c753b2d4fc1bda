"""A static, preallocated KV cache for batched generation.

Every row of the batch shares one slot counter (``length``), so all rows step together; each row keeps its
own RoPE position counter (``next_pos``) and a record of which slots hold real tokens (``valid``). Prompts
of different lengths are therefore left-padded: the pad slots are never attended to by real tokens, and
each row's positions count only its real tokens, exactly as if the row had run alone.
"""

from __future__ import annotations

import torch

from mm1d.model.attention import AttentionMask


class StaticKVCache:
    """Keys and values of every layer for ``batch_size`` rows of up to ``max_len`` slots.

    Args:
        n_layers: number of transformer blocks.
        batch_size: rows generated together.
        max_len: slots per row (prompt + generated tokens, pads included).
        n_kv_heads: key/value heads per layer.
        head_dim: size of one head.
        dtype: storage dtype (the model's compute dtype).
        device: storage device.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if min(n_layers, batch_size, max_len, n_kv_heads, head_dim) <= 0:
            raise ValueError("StaticKVCache sizes must all be positive")
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (N, B, Hkv, max_len, hd)
        self.v = torch.zeros(shape, dtype=dtype, device=device)  # (N, B, Hkv, max_len, hd)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # (B, max_len)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        self.length = 0  # slots written so far, the same for every row
        self.max_len = max_len
        self.batch_size = batch_size
        self._pending = 0  # tokens of the forward in progress, committed by ``commit``

    @classmethod
    def for_model(
        cls,
        model: torch.nn.Module,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> StaticKVCache:
        """A cache shaped for ``model`` (an ``mm1d.model.Transformer``), in its parameter dtype and device."""
        cfg = model.config
        p = next(model.parameters())
        if max_len > cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        return cls(
            cfg.n_layers,
            batch_size,
            max_len,
            cfg.n_kv_heads,
            model.head_dim,
            dtype=dtype or p.dtype,
            device=device or p.device,
        )

    def reset(self) -> None:
        """Forget every cached token (the buffers are kept)."""
        self.valid.zero_()
        self.next_pos.zero_()
        self.length = 0
        self._pending = 0

    def begin(
        self, T: int, token_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, AttentionMask]:
        """Reserve ``T`` slots for the next forward and build its positions and attention mask.

        Args:
            T: tokens per row in this forward (a prompt, or 1 for a decode step).
            token_mask: ``(B, T)`` bool, False for left-padding tokens; None means all real.
            positions: ``(B, T)`` long RoPE positions; None continues each row's own counter.

        Returns:
            ``positions`` ``(B, T)`` and a ``dense`` AttentionMask ``(B, 1, T, length + T)``.
        """
        B, start = self.batch_size, self.length
        if start + T > self.max_len:
            raise ValueError(f"KV cache full: {start} + {T} tokens exceed its {self.max_len} slots")
        device = self.valid.device
        if token_mask is None:
            token_mask = torch.ones(B, T, dtype=torch.bool, device=device)
        if token_mask.shape != (B, T):
            raise ValueError(f"token_mask must be ({B}, {T}), got {tuple(token_mask.shape)}")
        token_mask = token_mask.to(device=device, dtype=torch.bool)
        if positions is None:
            positions = self.next_pos[:, None] + token_mask.long().cumsum(1) - 1  # (B, T)
            positions = positions.clamp_min(0)
        elif positions.shape != (B, T):
            raise ValueError(f"positions must be ({B}, {T}), got {tuple(positions.shape)}")
        self.valid[:, start : start + T] = token_mask
        S = start + T
        q_slot = torch.arange(start, S, device=device)  # (T,)
        k_slot = torch.arange(S, device=device)  # (S,)
        causal = k_slot[None, :] <= q_slot[:, None]  # (T, S)
        own = k_slot[None, :] == q_slot[:, None]  # (T, S): a pad query sees itself, so no row is empty
        allowed = (self.valid[:, None, :S] & causal[None]) | own[None]  # (B, T, S)
        self.next_pos = torch.maximum(self.next_pos, positions.masked_fill(~token_mask, -1).amax(1) + 1)
        self._pending = T
        return positions, AttentionMask("dense", dense=allowed[:, None])  # (B, 1, T, S)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's keys/values of one layer and return everything cached so far.

        Args:
            layer: block index.
            k: ``(B, Hkv, T, hd)`` new keys (RoPE applied).
            v: ``(B, Hkv, T, hd)`` new values.

        Returns:
            keys and values ``(B, Hkv, length + T, hd)``.
        """
        start, T = self.length, k.shape[2]
        if T != self._pending:
            raise ValueError(f"update got {T} tokens but begin() reserved {self._pending}")
        self.k[layer, :, :, start : start + T] = k
        self.v[layer, :, :, start : start + T] = v
        return self.k[layer, :, :, : start + T], self.v[layer, :, :, : start + T]

    def commit(self) -> None:
        """Advance the slot counter past the tokens of the forward that just ran."""
        self.length += self._pending
        self._pending = 0
