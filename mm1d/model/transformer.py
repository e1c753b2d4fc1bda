"""The decoder-only transformer: Llama-style, with document-masked packing and a static KV cache.

Blocks are pre-norm: ``h = h + attn(norm(h))``, ``h = h + mlp(norm(h))`` with RMSNorm, SwiGLU, rotary
position embeddings (the non-interleaved "rotate half" layout) and grouped-query attention; QK-norm is an
option. Parameter names follow Hugging Face ``LlamaForCausalLM`` one for one (``model.embed_tokens``,
``model.layers.N.self_attn.q_proj``, ..., ``model.norm``, ``lm_head``), so an exported state dict loads
there without renaming or permuting. QK-norm weights are named as in Qwen3
(``self_attn.q_norm`` / ``self_attn.k_norm``).

With ``grouped_softmax`` each next token is normalized over its id group only (``Vocab.softmax_groups()``:
text + specials, image codes, video codes). The sequence grammar fixes the group of every position, so the
training loss computes each token's logits against that group's rows of the head alone (a third to a half
of the full head's work), and every log-probability the package reports (scoring, the sampler's) uses the
same groups.

This module is a plain ``nn.Module``: no deepspeed, no hydra. The trainer flips
``model.gradient_checkpointing`` to recompute each block in the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mm1d.config import ModelConfig
from mm1d.model.attention import IMPLS, AttentionMask, attend, build_attention_mask, resolve_impl
from mm1d.model.kv_cache import StaticKVCache


def check_config(cfg: ModelConfig, vocab_size: int) -> int:
    """Validate a model shape; returns the head dimension.

    Raises:
        ValueError: naming the first inconsistent field.
    """
    for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "max_seq_len"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"model.{name} must be positive, got {getattr(cfg, name)}")
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"model.n_heads ({cfg.n_heads}) must be a multiple of model.n_kv_heads ({cfg.n_kv_heads})")
    head_dim = cfg.head_dim if cfg.head_dim is not None else cfg.d_model // cfg.n_heads
    if cfg.head_dim is None and cfg.d_model % cfg.n_heads:
        raise ValueError(f"model.d_model ({cfg.d_model}) must be divisible by model.n_heads ({cfg.n_heads})")
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head dimension must be positive and even for RoPE, got {head_dim}")
    if cfg.rope_theta <= 0:
        raise ValueError(f"model.rope_theta must be positive, got {cfg.rope_theta}")
    if cfg.attn_impl not in IMPLS:
        raise ValueError(f"model.attn_impl must be one of {list(IMPLS)}, got {cfg.attn_impl!r}")
    return head_dim


def check_softmax_groups(groups: Sequence[tuple[int, int]], vocab_size: int) -> tuple[tuple[int, int], ...]:
    """Validate softmax groups: contiguous half-open id ranges, in order, that cover ``[0, vocab_size)``."""
    out = tuple((int(lo), int(hi)) for lo, hi in groups)
    edges = [b for g in out for b in g]
    ok = bool(out) and out[0][0] == 0 and out[-1][1] == vocab_size and all(lo < hi for lo, hi in out)
    if not ok or any(out[i][1] != out[i + 1][0] for i in range(len(out) - 1)):
        raise ValueError(f"softmax groups {edges} must be contiguous ranges covering [0, {vocab_size})")
    return out


def grouped_logsumexp(
    logits: torch.Tensor, targets: torch.Tensor, groups: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """The log-partition of each row over the softmax group its target id lies in.

    Args:
        logits: ``(n, V)`` float.
        targets: ``(n,)`` ids in ``[0, V)``.
        groups: the model's ``softmax_groups`` (one group ``[(0, V)]``: the ordinary log-sum-exp).

    Returns:
        ``(n,)``, so that ``logits[i, targets[i]] - out[i]`` is ``log p(targets[i])``.
    """
    if len(groups) == 1:
        return torch.logsumexp(logits, dim=-1)
    out = torch.full(targets.shape, float("nan"), dtype=logits.dtype, device=logits.device)
    for lo, hi in groups:
        rows = ((targets >= lo) & (targets < hi)).nonzero()[:, 0]
        out[rows] = torch.logsumexp(logits[rows, lo:hi], dim=-1)
    return out


def softmax_groups_of(model: nn.Module, vocab_size: int) -> tuple[tuple[int, int], ...]:
    """A model's softmax groups; one group over the vocabulary for a model without them (a test double)."""
    return getattr(model, "softmax_groups", ((0, vocab_size),))


class Head(nn.Linear):
    """The LM head (an ``nn.Linear`` without bias; same state dict). ``head(h, (lo, hi))`` computes only the
    logits of ids ``[lo, hi)``, one group of a grouped softmax, through the module call, so parameter hooks
    (ZeRO-3's gather, a parametrization) still apply."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__(d_model, vocab_size, bias=False)

    def forward(self, x: torch.Tensor, ids: tuple[int, int] | None = None) -> torch.Tensor:
        """``(..., D)`` -> ``(..., V)`` logits, or ``(..., hi - lo)`` for ``ids=(lo, hi)``."""
        w = self.weight if ids is None else self.weight[ids[0] : ids[1]]
        return F.linear(x, w)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim (``F.rms_norm``, which accumulates in float32).

    Args:
        dim: normalized size.
        eps: added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., dim)`` -> same shape and dtype."""
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for the given positions (non-interleaved halves, as in HF Llama).

    The inverse frequencies are computed afresh in float32 each call, so casting the module to bf16 never
    degrades them and building on the meta device needs no buffer.

    Args:
        positions: ``(B, L)`` integer positions.
        head_dim: even head size.
        theta: RoPE base.
        dtype: dtype of the returned tables.

    Returns:
        ``cos, sin`` each ``(B, 1, L, head_dim)``.
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)  # (hd/2,)
    freqs = positions[..., None].float() * inv_freq  # (B, L, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, L, hd)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (B, 1, L, hd)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, L, hd)`` by tables ``(B, 1, L, hd)`` in the rotate-half layout."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and optional QK-norm (no biases)."""

    def __init__(self, cfg: ModelConfig, head_dim: int, layer_idx: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, head_dim
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * head_dim, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(head_dim, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttentionMask,
        kv_cache: StaticKVCache | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, L, D)`` -> ``(B, L, D)``; rope tables ``(B, 1, L, hd)``."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim)  # (B, L, H, hd)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim)  # (B, L, Hkv, hd)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim)  # (B, L, Hkv, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, H, L, hd)
        k = apply_rope(k.transpose(1, 2), cos, sin)  # (B, Hkv, L, hd)
        v = v.transpose(1, 2)  # (B, Hkv, L, hd)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, S, hd)
        out = attend(q, k, v, mask)  # (B, H, L, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` -> ``(B, L, D)``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One pre-norm decoder layer (named like ``LlamaDecoderLayer``)."""

    def __init__(self, cfg: ModelConfig, head_dim: int, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, head_dim, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.ffn_hidden)

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: AttentionMask,
        kv_cache: StaticKVCache | None = None,
    ) -> torch.Tensor:
        """``h`` ``(B, L, D)`` -> ``(B, L, D)``."""
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, kv_cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    """Embedding, blocks and final norm (named like ``LlamaModel``, reached as ``Transformer.model``)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, head_dim: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg, head_dim, i) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


UNPADDED_KERNELS = ("segments", "flash")  # attention kernels under which a training forward drops the padding


def ce_and_lse(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy and log-sum-exp from one softmax pass, in float32.

    Args:
        logits: ``(n, V)`` in any float dtype.
        targets: ``(n,)`` long, -100 where no loss is taken.

    Returns:
        ``ce`` (0 where the target is -100) and ``lse``, each ``(n,)`` float32.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    keep = targets != -100
    target_logit = logits.gather(1, torch.where(keep, targets, 0)[:, None])[:, 0]  # (n,)
    return torch.where(keep, lse - target_logit, 0.0), lse


class Transformer(nn.Module):
    """Decoder-only language model over the unified vocabulary.

    Args:
        cfg: the model shape.
        vocab_size: number of ids, ``mm1d.modality.Vocab.size``.
        softmax_groups: ``Vocab.softmax_groups()``; required when ``cfg.grouped_softmax``, ignored otherwise.

    Attributes:
        gradient_checkpointing: when True (and training with grad enabled), each block is recomputed in
            the backward pass instead of keeping its activations.
    """

    def __init__(
        self, cfg: ModelConfig, vocab_size: int, softmax_groups: Sequence[tuple[int, int]] | None = None
    ) -> None:
        super().__init__()
        self.head_dim = check_config(cfg, vocab_size)
        self.config = cfg
        self.vocab_size = vocab_size
        if cfg.grouped_softmax and softmax_groups is None:
            raise ValueError("model.grouped_softmax needs the vocabulary's id groups: "
                             "Transformer(cfg, vocab.size, vocab.softmax_groups())")
        self.softmax_groups = (check_softmax_groups(softmax_groups, vocab_size) if cfg.grouped_softmax
                               else ((0, vocab_size),))
        self.model = Backbone(cfg, vocab_size, self.head_dim)
        self.lm_head = Head(cfg.d_model, vocab_size)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False
        self._ce_and_lse = ce_and_lse  # compile_blocks swaps in a compiled copy
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; output projections scaled by ``1/sqrt(2 n_layers)``; norms at 1."""
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                s = out_std if name.endswith(("o_proj", "down_proj")) else std
                nn.init.normal_(module.weight, mean=0.0, std=s)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    # ---- forward --------------------------------------------------------------------------------------
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        kv_cache: StaticKVCache | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (everything but the LM head).

        Args:
            input_ids: ``(B, L)`` long token ids.
            positions: ``(B, L)`` long RoPE positions, restarting at 0 in each packed document. None means
                ``0..L-1`` per row (or, with a cache, each row's next positions).
            doc_ids: ``(B, L)`` integer document ids of packed rows; tokens attend only within their
                document. None: one document per row. Not used with a cache.
            kv_cache: a ``StaticKVCache`` to read and extend (prefill or decode); None for a plain forward.
            token_mask: ``(B, L)`` bool, False for left-padding in a cached prefill (cache only).

        Returns:
            ``(B, L, D)`` hidden states in the parameters' dtype.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        if kv_cache is not None:
            if doc_ids is not None:
                raise ValueError("doc_ids cannot be combined with a KV cache (one document per row)")
            if kv_cache.batch_size != B:
                raise ValueError(f"KV cache holds {kv_cache.batch_size} rows, input has {B}")
            positions, mask = kv_cache.begin(L, token_mask, positions)
        else:
            if token_mask is not None:
                raise ValueError("token_mask is only used with a KV cache; pack documents with doc_ids instead")
            positions = self._packed_positions(input_ids, positions, doc_ids)
            mask = build_attention_mask(doc_ids, self.config.attn_impl, input_ids.device)
        if positions.shape != (B, L):
            raise ValueError(f"positions must match input_ids {(B, L)}, got {tuple(positions.shape)}")
        return self._run_blocks(input_ids, positions, mask, kv_cache)

    def _packed_positions(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None, doc_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """Check a cache-free ``(B, L)`` batch against the model; returns its positions (default ``0..L-1``)."""
        B, L = input_ids.shape
        if L > self.config.max_seq_len:
            raise ValueError(f"sequence length {L} exceeds model.max_seq_len {self.config.max_seq_len}")
        if doc_ids is not None and doc_ids.shape != (B, L):
            raise ValueError(f"doc_ids must match input_ids {(B, L)}, got {tuple(doc_ids.shape)}")
        if positions is None:
            return torch.arange(L, device=input_ids.device).expand(B, L)
        if positions.shape != (B, L):
            raise ValueError(f"positions must match input_ids {(B, L)}, got {tuple(positions.shape)}")
        return positions

    def _run_blocks(
        self, input_ids: torch.Tensor, positions: torch.Tensor, mask: AttentionMask, kv_cache: StaticKVCache | None
    ) -> torch.Tensor:
        """Embedding, blocks and final norm on checked inputs: ``(B, L)`` ids -> ``(B, L, D)``."""
        h = self.model.embed_tokens(input_ids)  # (B, L, D)
        cos, sin = rope_cos_sin(positions, self.head_dim, self.config.rope_theta, h.dtype)
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for layer in self.model.layers:
            if use_ckpt:
                h = checkpoint(layer, h, cos, sin, mask, None, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.commit()
        return self.model.norm(h)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        kv_cache: StaticKVCache | None = None,
        token_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        return_hidden: bool = False,
        loss_chunk_tokens: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits, hidden states, or per-token losses.

        Args:
            input_ids, positions, doc_ids, kv_cache, token_mask: as in ``hidden_states``.
            targets: ``(B, L)`` long next-token targets, ``-100`` where no loss is taken. When given, the
                full logits are never materialized: returns per-token cross-entropy and log-sum-exp.
            return_hidden: return the ``(B, L, D)`` final hidden states instead of logits.
            loss_chunk_tokens: tokens per chunk of the ``targets`` loss (see ``token_losses``).

        Returns:
            ``(B, L, V)`` logits by default; ``(B, L, D)`` hidden states with ``return_hidden``; with
            ``targets``, a pair ``(ce, lse)`` of ``(B, L)`` float32 tensors (``ce`` is 0 where the target is
            -100; ``lse`` is the log-partition, for a z-loss ``lse**2``).
        """
        if targets is not None and doc_ids is not None and kv_cache is None and self._drops_padding(doc_ids):
            return self._unpadded_losses(input_ids, positions, doc_ids, targets, loss_chunk_tokens)
        h = self.hidden_states(input_ids, positions, doc_ids, kv_cache, token_mask)
        if targets is not None:
            return self.token_losses(h, targets, loss_chunk_tokens)
        if return_hidden:
            return h
        return self.lm_head(h)

    def _drops_padding(self, doc_ids: torch.Tensor) -> bool:
        """Whether a training forward should drop the padding (``doc_ids == -1``) before the blocks.

        Only the variable-length kernels (``segments``, ``flash``) take the concatenated rows as one long
        sequence at no extra attention cost; the dense mask would grow quadratically and flex would compile a
        block mask for every new length. A batch without padding takes the same path, so a compiled block
        always sees one ``(1, n)`` sequence and never recompiles for a ``(B, L)`` one.
        """
        return resolve_impl(self.config.attn_impl, doc_ids.device) in UNPADDED_KERNELS

    def _unpadded_losses(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None, doc_ids: torch.Tensor,
        targets: torch.Tensor, loss_chunk_tokens: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(..., targets=...)`` computed on the non-padding tokens only.

        The packed rows' real tokens are concatenated into one ``(1, n)`` sequence with their own positions and
        row-unique document ids, so every token attends to exactly the keys it would in its row, and padding
        costs nothing. Returns ``(B, L)`` ``ce`` and ``lse``, 0 at the padding (whose targets are -100).
        """
        B, L = input_ids.shape
        positions = self._packed_positions(input_ids, positions, doc_ids)
        if targets.shape != (B, L):
            raise ValueError(f"targets must be {(B, L)}, got {tuple(targets.shape)}")
        keep = doc_ids >= 0  # (B, L)
        if bool((targets[~keep] != -100).any()):
            raise ValueError("padding tokens (doc_ids -1) must have target -100")
        row = torch.arange(B, device=doc_ids.device)[:, None]
        flat_docs = (doc_ids + row * L)[keep][None]  # (1, n): ids unique across rows, so runs never merge
        mask = build_attention_mask(flat_docs, self.config.attn_impl, input_ids.device)
        h = self._run_blocks(input_ids[keep][None], positions[keep][None], mask, None)  # (1, n, D)
        ce, lse = self.token_losses(h, targets[keep][None], loss_chunk_tokens)  # (1, n) each
        zeros = ce.new_zeros(B, L)
        return zeros.masked_scatter(keep, ce[0]), zeros.masked_scatter(keep, lse[0])

    def token_losses(
        self, hidden: torch.Tensor, targets: torch.Tensor, chunk_tokens: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy and log-sum-exp, computed chunk by chunk.

        With more than one chunk, each chunk's logits are recomputed in the backward pass (activation
        checkpointing), so peak memory holds one chunk of ``chunk_tokens x V`` logits rather than all
        ``B x L x V``.

        Args:
            hidden: ``(B, L, D)`` final hidden states.
            targets: ``(B, L)`` long targets, -100 to ignore.
            chunk_tokens: tokens per chunk; default about 2**27 / V.

        With ``grouped_softmax``, the tokens are gathered by the group of their target, and each group's
        logits are computed against its own rows of the head. Both ``ce`` and ``lse`` are then 0 where the
        target is -100 (such tokens need no logits).

        Returns:
            ``ce`` and ``lse``, each ``(B, L)`` float32.
        """
        if targets.shape != hidden.shape[:2]:
            raise ValueError(f"targets must be {tuple(hidden.shape[:2])}, got {tuple(targets.shape)}")
        B, L, D = hidden.shape
        n = B * L
        flat_h = hidden.reshape(n, D)  # (B*L, D)
        flat_t = targets.reshape(n)  # (B*L,)
        if len(self.softmax_groups) == 1:
            ce, lse = self._chunked_loss(flat_h, flat_t, None, chunk_tokens)
            return ce.view(B, L), lse.view(B, L)
        ce = flat_h.new_zeros(n, dtype=torch.float32)
        lse = flat_h.new_zeros(n, dtype=torch.float32)
        for lo, hi in self.softmax_groups:
            rows = ((flat_t >= lo) & (flat_t < hi)).nonzero()[:, 0]  # (n_g,)
            if rows.numel():
                ce_g, lse_g = self._chunked_loss(flat_h[rows], flat_t[rows] - lo, (lo, hi), chunk_tokens)
                ce, lse = ce.index_put((rows,), ce_g), lse.index_put((rows,), lse_g)
        return ce.view(B, L), lse.view(B, L)

    def _chunked_loss(
        self, h: torch.Tensor, t: torch.Tensor, ids: tuple[int, int] | None, chunk_tokens: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, D)`` hidden, ``(n,)`` targets local to ``ids`` (the whole head when None) -> ``(n,)`` ce, lse."""
        n = h.shape[0]
        chunk = chunk_tokens or max(256, (1 << 27) // (self.vocab_size if ids is None else ids[1] - ids[0]))
        ces, lses = [], []
        for s in range(0, n, chunk):
            h_c, t_c = h[s : s + chunk], t[s : s + chunk]
            if n > chunk and torch.is_grad_enabled() and h_c.requires_grad:  # one chunk: nothing to save
                ce, lse = checkpoint(self._chunk_loss, h_c, t_c, ids, use_reentrant=False)
            else:
                ce, lse = self._chunk_loss(h_c, t_c, ids)
            ces.append(ce)
            lses.append(lse)
        return torch.cat(ces), torch.cat(lses)

    def _chunk_loss(
        self, h: torch.Tensor, t: torch.Tensor, ids: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ce_and_lse(self.lm_head(h, ids), t)

    def target_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(n, D)`` final hidden states and ``(n,)`` next ids -> ``(n,)`` float32 ``log p(target)``, normalized
        over each target's softmax group (the whole vocabulary without ``grouped_softmax``). The training loss's
        path: a grouped model computes each target's logits over its own group only."""
        ce, _ = self.token_losses(hidden[None], targets[None])  # (1, n)
        return -ce[0]

    # ---- helpers --------------------------------------------------------------------------------------
    def compile_blocks(self, device: torch.device | str | None = None, **compile_kwargs: Any) -> None:
        """``torch.compile`` every block and the chunked loss in place; parameter names do not change.

        Compiling block by block keeps compile time flat in depth (one graph serves every layer) and lets
        inductor fuse the norms, RoPE, SwiGLU and the loss's upcast + log-sum-exp. With a variable-length
        kernel, training drops the padding, so the sequence length changes every step: the graphs are then
        compiled for dynamic shapes from the start (one compile instead of a static one and a recompile).

        Args:
            device: where the model will train (default: where its parameters are now); picks the kernel.
            compile_kwargs: passed to ``torch.compile`` (for example ``backend="eager"`` in tests).
        """
        device = torch.device(device) if device is not None else next(self.parameters()).device
        if resolve_impl(self.config.attn_impl, device) in UNPADDED_KERNELS:
            compile_kwargs.setdefault("dynamic", True)
        for layer in self.model.layers:
            layer.compile(**compile_kwargs)
        # The head matmul stays outside the graph (cuBLAS either way; inductor would pad the V stride).
        self._ce_and_lse = torch.compile(ce_and_lse, **compile_kwargs)

    def new_kv_cache(self, batch_size: int, max_len: int) -> StaticKVCache:
        """A preallocated cache for ``batch_size`` rows of up to ``max_len`` tokens."""
        return StaticKVCache.for_model(self, batch_size, max_len)

    def num_params(self) -> dict[str, int]:
        """Parameter counts (works on the meta device): embedding, lm_head (0 when tied), non-embedding, total.

        ``non_embedding`` excludes both the input embedding and the untied output head.
        """
        seen: set[int] = set()
        total = 0
        for p in self.parameters():  # parameters() already skips the tied duplicate
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        emb = self.model.embed_tokens.weight.numel()
        head = 0 if self.config.tie_embeddings else self.lm_head.weight.numel()
        return {"embedding": emb, "lm_head": head, "non_embedding": total - emb - head, "total": total}
