"""Constrained, batched, guided sampling over the unified vocabulary, with a static KV cache.

The pieces, from the inside out:

* ``ConstraintTable``: one precomputed additive mask ``(n_kinds, V)`` per constraint kind (image codes,
  video codes, text + ``<eos>``, budget tokens). A decode step gathers one row per sample; nothing about
  the constraints is rebuilt per step. The mask is applied before temperature, top-k and top-p.
* ``RowProgram``: a per-sample state machine for what follows the prompt. Each position is either a
  forced id (``<eoi>``, ``<eot>``, ``<eov>``, ``<eos>``, given video steps) or a sampled slot of one kind.
  A budget slot (after ``<kauto>``) expands the program once the model has chosen ``<k_n>``. A text phase
  samples text until ``<eos>`` (forced after ``max_new`` tokens). Rows with different budgets, lengths or
  tasks coexist in one batch; finished rows leave the batch (their cache rows are dropped once a quarter
  of the batch has finished).
* ``generation_program`` / ``understanding_program``: build the prompt and the program of one sample from
  ``mm1d.sequence.build_document``, so the inference layout is by construction the training layout.
* ``sample``: the decode loop. Rows are laid out stream-major (``S`` CFG streams of ``B`` samples). The
  streams of a sample see the same sampled token. Guided logits are the per-sample linear combination
  ``sum_s w[b, s] * l_s`` on visual-code positions (``u + s (c - u)`` is ``w = [s, 1 - s]``); budget and
  text positions use the conditional stream. Each sample draws its uniforms from its own seeded generator
  before the loop (inverse-CDF sampling), so a sample gives the same tokens alone or in any batch. Rows
  with the same prompt (the candidates of reranking) are prefilled once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from mm1d.modality import Vocab
from mm1d.model.decode import DecodeState
from mm1d.model.transformer import Transformer, grouped_logsumexp, softmax_groups_of
from mm1d.sequence import MOD_IMAGE, MOD_VIDEO, SequenceSample, build_document

KIND_IMAGE, KIND_VIDEO, KIND_TEXT, KIND_BUDGET_IMAGE, KIND_BUDGET_VIDEO, KIND_FREE, KIND_TEXT_FIRST = range(7)
KIND_NAMES = ("image", "video", "text", "budget_image", "budget_video", "free", "text_first")
VISUAL_KINDS = (KIND_IMAGE, KIND_VIDEO)
BUDGET_KINDS = (KIND_BUDGET_IMAGE, KIND_BUDGET_VIDEO)


def slot(kind: int) -> int:
    """Encode a sampled slot of ``kind`` in a program (forced ids are >= 0, sampled slots < 0)."""
    return -kind - 1


# ----------------------------------------------------------------------------------------------------
# Parameters and masks
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """Temperature (0: greedy), top-k (0: off) and top-p (1: off), applied after the constraint mask."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0 or math.isnan(self.temperature):
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")


class ConstraintTable:
    """Additive masks ``(n_kinds, V)`` float32: 0 where a kind allows an id, ``-inf`` elsewhere.

    Args:
        vocab: the registry.
        text_pieces: ids the text tokenizer can produce (``[0, text_pieces)``); ``<eos>`` is also allowed.
        image_codes: FlexTok codebook size (codes ``[0, image_codes)`` of the image range).
        video_codes: VideoFlexTok codebook size.
        image_max_budget: largest budget token ``<k_n>`` allowed for images (the tokenizer's N).
        video_max_budget: the same for video time steps.
        device: where the masks live.
    """

    def __init__(
        self,
        vocab: Vocab,
        text_pieces: int | None = None,
        image_codes: int | None = None,
        video_codes: int | None = None,
        image_max_budget: int | None = None,
        video_max_budget: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        v = vocab.size
        allowed = torch.zeros(len(KIND_NAMES), v, dtype=torch.bool)
        img0 = vocab.image_offset
        vid0 = vocab.video_offset
        allowed[KIND_IMAGE, img0 : img0 + min(image_codes or vocab.image_codebook, vocab.image_codebook)] = True
        allowed[KIND_VIDEO, vid0 : vid0 + min(video_codes or vocab.video_codebook, vocab.video_codebook)] = True
        allowed[KIND_TEXT, : min(text_pieces or vocab.text_size, vocab.text_size)] = True
        allowed[KIND_TEXT_FIRST] = allowed[KIND_TEXT]  # the first caption token: text only (no empty caption)
        allowed[KIND_TEXT, vocab.special("<eos>")] = True
        k1 = vocab.budget_token(1)
        allowed[KIND_BUDGET_IMAGE, k1 : k1 + min(image_max_budget or vocab.max_budget, vocab.max_budget)] = True
        allowed[KIND_BUDGET_VIDEO, k1 : k1 + min(video_max_budget or vocab.max_budget, vocab.max_budget)] = True
        allowed[KIND_FREE] = True
        self.allowed = allowed.to(device)  # (n_kinds, V)
        self.masks = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf")).to(device)
        self.vocab = vocab

    def __call__(self, kinds: torch.Tensor) -> torch.Tensor:
        """``kinds`` long ``(B,)`` -> additive masks ``(B, V)``."""
        return self.masks.index_select(0, kinds)


# ----------------------------------------------------------------------------------------------------
# Per-row programs
# ----------------------------------------------------------------------------------------------------


class RowProgram:
    """The state machine of one sample after its prompt.

    Args:
        slots: forced ids (>= 0) and sampled slots (``slot(kind)``), in order.
        vocab: the registry (budget ids, ``<eos>``, ``<pad>``).
        expand: called with the chosen k when a budget slot has been sampled; returns the slots that
            follow the budget token (they replace the rest of ``slots``).
        text_max: after the slots, sample up to this many text tokens, then force ``<eos>`` (0: no text phase).
            Without forced text before it, the first text token cannot be ``<eos>`` (captions are never empty).
        max_len: an upper bound on the tokens this program emits (computed when None).
    """

    def __init__(
        self,
        slots: Sequence[int],
        vocab: Vocab,
        expand: Callable[[int], list[int]] | None = None,
        text_max: int = 0,
        max_len: int | None = None,
    ) -> None:
        self.slots = list(slots)
        self.vocab = vocab
        self.expand = expand
        self.text_max = text_max
        self.eos, self.pad = vocab.special("<eos>"), vocab.pad_id
        self.k1 = vocab.budget_token(1)
        self.pos = 0
        self.n_text = 0
        self.n_codes = 0  # sampled visual codes so far
        self.text_done = text_max == 0
        self.budget: int | None = None  # the k chosen at a budget slot
        self.out: list[int] = []
        if max_len is None:
            max_len = len(self.slots) + (text_max + 1 if text_max else 0)
        self.max_len = max_len

    @property
    def done(self) -> bool:
        return self.pos >= len(self.slots) and self.text_done

    def constraint(self) -> tuple[int, int]:
        """``(kind, forced_id)`` of the next position; ``forced_id`` is -1 when the position is sampled."""
        if self.pos < len(self.slots):
            s = self.slots[self.pos]
            return (KIND_FREE, s) if s >= 0 else (-s - 1, -1)
        if not self.text_done:
            if self.n_text >= self.text_max:
                return KIND_FREE, self.eos
            return (KIND_TEXT_FIRST if self.n_text == 0 and not self.slots else KIND_TEXT), -1
        return KIND_FREE, self.pad

    def advance(self, token: int) -> None:
        """Consume the token emitted at the current position."""
        if self.done:
            return
        self.out.append(token)
        if self.pos < len(self.slots):
            s = self.slots[self.pos]
            if s < 0:
                kind = -s - 1
                if kind in BUDGET_KINDS:
                    self.budget = token - self.k1 + 1
                    if self.expand is not None:
                        self.slots = self.slots[: self.pos + 1] + list(self.expand(self.budget))
                elif kind in VISUAL_KINDS:
                    self.n_codes += 1
            self.pos += 1
        elif token == self.eos:
            self.text_done = True
        else:
            self.n_text += 1


def _span_start(ids: np.ndarray, vocab: Vocab, opener: str) -> tuple[int, int]:
    """Index of the output span's opener and of its budget token in a built document."""
    open_id = vocab.special(opener)
    hits = np.flatnonzero(ids == open_id)
    if len(hits) == 0:
        raise ValueError(f"document has no {opener}")
    start = int(hits[0])
    lo, hi = vocab.budget_range()
    after = np.flatnonzero((ids[start:] >= lo) & (ids[start:] < hi))
    return start, start + int(after[0])


def generation_program(
    vocab: Vocab,
    make_sample: Callable[[int, bool], SequenceSample],
    budget: int | None,
    max_budget: int,
    given_steps: int = 0,
    streams: Sequence[Callable[[int, bool], SequenceSample]] = (),
) -> tuple[list[list[int]], RowProgram]:
    """Prompts and program of one generation sample (T2I, T2V, TI2V, continuation).

    Args:
        vocab: the registry.
        make_sample: ``(k, auto) -> SequenceSample`` of the full document with budget k (the codes to be
            generated may hold anything; the first ``given_steps`` video steps must hold the given ids).
        budget: tokens per image / per video step, or None for ``budget="auto"`` (the model samples
            ``<k_n>`` after ``<kauto>``, within ``[1, max_budget]``).
        max_budget: the largest budget allowed.
        given_steps: video steps at the start of the output span that are forced (their ids come from
            ``make_sample``): the first frame of text-image-to-video, or the clip of a continuation.
        streams: further ``make_sample`` functions for the CFG streams (e.g. without the caption); their
            prompts are returned after the conditional one. They must lay out the same output span.

    Returns:
        ``(prompts, program)``: one prompt (list of global ids, ending with the budget token or
        ``<kauto>``) per stream, conditional first, and the ``RowProgram`` of what follows.
    """
    auto = budget is None
    probe = build_document(make_sample(1 if auto else budget, auto), vocab)
    task = probe.task
    opener = "<boi>" if task == "t2i" else "<bov>"
    kind = KIND_IMAGE if task == "t2i" else KIND_VIDEO

    def prompt_of(fn: Callable[[int, bool], SequenceSample]) -> list[int]:
        doc = build_document(fn(1 if auto else budget, auto), vocab)
        _, b_idx = _span_start(doc.ids, vocab, opener)
        return doc.ids[: b_idx if auto else b_idx + 1].tolist()  # auto: ends with <kauto>

    def tail(k: int) -> list[int]:
        doc = build_document(make_sample(k, auto), vocab)
        _, b_idx = _span_start(doc.ids, vocab, opener)
        ids, mod = doc.ids[b_idx + 1 :], doc.modality[b_idx + 1 :]
        given = given_steps * (k + 1)  # video: k codes + <eot> per given step
        sampled = np.isin(mod, (MOD_IMAGE, MOD_VIDEO)) & (np.arange(len(ids)) >= given)
        return np.where(sampled, slot(kind), ids).tolist()

    prompts = [prompt_of(make_sample)] + [prompt_of(fn) for fn in streams]
    if auto:
        bkind = KIND_BUDGET_IMAGE if kind == KIND_IMAGE else KIND_BUDGET_VIDEO
        program = RowProgram([slot(bkind)], vocab, expand=tail, max_len=1 + len(tail(max_budget)))
    else:
        program = RowProgram(tail(budget), vocab)
    return prompts, program


def understanding_program(
    vocab: Vocab, sample: SequenceSample, max_new: int, text_prefix: Sequence[int] = ()
) -> tuple[list[int], RowProgram]:
    """Prompt and program of one captioning sample (I2T / V2T).

    Args:
        vocab: the registry.
        sample: an ``i2t``/``v2t`` sample whose caption is a stand-in (it is cut off).
        max_new: caption length limit (``<eos>`` is forced after it).
        text_prefix: local text ids the caption must start with (forced).

    Returns:
        ``(prompt, program)``: the prompt ends after the visual span.
    """
    if max_new < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new}")
    doc = build_document(sample, vocab)
    n_cap = len(sample.caption) if sample.caption is not None else 0
    prompt = doc.ids[: len(doc.ids) - n_cap - 1].tolist()  # drop the stand-in caption and <eos>
    prefix = [int(t) for t in text_prefix]
    if len(prefix) >= max_new:
        raise ValueError(f"the caption prefix has {len(prefix)} tokens, not below max_new_tokens={max_new}")
    return prompt, RowProgram(prefix, vocab, text_max=max_new - len(prefix))


# ----------------------------------------------------------------------------------------------------
# Sampling one step
# ----------------------------------------------------------------------------------------------------


def sample_logits(logits: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Draw one id per row by inverse-CDF sampling with the given uniforms.

    Args:
        logits: float32 ``(B, V)``, already masked (``-inf`` for disallowed ids).
        u: float ``(B,)`` uniforms in ``(0, 1]``, one per row (each row's own generator).
        params: temperature (0: argmax), top-k, top-p.

    Returns:
        long ``(B,)`` ids; never an id whose masked logit is ``-inf``.
    """
    if params.temperature == 0:
        return logits.argmax(-1)
    vals = logits / params.temperature if params.temperature != 1 else logits
    idx = None
    if 0 < params.top_k < vals.shape[-1]:
        vals, idx = vals.topk(params.top_k, dim=-1)  # (B, k), sorted descending
    elif params.top_p < 1:
        vals, idx = vals.sort(dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(vals, dim=-1)
    if params.top_p < 1:
        before = probs.cumsum(-1) - probs  # mass of the better-ranked ids
        probs = probs.masked_fill(before > params.top_p, 0.0)  # always keeps the first id
    cdf = probs.cumsum(-1)  # (B, n)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)  # (B, 1), in (0, total]
    j = torch.searchsorted(cdf, target).clamp_max(cdf.shape[1] - 1).squeeze(1)  # first cdf >= target
    return j if idx is None else idx.gather(1, j[:, None]).squeeze(1)


# ----------------------------------------------------------------------------------------------------
# The decode loop
# ----------------------------------------------------------------------------------------------------


class CausalLM(Protocol):
    """What ``sample`` needs of a model. An ``mm1d.model.Transformer`` runs through ``DecodeState``; any other
    model (e.g. a test double) through ``new_kv_cache`` and ``hidden_states``."""

    lm_head: torch.nn.Module

    def new_kv_cache(self, batch_size: int, max_len: int) -> object: ...

    def hidden_states(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None = ..., doc_ids: torch.Tensor | None = ...,
        kv_cache: object = ..., token_mask: torch.Tensor | None = ...,
    ) -> torch.Tensor: ...


@dataclass
class SampleOutput:
    """What ``sample`` returns.

    Attributes:
        prompts: ``[B][S]`` prompts as given (global ids).
        tokens: ``[B]`` emitted ids per sample (forced and sampled), the program's output.
        budgets: the budget chosen at a budget slot (``budget="auto"``), else None, per sample.
        logits: with ``return_logits``: per step, the conditional stream's raw logits ``(B, V)`` float32.
        logprobs: with ``return_logprobs``: per sample, ``sum_t log p(tokens[t] | prompt, tokens[:t])`` under
            the conditional stream's raw logits (no temperature, guidance or constraint), float32 ``(B,)``.
        steps: decode steps run.
    """

    prompts: list[list[list[int]]]
    tokens: list[list[int]]
    budgets: list[int | None]
    logits: list[torch.Tensor] = field(default_factory=list)
    logprobs: torch.Tensor | None = None
    steps: int = 0


def _cached_decoder(model: CausalLM, rows: int, max_len: int
                    ) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``(ids (R, T), token_mask) -> last hidden (R, D)`` through the model's own ``new_kv_cache`` /
    ``hidden_states`` (any ``CausalLM``; an mm1d ``Transformer`` uses the leaner ``DecodeState``)."""
    cache = model.new_kv_cache(rows, max_len)
    return lambda ids, mask: model.hidden_states(ids, kv_cache=cache, token_mask=mask)[:, -1]


def draw_uniforms(seeds: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    """``(B, max(lengths))`` uniforms in ``(0, 1]``; row b holds the first ``lengths[b]`` draws of its own
    generator seeded with ``seeds[b]`` (the rest is 1), so a row's draws do not depend on the batch."""
    n = max(max(lengths), 1)
    out = torch.ones(len(seeds), n)
    for b, (s, m) in enumerate(zip(seeds, lengths, strict=True)):
        if m:
            out[b, :m] = 1.0 - torch.rand(m, generator=torch.Generator().manual_seed(int(s)))
    return out


@torch.inference_mode()
def sample(
    model: CausalLM,
    prompts: Sequence[Sequence[Sequence[int]]],
    programs: Sequence[RowProgram],
    table: ConstraintTable,
    params: SamplingParams,
    seeds: Sequence[int],
    cfg_weights: torch.Tensor | None = None,
    pad_id: int = 0,
    max_seq_len: int | None = None,
    hook: Callable[[int, Sequence[RowProgram]], None] | None = None,
    return_logits: bool = False,
    return_logprobs: bool = False,
) -> SampleOutput:
    """Run the programs of ``B`` samples to completion, with ``S`` CFG streams each.

    Args:
        model: a causal LM with ``new_kv_cache``, ``hidden_states`` and ``lm_head``.
        prompts: ``[B][S]`` lists of global ids; stream 0 is the conditional one. Every sample has ``S``
            streams (repeat a prompt to pad a sample that has fewer).
        programs: one fresh ``RowProgram`` per sample (consumed).
        table: the constraint masks.
        params: temperature, top-k, top-p.
        seeds: one seed per sample.
        cfg_weights: float ``(B, S)``: guided logits are ``sum_s w[b, s] * l_s`` at visual-code positions.
            None: stream 0 only (requires ``S == 1``).
        pad_id: left-padding id of the prompts (never attended to).
        max_seq_len: the model's context; a clear error when prompt + program do not fit.
        hook: called after every step with ``(step, programs)`` (previews, streaming).
        return_logits: keep each step's raw conditional logits (for tests).
        return_logprobs: sum each sample's log-probability of what it emitted (forced tokens included) under
            the model's own distribution, as ``suffix_logprobs`` scores the finished document: caption
            reranking then needs no second pass over the candidates.

    Returns:
        A ``SampleOutput``.
    """
    B = len(programs)
    if B == 0 or len(prompts) != B or len(seeds) != B:
        raise ValueError(f"need one prompt list, program and seed per sample (got {len(prompts)}, {B}, {len(seeds)})")
    S = len(prompts[0])
    if any(len(p) != S for p in prompts):
        raise ValueError("every sample needs the same number of CFG streams")
    if cfg_weights is None and S != 1:
        raise ValueError(f"{S} streams per sample need cfg_weights")
    device = table.masks.device
    rows = [list(prompts[b][s]) for s in range(S) for b in range(B)]  # stream-major: r = s * B + b
    lp = max(len(r) for r in rows)
    if min(len(r) for r in rows) == 0:
        raise ValueError("empty prompt")
    steps = max(p.max_len for p in programs)
    total = lp + steps
    if max_seq_len is not None and total > max_seq_len:
        raise ValueError(
            f"prompt ({lp} tokens) + generation ({steps} tokens) = {total} exceeds the model's context "
            f"max_seq_len={max_seq_len}; use a smaller budget, fewer frames or a shorter prompt"
        )
    lean = isinstance(model, Transformer)
    # distinct prompt rows are prefilled once and fanned out (reranking repeats every prompt r + 1 times)
    distinct: dict[tuple[int, ...], int] = {}
    src = [distinct.setdefault(tuple(r), len(distinct)) for r in rows] if lean else list(range(len(rows)))
    firsts = list(distinct) if lean else [tuple(r) for r in rows]
    ids = torch.full((len(firsts), lp), pad_id, dtype=torch.long)
    mask = torch.zeros(len(firsts), lp, dtype=torch.bool)
    for r, p in enumerate(firsts):
        ids[r, lp - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[r, lp - len(p) :] = True
    ids, mask = ids.to(device), mask.to(device)
    w = None if cfg_weights is None else cfg_weights.to(device=device, dtype=torch.float32).t()[:, :, None]  # (S,B,1)
    u = draw_uniforms(seeds, [p.max_len for p in programs]).to(device)  # (B, steps)
    visual = torch.zeros(len(KIND_NAMES), dtype=torch.bool, device=device)
    visual[list(VISUAL_KINDS)] = True

    if lean:
        state = DecodeState(model, len(firsts), total)  # type: ignore[arg-type]
        step_fn = state.forward
    else:
        step_fn = _cached_decoder(model, S * B, total)
    hidden = step_fn(ids, None if bool(mask.all()) else mask)  # (distinct rows, D)
    if len(firsts) < S * B:
        fan = torch.tensor(src, device=device)
        state.select(fan)
        hidden = hidden.index_select(0, fan)
    logits = model.lm_head(hidden).float()  # (S*B, V)
    out = SampleOutput(prompts=[[list(x) for x in p] for p in prompts], tokens=[], budgets=[])
    total_lp = torch.zeros(B, dtype=torch.float32)
    alive = list(range(B))  # the samples whose rows are in the decode state, in order
    step = 0
    for step in range(steps):  # noqa: B007
        live = [programs[b] for b in alive]
        n = len(alive)
        cons = [p.constraint() for p in live]
        forced = torch.tensor([c[1] for c in cons], dtype=torch.long)  # (n,)
        if return_logits:
            out.logits.append(logits[:B].detach().cpu().clone())
        if bool((forced < 0).any()):
            kinds = torch.tensor([c[0] for c in cons], dtype=torch.long, device=device)  # (n,)
            at = torch.tensor(alive, device=device)
            cond = logits[:n]
            if S > 1:
                guided = (logits.view(S, n, -1) * w[:, at]).sum(0)  # (n, V)
                cond = torch.where(visual[kinds][:, None], guided, cond)
            drawn = sample_logits(cond + table(kinds), u[at, step], params).cpu()
            tok = torch.where(forced >= 0, forced, drawn)
        else:
            tok = forced
        if return_logprobs:  # rows whose program already finished emit nothing
            t = tok.to(device)
            lse = grouped_logsumexp(logits[:n], t, softmax_groups_of(model, logits.shape[1]))
            lp = logits[:n].gather(1, t[:, None])[:, 0] - lse
            emitting = torch.tensor([not p.done for p in live])
            total_lp.index_add_(0, torch.tensor(alive), torch.where(emitting, lp.cpu(), 0.0))
        for p, t in zip(live, tok.tolist(), strict=True):
            p.advance(t)
        if hook is not None:
            hook(step, programs)
        if all(p.done for p in live):
            break
        keep = [j for j, p in enumerate(live) if not p.done]
        if lean and not return_logits and len(keep) <= 0.75 * n:  # drop finished rows (a copy of the cache)
            state.select(torch.tensor([s * n + j for s in range(S) for j in keep], device=device))
            alive, tok = [alive[j] for j in keep], tok[keep]
        feed = tok.to(device).repeat(S)[:, None]  # (S*n, 1)
        logits = model.lm_head(step_fn(feed, None)).float()  # (S*n, V)
    out.tokens = [list(p.out) for p in programs]
    out.budgets = [p.budget for p in programs]
    out.logprobs = total_lp if return_logprobs else None
    out.steps = step + 1
    return out


def cfg_weights_2(scale: float, batch: int) -> torch.Tensor:
    """``(B, 2)`` weights of ``u + s (c - u)`` for streams ``[conditional, unconditional]``."""
    return torch.tensor([[scale, 1.0 - scale]] * batch, dtype=torch.float32)


def cfg_weights_3(text_scale: float, image_scale: float, batch: int) -> torch.Tensor:
    """``(B, 3)`` weights of joint image-text guidance for streams ``[full, no text, no text no image]``:
    ``l_none + s_img (l_img - l_none) + s_txt (l_full - l_img)``."""
    return torch.tensor([[text_scale, image_scale - text_scale, 1.0 - image_scale]] * batch, dtype=torch.float32)
