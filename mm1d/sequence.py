"""One interleaved token sequence per sample: formats, budgets, parsing, and the per-token loss roles.

Every document starts with ``<bos>`` and ends with ``<eos>``; the order of spans says the task::

    T2I  : <bos> caption <boi> [<kauto>] <k_k> i_1 .. i_k <eoi> <eos>
    I2T  : <bos> <boi> [<kauto>] <k_k> i_1 .. i_k <eoi> caption <eos>
    T2V  : <bos> caption <bov> <nt_T> [<kauto>] <k_k> (v_t,1 .. v_t,k <eot>) x T <eov> <eos>
    V2T  : <bos> <bov> <nt_T> [<kauto>] <k_k> (v_t,1 .. v_t,k <eot>) x T <eov> caption <eos>
    TI2V : <bos> caption <bocf> COND <eocf> <bov> <nt_T> [<kauto>] <k_k> (... <eot>) x T <eov> <eos>
           COND = <k_c> c_1 .. c_c   (FlexTok image codes of the first frame)
                | <nocond>           (image condition dropped)
    text : <bos> text <eos>

* The budget token ``<k_k>`` comes right before each visual payload, so the span length is known before
  the first code. For video, k is the number of codes per latent time step, ``<nt_T>`` the number of
  time steps, and ``<eot>`` closes each time step (time-major order, coarse to fine inside a step).
* ``<kauto>`` before the budget token marks an adaptive budget (the smallest k whose reconstruction
  passed the quality threshold during pretokenization); ``budget="auto"`` at inference lets the model
  sample the budget token after it.
* Classifier-free guidance. A dropped caption is simply absent (``<bos> <boi> <k_k> ...``): the
  unconditional stream keeps ``<boi>``/``<bov>`` and the budget token. Text-image-to-video (STIV style)
  drops the caption and the first-frame condition independently, so the three streams of joint image-text
  guidance are all trained: ``(caption, image)``, ``(no caption, image)`` and ``(no caption, <nocond>)``
  (and ``(caption, <nocond>)``, which equals a T2V prompt with an explicit empty condition).
  The conditioning frame is an ordinary FlexTok image (image code range), so a user's image tokenized by
  FlexTok conditions video generation directly; the generated video still starts at frame 0.
* Disambiguation: an I2T/V2T caption and a ``text`` document are never empty, so ``<eoi> <eos>`` always
  means a generation sample with its caption dropped.

A stored sample keeps all N tokens per image (``[T, N]`` for video); the budget is applied at load time by
truncation (FlexTok prefixes are nested): the span of budget k holds exactly the first k stored ids, per
time step for video.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mm1d.config import BudgetConfig, LossConfig, SequenceConfig
from mm1d.modality import Vocab

TASKS = ("t2i", "i2t", "t2v", "v2t", "ti2v", "text")
GENERATION_TASKS = ("t2i", "t2v", "ti2v")
UNDERSTANDING_TASKS = ("i2t", "v2t")
IMAGE_TASKS = ("t2i", "i2t")
VIDEO_TASKS = ("t2v", "v2t", "ti2v")

# Modality ids of predicted tokens (``PackedBatch.modality``) and the ignore value of targets.
MOD_TEXT, MOD_IMAGE, MOD_VIDEO, MOD_IGNORE = 0, 1, 2, -1
IGNORE_INDEX = -100


class UnknownTaskError(ValueError):
    """A task name that is not one of ``TASKS``."""


class SequenceFormatError(ValueError):
    """A token sequence that does not follow the formats of ``mm1d.sequence``."""


@functools.lru_cache(maxsize=32)
def _special_ids(vocab: Vocab) -> dict[str, int]:
    """Name -> global id of every special token (``Vocab.special`` rebuilds its name list per call)."""
    return {name: vocab.special_offset + i for i, name in enumerate(vocab.special_names)}


@functools.lru_cache(maxsize=32)
def _ranges(vocab: Vocab) -> dict[str, tuple[int, int]]:
    return {m: vocab.range(m) for m in ("text", "image", "video")}


def _sp(vocab: Vocab, name: str) -> int:
    return _special_ids(vocab)[name]


def _budget_id(vocab: Vocab, k: int) -> int:
    if not 1 <= k <= vocab.max_budget:
        vocab.budget_token(k)  # raises the registry's error for a budget outside [1, max_budget]
    return _special_ids(vocab)["<k_1>"] + k - 1


def _length_id(vocab: Vocab, t: int) -> int:
    if not 1 <= t <= vocab.max_time_steps:
        vocab.length_token(t)  # raises the registry's error for a length outside [1, max_time_steps]
    return _special_ids(vocab)["<nt_1>"] + t - 1


def check_task(task: str) -> str:
    """Return ``task`` if known, else raise ``UnknownTaskError`` listing the valid names."""
    if task not in TASKS:
        raise UnknownTaskError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    return task


# ----------------------------------------------------------------------------------------------------
# Samples: stored (full length) and chosen (budget applied)
# ----------------------------------------------------------------------------------------------------


@dataclass
class StoredSample:
    """One pretokenized sample with full-length local ids (as in a shard).

    Attributes:
        text: (n,) local text ids of the caption (or of a text-only document); None when absent.
        image: (N,) local FlexTok ids; None when absent.
        video: (T, N) local VideoFlexTok ids; None when absent.
        cond: (N,) local FlexTok ids of the video's first frame (for TI2V); None when absent.
        auto_image: adaptive budget of the image (0: not computed).
        auto_video: adaptive per-step budget of the video (0: not computed).
        key: the sample's key in its source.
    """

    text: np.ndarray | None = None
    image: np.ndarray | None = None
    video: np.ndarray | None = None
    cond: np.ndarray | None = None
    auto_image: int = 0
    auto_video: int = 0
    key: str = ""

    def tasks(self) -> tuple[str, ...]:
        """Tasks this sample can serve."""
        has_text = self.text is not None and len(self.text) > 0
        out = []
        if has_text and self.image is not None:
            out += ["t2i", "i2t"]
        if has_text and self.video is not None:
            out += ["t2v", "v2t"]
            if self.cond is not None:
                out.append("ti2v")
        if has_text:
            out.append("text")
        return tuple(out)


def _eq(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(eq=False)
class SequenceSample:
    """The content of one document, budget already applied (local ids). ``build_document`` input,
    ``parse_document`` output.

    Attributes:
        task: one of ``TASKS``.
        caption: (n,) local text ids; None when dropped (generation tasks only). The text of ``text`` docs.
        codes: image (k,) or video (T, k) local ids; None for ``text``. The budget is ``codes.shape[-1]``.
        auto: the visual span's budget is adaptive (``<kauto>``).
        cond: TI2V only: (c,) local FlexTok ids of the first frame; None when dropped (``<nocond>``).
    """

    task: str
    caption: np.ndarray | None
    codes: np.ndarray | None = None
    auto: bool = False
    cond: np.ndarray | None = None

    @property
    def budget(self) -> int | None:
        return None if self.codes is None else int(self.codes.shape[-1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SequenceSample):
            return NotImplemented
        return (self.task == other.task and self.auto == other.auto and _eq(self.caption, other.caption)
                and _eq(self.codes, other.codes) and _eq(self.cond, other.cond))


# ----------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------


@dataclass
class Document:
    """One built document.

    Attributes:
        ids: (n,) int64 global ids, ``<bos>`` ... ``<eos>``.
        modality: (n,) int8 modality of each token: 0 text/special, 1 image, 2 video.
        prompt: (n,) bool, the conditioning part: the caption (and first-frame condition) of generation
            tasks, the visual span of understanding tasks. Its loss can be switched off (``LossConfig``).
        task: the task name.
        inputs: (n,) int64 ids the model *reads* when they differ from ``ids`` (caption input noise,
            ``mm1d.data.caption_noise``); None: it reads ``ids``. Targets always come from ``ids``.
    """

    ids: np.ndarray
    modality: np.ndarray
    prompt: np.ndarray
    task: str
    inputs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _local(vocab: Vocab, modality: str, x: np.ndarray, what: str) -> np.ndarray:
    """Check local ids of ``modality`` and return them as global int64 ids."""
    start, end = _ranges(vocab)[modality]
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer ids, got dtype {x.dtype}")
    if x.size:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= end - start:
            bad = hi if hi >= end - start else lo
            kind = "overflows the text range" if modality == "text" else "is outside the code range"
            raise ValueError(f"{what}: {modality} id {bad} {kind} [0, {end - start})")
    return x.astype(np.int64) + start


class _Builder:
    """Accumulates (ids, modality, prompt) pieces and concatenates them once."""

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.mod: list[int | np.ndarray] = []  # a scalar per piece, or per-token modality ids
        self.prompt: list[bool] = []
        self.lens: list[int] = []

    def add(self, ids: np.ndarray | list[int], modality: int, prompt: bool) -> None:
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        self.ids.append(arr)
        self.mod.append(modality)
        self.prompt.append(prompt)
        self.lens.append(len(arr))

    def finish(self, task: str) -> Document:
        lens = np.asarray(self.lens)
        mods = [np.full(n, m, dtype=np.int8) if np.isscalar(m) else m for m, n in zip(self.mod, lens, strict=True)]
        return Document(
            ids=np.concatenate(self.ids),
            modality=np.concatenate(mods),
            prompt=np.repeat(np.asarray(self.prompt, dtype=bool), lens),
            task=task,
        )


def _image_span(b: _Builder, vocab: Vocab, codes: np.ndarray, auto: bool, prompt: bool) -> None:
    if codes.ndim != 1:
        raise ValueError(f"image codes must have shape (k,), got {codes.shape}")
    k = int(codes.shape[0])
    head = [_sp(vocab, "<boi>")] + ([_sp(vocab, "<kauto>")] if auto else []) + [_budget_id(vocab, k)]
    b.add(head, MOD_TEXT, prompt)
    b.add(_local(vocab, "image", codes, "image codes"), MOD_IMAGE, prompt)
    b.add([_sp(vocab, "<eoi>")], MOD_TEXT, prompt)


def _video_span(b: _Builder, vocab: Vocab, codes: np.ndarray, auto: bool, prompt: bool) -> None:
    if codes.ndim != 2:
        raise ValueError(f"video codes must have shape (T, k), got {codes.shape}")
    t, k = (int(s) for s in codes.shape)
    head = [_sp(vocab, "<bov>"), _length_id(vocab, t)]
    head += ([_sp(vocab, "<kauto>")] if auto else []) + [_budget_id(vocab, k)]
    b.add(head, MOD_TEXT, prompt)
    body = np.empty((t, k + 1), dtype=np.int64)  # (T, k codes + <eot>)
    body[:, :k] = _local(vocab, "video", codes, "video codes")
    body[:, k] = _sp(vocab, "<eot>")
    mod = np.full((t, k + 1), MOD_VIDEO, dtype=np.int8)
    mod[:, k] = MOD_TEXT
    b.add(body.reshape(-1), MOD_VIDEO, prompt)  # (T * (k + 1),)
    b.mod[-1] = mod.reshape(-1)  # <eot> counts as a special token
    b.add([_sp(vocab, "<eov>")], MOD_TEXT, prompt)


def build_document(sample: SequenceSample, vocab: Vocab) -> Document:
    """Lay out one sample as a document in the formats of this module.

    Args:
        sample: task, caption (local text ids), codes (image (k,) / video (T, k) local ids), flags.
        vocab: the vocabulary registry.

    Returns:
        The ``Document`` (global int64 ids, per-token modality and prompt flags).

    Raises:
        UnknownTaskError: for an unknown task.
        ValueError: budget outside ``[1, max_budget]``, video length outside ``[1, max_time_steps]``,
            ids outside their range (e.g. text ids overflowing the text range), missing or extra spans.
    """
    task = check_task(sample.task)
    cap = sample.caption
    if cap is not None and np.asarray(cap).ndim != 1:
        raise ValueError(f"caption ids must have shape (n,), got {np.asarray(cap).shape}")
    if task in GENERATION_TASKS:
        if cap is not None and len(cap) == 0:
            raise ValueError(f"{task}: an empty caption is ambiguous; pass caption=None for a dropped caption")
    elif cap is None or len(cap) == 0:
        raise ValueError(f"{task}: needs a non-empty caption")
    if task == "text":
        if sample.codes is not None or sample.cond is not None or sample.auto:
            raise ValueError("text documents carry no visual span")
    elif sample.codes is None:
        raise ValueError(f"{task}: needs codes")
    if sample.cond is not None and task != "ti2v":
        raise ValueError(f"{task}: only ti2v carries a first-frame condition")
    codes = None if sample.codes is None else np.asarray(sample.codes)

    b = _Builder()
    b.add([_sp(vocab, "<bos>")], MOD_TEXT, False)
    gen = task in GENERATION_TASKS
    if gen and cap is not None:
        b.add(_local(vocab, "text", cap, "caption"), MOD_TEXT, True)
    if task == "ti2v":
        b.add([_sp(vocab, "<bocf>")], MOD_TEXT, True)
        if sample.cond is None:
            b.add([_sp(vocab, "<nocond>")], MOD_TEXT, True)
        else:
            cond = np.asarray(sample.cond)
            if cond.ndim != 1:
                raise ValueError(f"condition codes must have shape (c,), got {cond.shape}")
            b.add([_budget_id(vocab, int(cond.shape[0]))], MOD_TEXT, True)
            b.add(_local(vocab, "image", cond, "condition codes"), MOD_IMAGE, True)
        b.add([_sp(vocab, "<eocf>")], MOD_TEXT, True)
    if task in IMAGE_TASKS:
        _image_span(b, vocab, codes, sample.auto, prompt=not gen)
    elif task in VIDEO_TASKS:
        _video_span(b, vocab, codes, sample.auto, prompt=not gen)
    if not gen:
        b.add(_local(vocab, "text", cap, "caption" if task != "text" else "text"), MOD_TEXT, False)
    b.add([_sp(vocab, "<eos>")], MOD_TEXT, False)
    return b.finish(task)


# ----------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, ids: np.ndarray, vocab: Vocab) -> None:
        self.ids, self.vocab, self.pos = ids, vocab, 0

    def peek(self) -> int:
        if self.pos >= len(self.ids):
            raise SequenceFormatError(f"sequence ends early at position {self.pos}")
        return int(self.ids[self.pos])

    def next(self) -> int:
        v = self.peek()
        self.pos += 1
        return v

    def is_special(self, name: str) -> bool:
        return self.pos < len(self.ids) and int(self.ids[self.pos]) == _sp(self.vocab, name)

    def expect(self, name: str) -> None:
        got = self.next()
        if got != _sp(self.vocab, name):
            raise SequenceFormatError(f"expected {name} at position {self.pos - 1}, got {self._name(got)}")

    def _name(self, gid: int) -> str:
        try:
            return self.vocab.name_of(gid)
        except ValueError:
            return f"id {gid} ({self.vocab.modality_of(gid) if 0 <= gid < self.vocab.size else 'out of vocab'})"

    def budget(self) -> tuple[bool, int]:
        auto = self.is_special("<kauto>")
        if auto:
            self.pos += 1
        gid = self.next()
        try:
            return auto, self.vocab.budget_of(gid)
        except ValueError:
            raise SequenceFormatError(f"expected a budget token at position {self.pos - 1}, "
                                      f"got {self._name(gid)}") from None

    def payload(self, modality: str, n: int) -> np.ndarray:
        seg = self.ids[self.pos : self.pos + n]
        start, end = _ranges(self.vocab)[modality]
        if len(seg) < n:
            raise SequenceFormatError(f"{modality} span at position {self.pos} is shorter than its budget {n}")
        if n and (int(seg.min()) < start or int(seg.max()) >= end):
            raise SequenceFormatError(f"{modality} span at position {self.pos} holds ids outside [{start}, {end})")
        self.pos += n
        return seg - start

    def text(self) -> np.ndarray:
        start = self.pos
        while self.pos < len(self.ids) and int(self.ids[self.pos]) < self.vocab.text_size:
            self.pos += 1
        return self.ids[start : self.pos].copy()

    def image(self) -> tuple[bool, np.ndarray]:
        self.expect("<boi>")
        auto, k = self.budget()
        codes = self.payload("image", k)
        self.expect("<eoi>")
        return auto, codes

    def video(self) -> tuple[bool, np.ndarray]:
        self.expect("<bov>")
        gid = self.next()
        try:
            t = self.vocab.length_of(gid)
        except ValueError:
            raise SequenceFormatError(f"expected a video length token after <bov>, got {self._name(gid)}") from None
        auto, k = self.budget()
        out = np.empty((t, k), dtype=np.int64)  # (T, k)
        for i in range(t):
            out[i] = self.payload("video", k)
            self.expect("<eot>")
        self.expect("<eov>")
        return auto, out


def parse_document(ids: np.ndarray | torch.Tensor | Sequence[int], vocab: Vocab) -> SequenceSample:
    """Inverse of ``build_document``: a document's global ids -> its ``SequenceSample`` (local ids).

    Args:
        ids: (n,) global ids from ``<bos>`` to ``<eos>`` (trailing ``<pad>`` ids are ignored).
        vocab: the vocabulary registry.

    Raises:
        SequenceFormatError: when the ids do not follow one of the formats.
    """
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    arr = arr.astype(np.int64).reshape(-1)
    pad = vocab.pad_id
    end = len(arr)
    while end and arr[end - 1] == pad:
        end -= 1
    r = _Reader(arr[:end], vocab)
    r.expect("<bos>")
    if r.is_special("<boi>") or r.is_special("<bov>"):  # understanding: visual span first
        task = "i2t" if r.is_special("<boi>") else "v2t"
        auto, codes = r.image() if task == "i2t" else r.video()
        caption = r.text()
        if len(caption) == 0:  # a generation sample whose caption was dropped
            task = "t2i" if task == "i2t" else "t2v"
            caption = None
        sample = SequenceSample(task, caption, codes, auto)
    else:
        caption = r.text()
        cap = caption if len(caption) else None
        if r.is_special("<boi>"):
            auto, codes = r.image()
            sample = SequenceSample("t2i", cap, codes, auto)
        elif r.is_special("<bocf>"):
            r.expect("<bocf>")
            cond = None
            if r.is_special("<nocond>"):
                r.pos += 1
            else:
                cond_auto, c = r.budget()
                if cond_auto:
                    raise SequenceFormatError("the first-frame condition cannot carry <kauto>")
                cond = r.payload("image", c)
            r.expect("<eocf>")
            auto, codes = r.video()
            sample = SequenceSample("ti2v", cap, codes, auto, cond)
        elif r.is_special("<bov>"):
            auto, codes = r.video()
            sample = SequenceSample("t2v", cap, codes, auto)
        else:
            if cap is None:
                raise SequenceFormatError("empty document: <bos> must be followed by text or a span")
            sample = SequenceSample("text", cap)
    r.expect("<eos>")
    if r.pos != len(r.ids):
        raise SequenceFormatError(f"tokens after <eos> at position {r.pos}")
    return sample


def split_documents(ids: np.ndarray | torch.Tensor, doc_ids: np.ndarray | torch.Tensor) -> list[np.ndarray]:
    """Cut a packed row back into its documents (padding, doc id -1, dropped).

    Args:
        ids: (L,) global ids of one row.
        doc_ids: (L,) document id of each token (-1 for padding).
    """
    ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    doc_ids = doc_ids.cpu().numpy() if isinstance(doc_ids, torch.Tensor) else np.asarray(doc_ids)
    return [ids[doc_ids == d] for d in np.unique(doc_ids) if d >= 0]


# ----------------------------------------------------------------------------------------------------
# Budgets and per-sample choices
# ----------------------------------------------------------------------------------------------------


def budget_bounds(cfg: BudgetConfig, n: int, max_budget: int, min_k: int = 0) -> tuple[int, int]:
    """Validated ``[lo, hi]`` range of k for ``n`` stored tokens.

    Raises:
        ValueError: a configured budget above N (stored tokens) or above the vocabulary's max budget.
    """
    if n < 1:
        raise ValueError(f"no stored tokens to draw a budget from (N={n})")
    hi = cfg.max_k or min(n, max_budget)
    for v in [hi, *cfg.values]:
        if v > n:
            raise ValueError(f"budget {v} is above N={n}, the number of stored tokens per image/time step")
        if v > max_budget:
            raise ValueError(f"budget {v} is above the vocabulary's max_budget={max_budget} (<k_1>..<k_N>)")
        if v < 1:
            raise ValueError(f"budget {v} must be at least 1")
    if cfg.mode == "fixed" and not cfg.values:
        raise ValueError("budget mode 'fixed' needs a non-empty list of values")
    lo = min(max(cfg.min_k, min_k, 1), hi)
    return lo, hi


def sample_budget(rng: np.random.Generator, cfg: BudgetConfig, n: int, max_budget: int, min_k: int = 0) -> int:
    """Draw a budget k for one span.

    Args:
        rng: numpy generator.
        cfg: the distribution (pow2, uniform, uniform_pow2, fixed).
        n: stored tokens per image (per time step for video).
        max_budget: the vocabulary's largest budget token.
        min_k: extra lower bound (understanding tasks' bias toward large k); clipped to the upper bound.

    Returns:
        k in ``[1, min(n, max_budget)]``. A pow2 range that holds no power of two falls back to uniform;
        a fixed list with no value >= the lower bound falls back to its largest value.
    """
    lo, hi = budget_bounds(cfg, n, max_budget, min_k)
    mode = cfg.mode
    if mode == "fixed":
        vals = [v for v in cfg.values if v >= lo] or [max(cfg.values)]
        return int(vals[rng.integers(len(vals))])
    if mode == "uniform_pow2":
        mode = "pow2" if rng.random() < 0.5 else "uniform"
    if mode == "pow2":
        pows = [1 << i for i in range(hi.bit_length()) if lo <= (1 << i) <= hi]
        if pows:
            return pows[rng.integers(len(pows))]
    return int(rng.integers(lo, hi + 1))


def choose_sample(
    stored: StoredSample, task: str, cfg: SequenceConfig, vocab: Vocab, rng: np.random.Generator
) -> SequenceSample:
    """Turn a stored full-length sample into one training document's content: budget (random or
    adaptive), truncation, video length, caption / condition dropout.

    Args:
        stored: full-length local ids.
        task: one of ``stored.tasks()``.
        cfg: sequence choices.
        vocab: the registry (max budget, max time steps).
        rng: numpy generator; the only source of randomness.

    Videos longer than the vocabulary's ``max_time_steps`` keep their first ``max_time_steps`` steps (a
    valid shorter video: the video tokenizer is causal in time).
    """
    check_task(task)
    if task not in stored.tasks():
        raise ValueError(f"sample {stored.key!r} cannot serve task {task!r} (it serves {list(stored.tasks())})")
    caption = stored.text
    if task == "text":
        return SequenceSample("text", caption)
    gen = task in GENERATION_TASKS
    min_k = 0 if gen else cfg.understanding_min_k
    if task in IMAGE_TASKS:
        assert stored.image is not None
        n, auto_k, bcfg = int(stored.image.shape[0]), stored.auto_image, cfg.image_budget
    else:
        assert stored.video is not None
        n, auto_k, bcfg = int(stored.video.shape[1]), stored.auto_video, cfg.video_budget
    auto = gen and 0 < auto_k <= min(n, vocab.max_budget) and rng.random() < cfg.auto_prob
    k = auto_k if auto else sample_budget(rng, bcfg, n, vocab.max_budget, min_k)
    if task in IMAGE_TASKS:
        codes = stored.image[:k]
    else:
        t_all = min(int(stored.video.shape[0]), vocab.max_time_steps)
        t = t_all
        if cfg.video_time == "random":
            t = int(rng.integers(min(max(cfg.min_time_steps, 1), t_all), t_all + 1))
        codes = stored.video[:t, :k]  # (t, k)
    cond = None
    if task == "ti2v":
        assert stored.cond is not None
        c = cfg.cond_k or min(int(stored.cond.shape[0]), vocab.max_budget)
        if c > stored.cond.shape[0]:
            raise ValueError(f"sequence.cond_k={c} is above N={stored.cond.shape[0]} stored condition tokens")
        drop_text = rng.random() < cfg.ti2v_text_dropout
        drop_image = rng.random() < cfg.ti2v_image_dropout
        caption = None if drop_text else caption
        cond = None if drop_image else stored.cond[:c]
    elif gen and rng.random() < cfg.caption_dropout:
        caption = None
    return SequenceSample(task, caption, codes, bool(auto), cond)


def target_loss_mask(doc: Document, loss: LossConfig) -> np.ndarray:
    """(n,) bool: which tokens of ``doc`` are *predicted with loss* when they are targets.

    Every token except the prompt when the config switches the prompt's loss off. (``<bos>`` is never a
    target because targets are next tokens within a document.)
    """
    if doc.task in GENERATION_TASKS and not loss.caption_loss_in_generation:
        return ~doc.prompt
    if doc.task in UNDERSTANDING_TASKS and not loss.visual_loss_in_understanding:
        return ~doc.prompt
    return np.ones(len(doc.ids), dtype=bool)
