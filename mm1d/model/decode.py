"""A lean incremental forward of ``Transformer`` for sampling: preallocated cache, precomputed RoPE tables.

``Transformer.hidden_states`` with a ``StaticKVCache`` is general (any positions, dense masks, packing
checks). Sampling runs hundreds of one-token steps, where that generality costs more than the math on a
CPU. ``DecodeState`` runs the same blocks with the model's own weights, without module calls:

* keys and values are written into one preallocated buffer per layer (no per-step allocation of the cache);
* RoPE cos/sin come from a table built once for every slot position (the same ``rope_cos_sin`` values);
* grouped-query heads are folded into the query length (``(B, Hkv, n_rep * T, hd)``) so the cached keys
  and values are never repeated, masked or not;
* a step without left-padding in the batch uses no mask at all.

Rows share a slot counter; each row keeps its own position counter and valid-slot record, so left-padded
prompts behave exactly as rows run alone (as in ``StaticKVCache``). ``select`` keeps, reorders or repeats
rows: a sampler prefills each distinct prompt once and fans it out, and drops finished rows. Parity with the
uncached forward is tested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mm1d.model.transformer import Transformer, apply_rope, rope_cos_sin


class DecodeState:
    """Cache and counters for ``batch`` rows of up to ``max_len`` slots of ``model``.

    Args:
        model: the transformer (its parameters are used in place, in their dtype and device).
        batch: rows decoded together.
        max_len: slots per row (prompt, padding included, plus generated tokens).
    """

    def __init__(self, model: Transformer, batch: int, max_len: int) -> None:
        cfg = model.config
        if max_len > cfg.max_seq_len:
            raise ValueError(f"decode length {max_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        p = model.model.embed_tokens.weight
        self.model, self.dtype, self.device = model, p.dtype, p.device
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, model.head_dim
        self.rep = self.n_heads // self.n_kv
        self.eps = cfg.norm_eps
        shape = (cfg.n_layers, batch, self.n_kv, max_len, self.hd)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)  # (N, B, Hkv, max_len, hd)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)  # (N, B, Hkv, max_len, hd)
        pos = torch.arange(max_len, device=self.device)[None]  # (1, max_len)
        cos, sin = rope_cos_sin(pos, self.hd, cfg.rope_theta, self.dtype)  # (1, 1, max_len, hd)
        self.cos, self.sin = cos[0, 0], sin[0, 0]  # (max_len, hd)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=self.device)  # (B, max_len)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=self.device)  # (B,)
        self.all_valid = True
        self.length, self.max_len, self.batch = 0, max_len, batch
        self.layers = [
            (
                blk.input_layernorm.weight, blk.self_attn.q_proj.weight, blk.self_attn.k_proj.weight,
                blk.self_attn.v_proj.weight, blk.self_attn.o_proj.weight,
                None if blk.self_attn.q_norm is None else blk.self_attn.q_norm.weight,
                None if blk.self_attn.k_norm is None else blk.self_attn.k_norm.weight,
                blk.post_attention_layernorm.weight, blk.mlp.gate_proj.weight, blk.mlp.up_proj.weight,
                blk.mlp.down_proj.weight,
            )
            for blk in model.model.layers
        ]

    def select(self, rows: torch.Tensor) -> None:
        """Row ``i`` of the state becomes what row ``rows[i]`` was (rows may be dropped or repeated).

        Args:
            rows: long ``(B',)`` indices into the current rows.
        """
        rows = rows.to(self.device)
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)
        self.valid, self.next_pos = self.valid.index_select(0, rows), self.next_pos.index_select(0, rows)
        self.batch = len(rows)

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, w.shape, w, self.eps)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, token_mask: torch.Tensor | None = None, every: bool = False) -> torch.Tensor:
        """Append ``T`` tokens per row and return the final-norm hidden state of each row's last one.

        Args:
            ids: long ``(B, T)``.
            token_mask: bool ``(B, T)``, False for left-padding (prefill only); None: all real.
            every: return the hidden states of all ``T`` new tokens instead.

        Returns:
            ``(B, D)`` hidden states, or ``(B, T, D)`` with ``every`` (apply ``model.lm_head`` for logits).
        """
        B, T = ids.shape
        start, S = self.length, self.length + T
        if S > self.max_len:
            raise ValueError(f"decode state full: {start} + {T} tokens exceed its {self.max_len} slots")
        if token_mask is None:
            positions = self.next_pos[:, None] + torch.arange(T, device=self.device)  # (B, T)
            self.valid[:, start:S] = True
        else:
            positions = (self.next_pos[:, None] + token_mask.long().cumsum(1) - 1).clamp_min(0)  # (B, T)
            self.valid[:, start:S] = token_mask
            self.all_valid = self.all_valid and bool(token_mask.all())
        self.next_pos = positions[:, -1] + 1
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, T, hd)
        mask, causal = None, False
        if T > 1 or not self.all_valid:
            if self.all_valid and start == 0:
                causal = True
            else:
                q_slot = torch.arange(start, S, device=self.device)[:, None]  # (T, 1)
                k_slot = torch.arange(S, device=self.device)[None]  # (1, S)
                mask = (self.valid[:, None, :S] & (k_slot <= q_slot)) | (k_slot == q_slot)  # (B, T, S)
                mask = mask[:, None].repeat(1, 1, self.rep, 1)  # (B, 1, rep * T, S), rows (rep, t)
        H, Hkv, hd, rep = self.n_heads, self.n_kv, self.hd, self.rep
        h = F.embedding(ids, self.model.model.embed_tokens.weight)  # (B, T, D)
        for i, (w_in, wq, wk, wv, wo, qn, kn, w_post, wg, wu, wd) in enumerate(self.layers):
            x = self._norm(h, w_in)
            q = F.linear(x, wq).view(B, T, H, hd)
            k = F.linear(x, wk).view(B, T, Hkv, hd)
            v = F.linear(x, wv).view(B, T, Hkv, hd)
            if qn is not None:
                q, k = self._norm(q, qn), self._norm(k, kn)
            q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, H, T, hd)
            self.k[i, :, :, start:S] = apply_rope(k.transpose(1, 2), cos, sin)
            self.v[i, :, :, start:S] = v.transpose(1, 2)
            kk, vv = self.k[i, :, :, :S], self.v[i, :, :, :S]  # (B, Hkv, S, hd)
            if causal:
                o = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=rep > 1)  # (B, H, T, hd)
            else:
                qg = q.reshape(B, Hkv, rep * T, hd)  # query heads of one KV head side by side
                o = F.scaled_dot_product_attention(qg, kk, vv, attn_mask=mask).reshape(B, H, T, hd)
            h = h + F.linear(o.transpose(1, 2).reshape(B, T, H * hd), wo)  # (B, T, D)
            x = self._norm(h, w_post)
            h = h + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
        self.length = S
        return self._norm(h if every else h[:, -1], self.model.model.norm.weight)  # (B, [T,] D)
