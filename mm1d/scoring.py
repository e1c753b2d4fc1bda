"""Log-likelihoods of whole documents under the model, and caption reranking with both directions.

A unified model scores a caption ``c`` of a visual input ``x`` two ways: as captioning, ``log p(c | x)``
(the I2T / V2T document), and as generation, ``log p(x | c)`` (the T2I / T2V document with the same codes).
``rerank_scores`` combines them, ``log p(c | x) + w log p(x | c)``: candidates drawn from the captioning
direction are checked by the generation direction, which a model learns from the dense loss on every visual
code (a noisy-channel reranker; with ``w`` large it is a generative classifier over the candidates).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mm1d.modality import Vocab
from mm1d.sequence import MOD_IMAGE, MOD_VIDEO, Document, SequenceSample, build_document

GENERATION_OF = {"i2t": "t2i", "v2t": "t2v"}


@torch.no_grad()
def document_logprobs(
    model: torch.nn.Module, docs: Sequence[Document], masks: Sequence[np.ndarray], pad_id: int, batch_size: int = 64
) -> torch.Tensor:
    """Summed log-probabilities of chosen tokens of each document, one document per row.

    Args:
        model: the transformer (``forward(input_ids, targets=...)`` returns per-token cross-entropy).
        docs: built documents.
        masks: per document, ``(n,)`` bool over its tokens: which tokens' log-probabilities are summed
            (position 0, ``<bos>``, is never predicted and must be False).
        pad_id: the padding id.
        batch_size: documents per forward pass.

    Returns:
        ``(len(docs),)`` float32: ``sum_i log p(doc[i] | doc[:i])`` over the masked tokens.
    """
    if len(docs) != len(masks):
        raise ValueError(f"got {len(masks)} masks for {len(docs)} documents")
    device = next(model.parameters()).device
    out = torch.empty(len(docs), dtype=torch.float32)
    for start in range(0, len(docs), batch_size):
        chunk = range(start, min(start + batch_size, len(docs)))
        L = max(len(docs[i]) for i in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        targets = torch.full((len(chunk), L), -100, dtype=torch.long)
        for r, i in enumerate(chunk):
            d, m = docs[i], np.asarray(masks[i], dtype=bool)
            if m.shape != (len(d),):
                raise ValueError(f"mask {i} has shape {m.shape}, document has {len(d)} tokens")
            if m[0]:
                raise ValueError("the first token of a document has no prediction to score")
            ids[r, : len(d)] = torch.from_numpy(d.ids)
            tgt = torch.from_numpy(np.where(m, d.ids, -100))
            targets[r, : len(d) - 1] = tgt[1:]  # position t predicts token t + 1
        ce, _ = model(ids.to(device), targets=targets.to(device))
        out[start : chunk.stop] = -ce.float().sum(dim=1).cpu()
    return out


def rerank_scores(
    model: torch.nn.Module,
    vocab: Vocab,
    task: str,
    codes: Sequence[np.ndarray],
    captions: Sequence[np.ndarray],
    weight: float,
    batch_size: int = 64,
) -> torch.Tensor:
    """``log p(caption | codes) + weight * log p(codes | caption)`` for each (codes, caption) pair.

    Args:
        model: the transformer.
        vocab: its registry.
        task: ``"i2t"`` (codes ``(k,)``) or ``"v2t"`` (codes ``(T, k)``), local ids.
        codes: the visual input of each pair, at the budget the caption was made from.
        captions: ``(n,)`` local text ids of each candidate (non-empty).
        weight: weight of the generation direction; 0 scores captioning likelihood alone.
        batch_size: documents per forward pass.

    Returns:
        ``(len(captions),)`` float32 scores; higher is better.
    """
    if task not in GENERATION_OF:
        raise ValueError(f"rerank scores captions of images or videos (i2t/v2t), got task {task!r}")
    if len(codes) != len(captions):
        raise ValueError(f"got {len(captions)} captions for {len(codes)} inputs")
    und = [build_document(SequenceSample(task, c, x), vocab) for x, c in zip(codes, captions)]
    score = document_logprobs(model, und, [~d.prompt & (np.arange(len(d)) > 0) for d in und], vocab.pad_id,
                              batch_size)  # the caption and <eos>
    if weight:
        gen = [build_document(SequenceSample(GENERATION_OF[task], c, x), vocab) for x, c in zip(codes, captions)]
        visual = [np.isin(d.modality, (MOD_IMAGE, MOD_VIDEO)) for d in gen]
        score = score + weight * document_logprobs(model, gen, visual, vocab.pad_id, batch_size)
    return score


__all__ = ["document_logprobs", "rerank_scores"]
