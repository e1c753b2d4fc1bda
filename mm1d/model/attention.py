"""Causal self-attention with document masks, behind one function and one mask object.

A packed row holds several documents one after another; ``doc_ids[b, i]`` names the document of token i.
Token i may attend to token j only when ``j <= i`` and both lie in the same document. Five kernels
implement that rule:

- ``causal``: plain causal SDPA (``is_causal=True``), used when a row holds one document (no ``doc_ids``,
  or every token of every row in one document). It is the fastest path everywhere.
- ``segments``: causal SDPA per document run. The runs are gathered into a few length buckets (each run
  padded to 16, 24, 32, 48, 64, ... tokens), one ``is_causal`` call per bucket, and scattered back. It does
  only the work inside documents, so a row of 512 tokens holding ten short documents costs a tenth of the
  dense mask's attention. The CPU default for packed rows (``attn_impl="auto"``); runs anywhere.
- ``dense``: SDPA with an explicit boolean mask ``(B, 1, L, S)`` (``attn_impl="sdpa"``). Runs anywhere. The
  KV cache path uses it too, with a mask built from the cache's valid slots.
- ``flex``: ``torch.nn.attention.flex_attention`` with a block mask built once per forward from
  ``doc_ids``; compiled on first use. GPU default when available.
- ``flash``: FlashAttention varlen over the flattened rows, with one segment per document run (documents
  must be contiguous runs of equal ids): ``flash_attn.flash_attn_varlen_func`` when the flash-attn package
  is installed, else PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.10, CUDA). Used
  when ``attn_impl="flash"`` is asked for, or by ``auto`` on a GPU without FlexAttention.

``build_attention_mask`` picks the kernel once per forward; ``attend`` runs it in every layer.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

IMPLS = ("auto", "sdpa", "segments", "flex", "flash")


@functools.cache
def flex_available() -> bool:
    """True when ``torch.nn.attention.flex_attention`` imports (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _varlen_kernel() -> tuple[str, Any, frozenset[str]] | None:
    """The FlashAttention varlen function available here, with its keyword names (looked up once):
    ``("flash_attn", fn, names)``, ``("torch", fn, names)``, or None."""
    if importlib.util.find_spec("flash_attn") is not None:
        from flash_attn import flash_attn_varlen_func as fn

        name = "flash_attn"
    else:
        try:
            from torch.nn.attention.varlen import varlen_attn as fn
        except ImportError:
            return None
        name = "torch"
    return name, fn, frozenset(inspect.signature(fn).parameters)


def flash_available() -> bool:
    """True when a FlashAttention varlen kernel exists (flash-attn, or torch's ``varlen_attn``); CUDA only."""
    return _varlen_kernel() is not None


def _flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
    """Document-causal attention over flattened segments.

    Args:
        q: ``(T, H, hd)``; k, v: ``(T, Hkv, hd)`` with ``H % Hkv == 0``.
        cu: ``(n_segments + 1,)`` int32 segment offsets; max_len: longest segment.

    Returns:
        ``(T, H, hd)``.
    """
    name, fn, params = _varlen_kernel()  # type: ignore[misc]
    if name == "flash_attn":
        return fn(q, k, v, cu, cu, max_len, max_len, causal=True)  # GQA is native
    kwargs: dict[str, Any] = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # older torch: repeat each KV head for its query group
            T, Hkv, hd = k.shape
            k = k[:, :, None].expand(T, Hkv, n_rep, hd).reshape(T, Hkv * n_rep, hd)
            v = v[:, :, None].expand(T, Hkv, n_rep, hd).reshape(T, Hkv * n_rep, hd)
    return fn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def resolve_impl(impl: str, device: torch.device) -> str:
    """Map a configured ``attn_impl`` to the kernel that will run on ``device``.

    Args:
        impl: one of ``auto``, ``sdpa``, ``segments``, ``flex``, ``flash``.
        device: where the activations live.

    Returns:
        ``"sdpa"``, ``"segments"``, ``"flex"`` or ``"flash"``. ``auto`` gives flex, else flash, on CUDA, and
        segments elsewhere.

    Raises:
        ValueError: unknown name, or a kernel that cannot run here (flash off CUDA or not installed, flex
            missing from this torch).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown attn_impl {impl!r}; expected one of {list(IMPLS)}")
    if impl == "auto":
        if device.type == "cuda":
            if flex_available():
                return "flex"
            if flash_available():
                return "flash"
        return "segments"
    if impl == "flash":
        if device.type != "cuda":
            raise ValueError("attn_impl='flash' needs a CUDA device; use 'sdpa' (or 'auto') on CPU")
        if not flash_available():
            raise ValueError(
                "attn_impl='flash' needs the flash-attn package or torch >= 2.10 (torch.nn.attention.varlen); "
                "install one or use 'auto'"
            )
    if impl == "flex" and not flex_available():
        raise ValueError(f"attn_impl='flex' needs torch >= 2.5 with FlexAttention (this is {torch.__version__})")
    return impl


@dataclass
class AttentionMask:
    """Everything the layers need to mask attention, computed once per forward.

    Attributes:
        kind: ``causal``, ``dense``, ``segments``, ``flex`` or ``flash``.
        dense: ``(B, 1, L, S)`` bool, True where attention is allowed (``dense`` only).
        gathers: per length bucket, ``(n, P)`` long indices of its document runs' tokens in the flattened
            ``B * L`` batch; a run shorter than ``P`` repeats its last token (``segments``).
        take: ``(B * L,)`` long, where each token's output lies among the buckets' concatenated ``n * P``
            rows (``segments``).
        block_mask: a FlexAttention ``BlockMask`` (``flex`` only).
        cu_seqlens: ``(n_segments + 1,)`` int32 offsets of document runs in the flattened batch (``flash``).
        max_seqlen: longest document run (``flash``).
    """

    kind: str
    dense: torch.Tensor | None = None
    gathers: list[torch.Tensor] | None = None
    take: torch.Tensor | None = None
    block_mask: Any = None
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int = 0


def dense_doc_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean document-causal mask.

    Args:
        doc_ids: ``(B, L)`` integer document id of every token.

    Returns:
        ``(B, 1, L, L)`` bool, True where query i may attend to key j (same document and ``j <= i``).
    """
    L = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal).unsqueeze(1)  # (B, 1, L, L)


def doc_cu_seqlens(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Offsets of the document runs of a packed batch, flattened row after row (flash-attn varlen layout).

    A new segment starts at every row start and wherever the document id changes.

    Args:
        doc_ids: ``(B, L)`` integer document ids.

    Returns:
        ``cu_seqlens`` ``(n_segments + 1,)`` int32 (starts with 0, ends with ``B * L``) and the longest
        segment's length.
    """
    B, L = doc_ids.shape
    flat = doc_ids.reshape(-1)  # (B*L,)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::L] = True
    idx = torch.nonzero(starts).flatten()
    end = torch.tensor([B * L], device=doc_ids.device, dtype=idx.dtype)
    cu = torch.cat([idx, end]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def bucket_length(n: int) -> int:
    """The padded length of a document run of ``n`` tokens: the smallest of 16, 24, 32, 48, 64, 96, ... >= n."""
    p = 16
    while p < n:
        p = p * 3 // 2 if p & (p - 1) == 0 else p * 4 // 3
    return p


def doc_segments(doc_ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Document runs of a packed batch, grouped into length buckets for the ``segments`` kernel.

    Args:
        doc_ids: ``(B, L)`` integer document ids (a run is a maximal stretch of equal ids within a row).

    Returns:
        ``(gathers, take)``: per bucket, ``(n, P)`` long token indices into the flattened ``B * L`` batch, each
        row one run padded with its last token; and ``(B * L,)`` long, the row of every token's output among
        the buckets' concatenated ``(n * P)`` outputs.
    """
    cu, _ = doc_cu_seqlens(doc_ids)
    starts = cu[:-1].long()
    lengths = (cu[1:] - cu[:-1]).long()
    padded = torch.tensor([bucket_length(n) for n in lengths.tolist()], device=doc_ids.device)
    seg_of_token = torch.repeat_interleave(torch.arange(len(starts), device=doc_ids.device), lengths)  # (B*L,)
    offset_in_seg = torch.arange(doc_ids.numel(), device=doc_ids.device) - starts[seg_of_token]
    out_row = torch.empty_like(starts)  # first output row of each run
    gathers: list[torch.Tensor] = []
    base = 0
    for p in sorted(set(padded.tolist())):
        members = torch.nonzero(padded == p).flatten()  # runs in this bucket
        steps = torch.arange(p, device=doc_ids.device)
        last = (lengths[members] - 1)[:, None]
        gathers.append(starts[members][:, None] + torch.minimum(steps[None], last))  # (n, P)
        out_row[members] = base + p * torch.arange(len(members), device=doc_ids.device)
        base += p * len(members)
    return gathers, out_row[seg_of_token] + offset_in_seg


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_block_mask(doc_ids: torch.Tensor) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    B, L = doc_ids.shape

    def doc_causal(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (doc_ids[b, q_idx] == doc_ids[b, kv_idx]) & (q_idx >= kv_idx)

    return create_block_mask(doc_causal, B, None, L, L, device=doc_ids.device, _compile=doc_ids.is_cuda)


def build_attention_mask(doc_ids: torch.Tensor | None, impl: str, device: torch.device) -> AttentionMask:
    """Choose the kernel for a training/prefill forward and precompute its mask.

    Args:
        doc_ids: ``(B, L)`` integer document ids, or None when every row is one document.
        impl: configured ``attn_impl`` (``auto``/``sdpa``/``segments``/``flex``/``flash``).
        device: the activations' device.

    Returns:
        The ``AttentionMask`` that every layer passes to ``attend``.
    """
    kernel = resolve_impl(impl, device)
    if doc_ids is None:
        return AttentionMask("causal")
    if doc_ids.dim() != 2:
        raise ValueError(f"doc_ids must be (B, L), got shape {tuple(doc_ids.shape)}")
    if kernel == "flex":
        return AttentionMask("flex", block_mask=_flex_block_mask(doc_ids))
    if kernel == "flash":
        cu, max_len = doc_cu_seqlens(doc_ids)
        return AttentionMask("flash", cu_seqlens=cu, max_seqlen=max_len)
    # SDPA: one document per row needs no mask at all (is_causal is the fast kernel).
    if bool((doc_ids == doc_ids[:, :1]).all()):
        return AttentionMask("causal")
    if kernel == "segments":
        gathers, take = doc_segments(doc_ids)
        return AttentionMask("segments", gathers=gathers, take=take)
    return AttentionMask("dense", dense=dense_doc_causal_mask(doc_ids))


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, Hkv, S, hd)`` -> ``(B, Hkv * n_rep, S, hd)``, each KV head repeated for its query group."""
    if n_rep == 1:
        return x
    B, Hkv, S, hd = x.shape
    return x[:, :, None].expand(B, Hkv, n_rep, S, hd).reshape(B, Hkv * n_rep, S, hd)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``(B, heads, L, hd)`` -> ``(B * L, heads, hd)``: the rows of a packed batch one after another."""
    B, heads, L, hd = x.shape
    return x.transpose(1, 2).reshape(B * L, heads, hd)


@torch.compiler.disable  # data-dependent bucket shapes: a compiled block runs this part eagerly
def _segments_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
    """Causal SDPA per document run (``segments`` kernel); shapes as in ``attend``."""
    B, H, L, hd = q.shape
    Hkv = k.shape[1]
    qf, kf, vf = _flat(q), _flat(k), _flat(v)  # (B*L, H or Hkv, hd)
    outs = []
    for g in mask.gathers:  # type: ignore[union-attr]
        n, p = g.shape
        idx = g.reshape(-1)
        qb = qf.index_select(0, idx).view(n, p, H, hd).transpose(1, 2)  # (n, H, P, hd)
        kb = kf.index_select(0, idx).view(n, p, Hkv, hd).transpose(1, 2)  # (n, Hkv, P, hd)
        vb = vf.index_select(0, idx).view(n, p, Hkv, hd).transpose(1, 2)
        # a run's padding repeats its last token after it, so causal masking hides it from the run's queries
        ob = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=Hkv != H)  # (n, H, P, hd)
        outs.append(ob.transpose(1, 2).reshape(n * p, H, hd))
    out = torch.cat(outs).index_select(0, mask.take)  # type: ignore[arg-type]  # (B*L, H, hd)
    return out.view(B, L, H, hd).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
    """Scaled dot-product attention under ``mask``, with grouped-query heads.

    Args:
        q: ``(B, H, L, hd)`` queries (RoPE applied).
        k: ``(B, Hkv, S, hd)`` keys (RoPE applied); ``H % Hkv == 0``.
        v: ``(B, Hkv, S, hd)`` values.
        mask: from ``build_attention_mask`` (or a ``dense`` mask built by the KV cache).

    Returns:
        ``(B, H, L, hd)`` attention output, same dtype as ``q``.
    """
    n_rep = q.shape[1] // k.shape[1]
    if mask.kind == "causal":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=n_rep > 1)
    if mask.kind == "dense":
        # Masked GQA is not supported by the fused CUDA kernels: repeat the KV heads instead.
        return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask.dense)
    if mask.kind == "segments":
        return _segments_attend(q, k, v, mask)
    if mask.kind == "flex":
        return _compiled_flex()(q, k, v, block_mask=mask.block_mask, enable_gqa=n_rep > 1)
    if mask.kind == "flash":
        B, H, L, hd = q.shape
        cu, m = mask.cu_seqlens, mask.max_seqlen
        out = _flash_varlen(_flat(q), _flat(k), _flat(v), cu, m)  # (B*L, H, hd)
        return out.reshape(B, L, H, hd).transpose(1, 2)  # (B, H, L, hd)
    raise ValueError(f"unknown attention mask kind {mask.kind!r}")
