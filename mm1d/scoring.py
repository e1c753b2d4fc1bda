"""Log-likelihoods of whole documents under the model, and caption reranking with both directions.

A unified model scores a caption ``c`` of a visual input ``x`` two ways: as captioning, ``log p(c | x)``
(the I2T / V2T document), and as generation, ``log p(x | c)`` (the T2I / T2V document with the same codes).
``rerank_scores`` combines them, ``log p(c | x) + w log p(x | c)``: candidates drawn from the captioning
direction are checked by the generation direction, which a model learns from the dense loss on every visual
code (a noisy-channel reranker; with ``w`` large it is a generative classifier over the candidates).

``refine_captions`` then edits the kept caption one token at a time. Sampling from the captioning direction
never proposes a colour-shape pair that the training captions lack ("red triangle" when red only ever came
with circles and squares), while the generation direction does prefer it for an image that shows one. Each
round tries the top alternatives at every caption position and keeps the best edit by
``sum_{i != j} delta log p(c_i | x, c_<i) + e * delta log p(c_j | ...) + w * delta log p(x | c)``: the edited
token is judged mostly by the generation direction (``e < 1``), the rest of the caption must stay as likely.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mm1d.modality import Vocab
from mm1d.model.decode import DecodeState
from mm1d.model.transformer import Transformer, grouped_logsumexp, softmax_groups_of
from mm1d.sequence import MOD_IMAGE, MOD_VIDEO, Document, SequenceSample, build_document

GENERATION_OF = {"i2t": "t2i", "v2t": "t2v"}


def _padded(docs: Sequence[Document], pad_id: int) -> torch.Tensor:
    """``(len(docs), longest)`` long ids, each document left-aligned and padded with ``pad_id``."""
    ids = torch.full((len(docs), max(len(d) for d in docs)), pad_id, dtype=torch.long)
    for r, d in enumerate(docs):
        ids[r, : len(d)] = torch.from_numpy(d.ids)
    return ids


def _head_logprobs(model: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(n, D)`` final hidden states and ``(n,)`` next tokens -> ``(n,)`` float32 ``log p(target)`` (CPU),
    normalized over each target's softmax group."""
    return model.target_logprobs(hidden, target).cpu()


def _text_log_softmax(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``(n, D)`` hidden states at positions that predict caption text or ``<eos>`` -> ``(n, V)`` float32
    log-probabilities (CPU), normalized over the softmax group of text and specials (id 0 is text)."""
    logits = model.lm_head(hidden).float()  # (n, V)
    text = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return (logits - grouped_logsumexp(logits, text, softmax_groups_of(model, logits.shape[1]))[:, None]).cpu()


@torch.no_grad()
def document_logprobs(
    model: torch.nn.Module, docs: Sequence[Document], masks: Sequence[np.ndarray], pad_id: int, batch_size: int = 64
) -> torch.Tensor:
    """Summed log-probabilities of chosen tokens of each document, one document per row.

    Args:
        model: the transformer (``forward(input_ids, return_hidden=True)`` and ``lm_head``); the head runs
            at the scored positions only.
        docs: built documents (batched in order of length, so that little of a batch is padding).
        masks: per document, ``(n,)`` bool over its tokens: which tokens' log-probabilities are summed
            (position 0, ``<bos>``, is never predicted and must be False).
        pad_id: the padding id.
        batch_size: documents per forward pass.

    Returns:
        ``(len(docs),)`` float32: ``sum_i log p(doc[i] | doc[:i])`` over the masked tokens.
    """
    if len(docs) != len(masks):
        raise ValueError(f"got {len(masks)} masks for {len(docs)} documents")
    scored: list[np.ndarray] = []
    for i, (d, m) in enumerate(zip(docs, masks)):
        m = np.asarray(m, dtype=bool)
        if m.shape != (len(d),):
            raise ValueError(f"mask {i} has shape {m.shape}, document has {len(d)} tokens")
        if m[0]:
            raise ValueError("the first token of a document has no prediction to score")
        scored.append(np.flatnonzero(m))
    device = next(model.parameters()).device
    out = torch.zeros(len(docs), dtype=torch.float32)
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))  # similar lengths share a batch: less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        hidden = model(_padded([docs[i] for i in chunk], pad_id).to(device), return_hidden=True)  # (B, L, D)
        row = torch.cat([torch.full((len(scored[i]),), r) for r, i in enumerate(chunk)])  # (n,)
        col = torch.from_numpy(np.concatenate([scored[i] - 1 for i in chunk]))  # position t - 1 predicts token t
        target = torch.from_numpy(np.concatenate([docs[i].ids[scored[i]] for i in chunk])).to(device)
        logp = _head_logprobs(model, hidden[row.to(device), col.to(device)], target)  # scored tokens only
        sums = torch.zeros(len(chunk), dtype=torch.float32).index_add_(0, row, logp)
        out[torch.tensor(chunk)] = sums
    return out


def _suffix_passes(
    model: Transformer, docs: Sequence[Document], prefix_lengths: Sequence[int], pad_id: int, batch_rows: int
) -> Iterator[tuple[list[int], list[np.ndarray], torch.Tensor]]:
    """Run the documents' suffixes with each distinct prefix prefilled once; yield per pass
    ``(members, tails, preds)``: document indices, their suffix ids, and ``(R, longest tail, D)`` hidden states
    where ``preds[r, j]`` predicts ``tails[r][j]``."""
    if len(docs) != len(prefix_lengths):
        raise ValueError(f"got {len(prefix_lengths)} prefix lengths for {len(docs)} documents")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (d, p) in enumerate(zip(docs, prefix_lengths)):
        if not 1 <= p < len(d):
            raise ValueError(f"prefix length {p} of document {i} must be in [1, {len(d) - 1}]")
        groups.setdefault(tuple(d.ids[:p].tolist()), []).append(i)
    passes: list[list[tuple[int, ...]]] = [[]]
    for key in groups:
        if passes[-1] and sum(len(groups[k]) for k in passes[-1]) + len(groups[key]) > batch_rows:
            passes.append([])
        passes[-1].append(key)
    device = next(model.parameters()).device
    for keys in passes:
        members = [i for key in keys for i in groups[key]]
        tails = [docs[i].ids[prefix_lengths[i]:] for i in members]
        lp, lt = max(len(k) for k in keys), max(len(t) for t in tails)
        ids = torch.full((len(keys), lp), pad_id, dtype=torch.long)
        mask = torch.zeros(len(keys), lp, dtype=torch.bool)
        for r, key in enumerate(keys):  # left-padded prefixes
            ids[r, lp - len(key):] = torch.tensor(key)
            mask[r, lp - len(key):] = True
        state = DecodeState(model, len(keys), lp + lt)
        last = state.forward(ids.to(device), None if bool(mask.all()) else mask.to(device))  # (U, D)
        fan = torch.tensor([u for u, key in enumerate(keys) for _ in groups[key]], device=device)
        state.select(fan)
        tail_ids = torch.full((len(members), lt), pad_id, dtype=torch.long)
        for r, t in enumerate(tails):  # right-padded suffixes: padding comes after every scored token
            tail_ids[r, : len(t)] = torch.from_numpy(t)
        h = state.forward(tail_ids.to(device), None, every=True)  # (R, lt, D)
        yield members, tails, torch.cat([last.index_select(0, fan)[:, None], h[:, :-1]], dim=1)


def _prompt_lengths(model: torch.nn.Module, docs: Sequence[Document]) -> list[int] | None:
    """Per captioning document, the length of ``<bos>`` and its prompt (the caption and ``<eos>`` follow), when the
    prompt-sharing path applies: an mm1d ``Transformer`` and prompts that are one leading run; else None."""
    lengths = [1 + int(d.prompt.sum()) for d in docs]
    if isinstance(model, Transformer) and all(d.prompt[1:p].all() for d, p in zip(docs, lengths)):
        return lengths
    return None


def _flat_positions(tails: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(row, col, target)`` over every suffix token of a pass (``(n,)`` each)."""
    row = torch.cat([torch.full((len(t),), r) for r, t in enumerate(tails)])
    col = torch.cat([torch.arange(len(t)) for t in tails])
    return row, col, torch.from_numpy(np.concatenate(tails))


@torch.no_grad()
def suffix_logprobs(
    model: Transformer, docs: Sequence[Document], prefix_lengths: Sequence[int], pad_id: int, batch_rows: int = 256
) -> torch.Tensor:
    """Summed log-probabilities of every token after each document's prefix, with shared prefixes run once.

    The candidate captions of one input share their prompt (``<bos>``, the visual span, the text opener):
    each distinct prefix is prefilled once in a ``DecodeState``, fanned out to its documents, and only the
    suffixes run. This equals ``document_logprobs`` with the suffix as the mask (tested).

    Args:
        model: an mm1d ``Transformer``.
        docs: built documents.
        prefix_lengths: per document, how many leading tokens are the prefix (``1 <= p < len(doc)``).
        pad_id: the padding id.
        batch_rows: documents per pass (whole prefix groups; a larger group is a pass of its own).

    Returns:
        ``(len(docs),)`` float32: ``sum_{i >= p} log p(doc[i] | doc[:i])``.
    """
    out = torch.zeros(len(docs), dtype=torch.float32)
    for members, tails, preds in _suffix_passes(model, docs, prefix_lengths, pad_id, batch_rows):
        row, col, target = _flat_positions(tails)
        dev = preds.device
        logp = _head_logprobs(model, preds[row.to(dev), col.to(dev)], target.to(dev))
        out[torch.tensor(members)] = torch.zeros(len(members)).index_add_(0, row, logp)
    return out


def generation_logprobs(
    model: torch.nn.Module, vocab: Vocab, task: str, codes: Sequence[np.ndarray], captions: Sequence[np.ndarray],
    batch_size: int = 64,
) -> torch.Tensor:
    """``log p(codes | caption)`` under the generation document (T2I / T2V) of each (codes, caption) pair.

    Args:
        task: the understanding task, ``"i2t"`` (codes ``(k,)``) or ``"v2t"`` (codes ``(T, k)``), local ids.
        codes, captions: the pairs (captions as local text ids).

    Returns:
        ``(len(captions),)`` float32.
    """
    _check_pairs(task, codes, captions)
    gen = [build_document(SequenceSample(GENERATION_OF[task], c, x), vocab) for x, c in zip(codes, captions)]
    visual = [np.isin(d.modality, (MOD_IMAGE, MOD_VIDEO)) for d in gen]
    return document_logprobs(model, gen, visual, vocab.pad_id, batch_size)


def _check_pairs(task: str, codes: Sequence[np.ndarray], captions: Sequence[np.ndarray]) -> None:
    if task not in GENERATION_OF:
        raise ValueError(f"caption scoring takes the captioning task of images or videos (i2t/v2t), got task {task!r}")
    if len(codes) != len(captions):
        raise ValueError(f"got {len(captions)} captions for {len(codes)} inputs")


@torch.no_grad()
def caption_token_logprobs(
    model: torch.nn.Module, vocab: Vocab, task: str, codes: Sequence[np.ndarray], captions: Sequence[np.ndarray],
    alternatives: int = 0, text_pieces: int | None = None, batch_size: int = 64,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-token captioning log-probabilities, and the most likely other text tokens at each caption position.

    Args:
        task: ``"i2t"`` or ``"v2t"``.
        codes, captions: the pairs; each caption ``(n,)`` local text ids, non-empty.
        alternatives: how many other text tokens to return per position (0: none).
        text_pieces: alternatives come from local ids ``[0, text_pieces)``, the ids the text tokenizer can
            produce (default: the model's whole text range).

    Returns:
        ``(logps, alts)``: per pair, ``(n + 1,)`` float64 ``log p(c_i | x, c_<i)`` of the caption tokens then
        ``<eos>``, and ``(n, alternatives)`` int64 local text ids, by descending probability, never ``c_i``.
    """
    _check_pairs(task, codes, captions)
    docs = [build_document(SequenceSample(task, c, x), vocab) for x, c in zip(codes, captions)]
    lo, hi = vocab.range("text")
    if text_pieces is not None:
        if not 1 < text_pieces <= hi - lo:
            raise ValueError(f"text_pieces must be in [2, {hi - lo}], got {text_pieces}")
        hi = lo + text_pieces
    logps: list[np.ndarray] = [np.zeros(0)] * len(docs)
    alts: list[np.ndarray] = [np.zeros((0, 0), dtype=np.int64)] * len(docs)

    def take(i: int, rows: torch.Tensor, ids: np.ndarray) -> None:
        """``rows`` ``(n + 1, V)`` log-softmax predicting ``ids``, the caption tokens then ``<eos>``."""
        n = len(ids) - 1
        logps[i] = rows.gather(1, torch.from_numpy(ids)[:, None])[:, 0].double().numpy()
        if not alternatives:
            alts[i] = np.zeros((n, 0), dtype=np.int64)
            return
        text = rows[:n, lo:hi].clone()  # (n, text vocab)
        cur = torch.from_numpy(ids[:n] - lo)
        inside = cur < hi - lo
        text[torch.arange(n)[inside], cur[inside]] = -float("inf")
        alts[i] = torch.topk(text, min(alternatives, hi - lo - 1), dim=1).indices.numpy().astype(np.int64)

    device = next(model.parameters()).device
    prompt_len = _prompt_lengths(model, docs)
    if prompt_len is not None:  # the candidates of one input share its prompt: prefill it once, run the captions
        for members, tails, preds in _suffix_passes(model, docs, prompt_len, vocab.pad_id, batch_size):
            row, col, _ = _flat_positions(tails)
            logp = _text_log_softmax(model, preds[row.to(device), col.to(device)])
            offsets = np.cumsum([0] + [len(t) for t in tails])
            for r, (i, t) in enumerate(zip(members, tails)):
                take(i, logp[offsets[r] : offsets[r + 1]], t)
        return logps, alts
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        hidden = model(_padded(chunk, vocab.pad_id).to(device), return_hidden=True)  # (B, L, D)
        where = [np.flatnonzero(~d.prompt & (np.arange(len(d)) > 0)) for d in chunk]  # caption tokens, <eos>
        sel = torch.cat([hidden[r, torch.from_numpy(pos - 1).to(device)] for r, pos in enumerate(where)])
        logp = _text_log_softmax(model, sel)  # (sum of n + 1, V), heads only
        offsets = np.cumsum([0] + [len(pos) for pos in where])
        for r, (d, pos) in enumerate(zip(chunk, where)):
            take(start + r, logp[offsets[r] : offsets[r + 1]], d.ids[pos])
    return logps, alts


def refine_captions(
    model: torch.nn.Module,
    vocab: Vocab,
    task: str,
    codes: Sequence[np.ndarray],
    captions: Sequence[np.ndarray],
    *,
    rounds: int,
    alternatives: int,
    weight: float,
    edit_weight: float,
    frozen: Sequence[int] | None = None,
    text_pieces: int | None = None,
    batch_size: int = 64,
) -> tuple[list[np.ndarray], list[int]]:
    """Hill-climb each caption by single-token edits (see the module docstring).

    Each round, every caption position ``j`` is tried with its ``alternatives`` most likely other text tokens
    under ``p(. | x, c_<j)``. An edit ``c -> c'`` gains
    ``sum_{i != j} [log p(c'_i | .) - log p(c_i | .)] + edit_weight [log p(c'_j | .) - log p(c_j | .)]
    + weight [log p(x | c') - log p(x | c)]`` (``i`` runs over the caption tokens and ``<eos>``). The best
    edit with a positive gain is applied; a caption with none stops.

    Args:
        task: ``"i2t"`` or ``"v2t"``.
        codes: the visual input of each caption, local ids.
        captions: ``(n,)`` local text ids each, non-empty.
        rounds: at most this many edits per caption.
        alternatives: tokens tried per position.
        weight: weight of the generation direction.
        edit_weight: weight of the edited token's own captioning log-probability (1: the plain sum).
        frozen: per caption, how many leading tokens are never edited (a given caption prefix); default 0.
        text_pieces: edits use local text ids ``[0, text_pieces)`` (the text tokenizer's size).

    Returns:
        ``(captions, edits)``: the refined captions and the number of edits applied to each.
    """
    _check_pairs(task, codes, captions)
    caps = [np.asarray(c, dtype=np.int64) for c in captions]
    if any(len(c) == 0 for c in caps):
        raise ValueError("refine_captions needs non-empty captions")
    keep = [0] * len(caps) if frozen is None else [int(f) for f in frozen]
    if len(keep) != len(caps):
        raise ValueError(f"got {len(keep)} frozen lengths for {len(caps)} captions")
    edits = [0] * len(caps)
    active = list(range(len(caps)))
    known_gen: dict[int, float] = {}  # log p(x | caption) of a caption kept by the previous round
    for _ in range(rounds):
        if not active:
            break
        cur_lp, cur_alts = caption_token_logprobs(model, vocab, task, [codes[i] for i in active],
                                                  [caps[i] for i in active], alternatives, text_pieces, batch_size)
        todo = [i for i in active if i not in known_gen]
        if todo:
            fresh = generation_logprobs(model, vocab, task, [codes[i] for i in todo], [caps[i] for i in todo],
                                        batch_size).double().numpy()
            known_gen.update(zip(todo, fresh.tolist()))
        cur_gen = np.array([known_gen[i] for i in active])
        owner, where, cands = [], [], []
        for a, i in enumerate(active):
            for j in range(keep[i], len(caps[i])):
                for v in cur_alts[a][j]:
                    c = caps[i].copy()
                    c[j] = v
                    owner.append(a)
                    where.append(j)
                    cands.append(c)
        if not cands:
            break
        cand_codes = [codes[active[a]] for a in owner]
        lp, _ = caption_token_logprobs(model, vocab, task, cand_codes, cands, 0, text_pieces, batch_size)
        gen = generation_logprobs(model, vocab, task, cand_codes, cands, batch_size).double().numpy()
        best = [(0.0, None)] * len(active)
        for m, (a, j) in enumerate(zip(owner, where)):
            old = cur_lp[a]
            gain = (lp[m].sum() - old.sum() - (1 - edit_weight) * (lp[m][j] - old[j])
                    + weight * (gen[m] - cur_gen[a]))
            if gain > best[a][0]:
                best[a] = (gain, m)
        still = []
        for a, i in enumerate(active):
            m = best[a][1]
            if m is not None:
                caps[i], edits[i] = cands[m], edits[i] + 1
                known_gen[i] = float(gen[m])
                still.append(i)
        active = still
    return caps, edits


def caption_direction(
    model: torch.nn.Module, vocab: Vocab, task: str, codes: Sequence[np.ndarray], captions: Sequence[np.ndarray],
    batch_size: int = 64,
) -> torch.Tensor:
    """``log p(caption <eos> | codes)`` under the captioning document (I2T / V2T) of each pair: ``(n,)`` float32."""
    und = [build_document(SequenceSample(task, c, x), vocab) for x, c in zip(codes, captions)]
    prompt_len = _prompt_lengths(model, und)
    if prompt_len is not None:
        return suffix_logprobs(model, und, prompt_len, vocab.pad_id)  # one prefill per input
    return document_logprobs(model, und, [~d.prompt & (np.arange(len(d)) > 0) for d in und], vocab.pad_id,
                             batch_size)


def rerank_scores(
    model: torch.nn.Module,
    vocab: Vocab,
    task: str,
    codes: Sequence[np.ndarray],
    captions: Sequence[np.ndarray],
    weight: float,
    batch_size: int = 64,
    caption_logprobs: torch.Tensor | None = None,
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
        caption_logprobs: ``(len(captions),)`` ``log p(caption <eos> | codes)`` when already known (the sampler's
            ``return_logprobs`` while drawing the candidates); only the generation direction then runs.

    Returns:
        ``(len(captions),)`` float32 scores; higher is better.
    """
    _check_pairs(task, codes, captions)
    if caption_logprobs is not None:
        if caption_logprobs.shape != (len(captions),):
            raise ValueError(f"caption_logprobs has shape {tuple(caption_logprobs.shape)}, want ({len(captions)},)")
        score = caption_logprobs.float().cpu()
    else:
        score = caption_direction(model, vocab, task, codes, captions, batch_size)
    if weight:
        score = score + weight * generation_logprobs(model, vocab, task, codes, captions, batch_size)
    return score


__all__ = ["caption_direction", "caption_token_logprobs", "document_logprobs", "generation_logprobs", "refine_captions",
           "rerank_scores", "suffix_logprobs"]
