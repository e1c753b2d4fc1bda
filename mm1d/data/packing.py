"""Packing documents into fixed-length rows, and the ``PackedBatch`` the trainer consumes.

A row of length L holds whole documents one after another, then ``<pad>``. For every token i:

* ``input_ids[i]``: the token, or its replacement under caption input noise (``Document.inputs``);
  ``doc_ids[i]``: its document's index in the row (0, 1, ...; -1 for padding);
  ``positions[i]``: its index inside its document (restarting at 0 for each document and for padding);
* ``targets[i]``: the next token of the *same* document, or ``IGNORE_INDEX`` (-100) where there is none
  (a document's last token, padding) or where the loss mask excludes it (the prompt, when configured);
* ``modality[i]``: modality of ``targets[i]``: 0 text/special, 1 image, 2 video, -1 where ignored;
* ``loss_weight[i]``: ``w_m / (n_m * sum of w over modalities present)`` for a target of modality m, where
  ``n_m`` counts the batch's targets of modality m and ``w_m`` is ``LossConfig.{text,image,video}``;
  0 where ignored. Hence ``sum(loss_weight * token_ce)`` is the weighted mean, over modalities present,
  of the per-modality mean cross-entropy: long video spans cannot swamp the text.

Attention is causal inside each document and never crosses documents (``attention_mask``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from mm1d.config import LossConfig
from mm1d.modality import MODALITIES
from mm1d.sequence import IGNORE_INDEX, MOD_IGNORE, Document, target_loss_mask

NUM_MODALITIES = 3  # text/special, image, video


@dataclass
class PackedRow:
    """One packed row as numpy arrays, each of shape (L,)."""

    input_ids: np.ndarray  # int64
    targets: np.ndarray  # int64, IGNORE_INDEX where no loss
    positions: np.ndarray  # int64
    doc_ids: np.ndarray  # int64, -1 for padding
    modality: np.ndarray  # int8, modality of the target, -1 where ignored
    num_docs: int


class RowPacker:
    """Greedy packer: append documents while they fit, then ``finish()`` pads the row.

    Args:
        seq_len: L, tokens per row.
        pad_id: global id of ``<pad>``.
        loss: which prompt tokens get no loss.
    """

    def __init__(self, seq_len: int, pad_id: int, loss: LossConfig) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        self.seq_len, self.pad_id, self.loss = seq_len, pad_id, loss
        self._reset()

    def _reset(self) -> None:
        L = self.seq_len
        self.ids = np.full(L, self.pad_id, dtype=np.int64)
        self.targets = np.full(L, IGNORE_INDEX, dtype=np.int64)
        self.positions = np.zeros(L, dtype=np.int64)
        self.doc_ids = np.full(L, -1, dtype=np.int64)
        self.modality = np.full(L, MOD_IGNORE, dtype=np.int8)
        self.fill = 0
        self.num_docs = 0

    @property
    def empty(self) -> bool:
        return self.num_docs == 0

    def fits(self, doc: Document) -> bool:
        return self.fill + len(doc) <= self.seq_len

    def add(self, doc: Document) -> None:
        """Append one document. Raises if it does not fit (check ``fits`` first)."""
        n = len(doc)
        if n > self.seq_len:
            raise ValueError(f"document of {n} tokens is longer than seq_len={self.seq_len}")
        if not self.fits(doc):
            raise ValueError(f"document of {n} tokens does not fit: {self.seq_len - self.fill} tokens left")
        s, e = self.fill, self.fill + n
        keep = target_loss_mask(doc, self.loss)[1:]  # (n - 1,): loss on predicting token j + 1
        self.ids[s:e] = doc.ids if doc.inputs is None else doc.inputs
        self.targets[s : e - 1] = np.where(keep, doc.ids[1:], IGNORE_INDEX)
        self.modality[s : e - 1] = np.where(keep, doc.modality[1:], MOD_IGNORE)
        self.positions[s:e] = np.arange(n)
        self.doc_ids[s:e] = self.num_docs
        self.fill, self.num_docs = e, self.num_docs + 1

    def finish(self) -> PackedRow:
        """Close the row (padding positions restart at 0) and start a new one."""
        pad = self.seq_len - self.fill
        self.positions[self.fill :] = np.arange(pad)
        row = PackedRow(self.ids, self.targets, self.positions, self.doc_ids, self.modality, self.num_docs)
        self._reset()
        return row


def pack_documents(docs: Sequence[Document], seq_len: int, pad_id: int, loss: LossConfig) -> list[PackedRow]:
    """Pack documents in order, greedily (a document that does not fit starts the next row).

    Raises:
        ValueError: a document longer than ``seq_len``.
    """
    packer, rows = RowPacker(seq_len, pad_id, loss), []
    for doc in docs:
        if not packer.fits(doc) and not packer.empty:
            rows.append(packer.finish())
        packer.add(doc)
    if not packer.empty:
        rows.append(packer.finish())
    return rows


@dataclass
class PackedBatch:
    """What the trainer consumes. Every field is a (B, L) tensor.

    Attributes:
        input_ids: int64 global ids.
        targets: int64 next-token targets; ``IGNORE_INDEX`` (-100) where there is no loss.
        positions: int64 per-document positions (restart at 0 per document).
        doc_ids: int64 document index within the row; -1 for padding.
        loss_weight: float32, normalized so ``(loss_weight * token_ce).sum()`` is the batch loss.
        modality: int64 modality of each target: 0 text/special, 1 image, 2 video, -1 ignored.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    doc_ids: torch.Tensor
    loss_weight: torch.Tensor
    modality: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return PackedBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                              for f in fields(self)})

    @property
    def num_tokens(self) -> int:
        """Non-padding tokens in the batch."""
        return int((self.doc_ids >= 0).sum())

    def attention_mask(self) -> torch.Tensor:
        """(B, L, L) bool, True where query i may attend key j. See ``attention_mask``."""
        return attention_mask(self.doc_ids)

    def loss(self, token_ce: torch.Tensor) -> torch.Tensor:
        """Batch loss from per-token cross-entropy ``token_ce`` (B, L) (0 or anything finite where ignored)."""
        return (self.loss_weight * torch.where(self.targets == IGNORE_INDEX, 0.0, token_ce)).sum()

    def modality_totals(self, token_ce: torch.Tensor) -> dict[str, tuple[float, int]]:
        """(sum of cross-entropy, target count) per modality present: keys 'text', 'image', 'video'."""
        out = {}
        for m, name in enumerate(MODALITIES):
            sel = self.modality == m
            if bool(sel.any()):
                out[name] = (float(token_ce[sel].double().sum()), int(sel.sum()))
        return out

    def modality_losses(self, token_ce: torch.Tensor) -> dict[str, float]:
        """Mean cross-entropy per modality present (for logging): keys 'text', 'image', 'video'."""
        return {name: total / n for name, (total, n) in self.modality_totals(token_ce).items()}


def attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask from document ids.

    Args:
        doc_ids: (B, L) int document id per token (-1 padding, which attends to padding only).

    Returns:
        (B, L, L) bool; ``[b, i, j]`` is True iff ``j <= i`` and tokens i and j share a document.
    """
    L = doc_ids.shape[-1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=doc_ids.device).tril()
    return same & causal


def modality_loss_weights(modality: np.ndarray, loss: LossConfig) -> np.ndarray:
    """Per-target weights for one batch (see the module docstring).

    Args:
        modality: (B, L) int8 target modality (-1 ignored).
        loss: the modality weights.

    Returns:
        (B, L) float32 weights; all zero when no modality with a positive weight is present.
    """
    w = np.asarray([loss.text, loss.image, loss.video], dtype=np.float64)
    counts = np.bincount(modality[modality >= 0].astype(np.int64), minlength=NUM_MODALITIES)
    present = counts > 0
    denom = w[present].sum()
    per = np.zeros(NUM_MODALITIES + 1, dtype=np.float64)  # last slot: ignored targets (index -1)
    if denom > 0:
        per[:NUM_MODALITIES][present] = w[present] / counts[present] / denom
    return per[modality.astype(np.int64)].astype(np.float32)


def collate_rows(rows: Sequence[PackedRow], loss: LossConfig) -> PackedBatch:
    """Stack rows into a ``PackedBatch`` and compute the batch's loss weights."""
    if not rows:
        raise ValueError("collate_rows needs at least one row")
    modality = np.stack([r.modality for r in rows])  # (B, L)
    return PackedBatch(
        input_ids=torch.from_numpy(np.stack([r.input_ids for r in rows])),
        targets=torch.from_numpy(np.stack([r.targets for r in rows])),
        positions=torch.from_numpy(np.stack([r.positions for r in rows])),
        doc_ids=torch.from_numpy(np.stack([r.doc_ids for r in rows])),
        loss_weight=torch.from_numpy(modality_loss_weights(modality, loss)),
        modality=torch.from_numpy(modality.astype(np.int64)),
    )
