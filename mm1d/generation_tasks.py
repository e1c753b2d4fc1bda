"""The tasks behind ``Pipeline.generate``: text-to-image, text(-image)-to-video with rollouts, captioning.

Each task turns user arguments into one prompt per CFG stream and one ``RowProgram`` per sample (through
``mm1d.sampling.generation_program`` / ``understanding_program``, i.e. through ``mm1d.sequence``), runs
``mm1d.sampling.sample``, parses every finished document back with ``parse_document`` and decodes the
codes with the tokenizers. See ``mm1d.inference`` for the public API and its semantics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mm1d.config import SamplerPreset
from mm1d.inference import (
    Budget,
    GenerationResult,
    Pipeline,
    Preview,
    _budgets,
    _prompts,
    _seeds,
    load_image,
    load_video,
    psnr01,
    to_pil,
)
from mm1d.sampling import (
    RowProgram,
    SamplingParams,
    cfg_weights_2,
    cfg_weights_3,
    generation_program,
    understanding_program,
)
from mm1d.scoring import refine_captions, rerank_scores
from mm1d.sequence import SequenceSample, parse_document
from mm1d.tokenization.video_latents import check_num_frames, num_frames_for_steps, num_steps_for_frames


def _timer() -> Callable[[], float]:
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def _emit(ev: Preview, out: list[Preview], callback: Callable[[Preview], None] | None) -> None:
    out.append(ev)
    if callback is not None:
        callback(ev)


def _parse(pipe: Pipeline, prompt: list[int], tokens: list[int]) -> SequenceSample:
    return parse_document(np.asarray(prompt + tokens, dtype=np.int64), pipe.vocab)


def _check_rerank(rerank: Any) -> None:
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise ValueError(f"rerank must be a non-negative integer (candidates to draw), got {rerank!r}")


def candidate_seeds(seeds: Sequence[int], rerank: int) -> list[int]:
    """Seeds of the ``1 + rerank`` candidates of each sample, sample by sample: the sample's own seed, then
    ``seed * (rerank + 1) + j`` for ``j = 1..rerank`` (distinct across samples for non-negative seeds)."""
    return [s if j == 0 else s * (rerank + 1) + j for s in seeds for j in range(rerank + 1)]


def best_of_visual(
    pipe: Pipeline, modality: str, captions: list[str | None], num_samples: int, seed: Any, budget: Any,
    rerank: int, previews: list[int], draw: Callable[[int, list[int], Any], GenerationResult],
) -> GenerationResult:
    """Each sample is the best of ``1 + rerank`` candidates by the model's own captioning direction.

    Every candidate is decoded, tokenized again with all N tokens (which puts a generated span back on the
    tokenizer's own code distribution, the one the captioning direction was trained on) and scored by
    ``log p(caption | re-encoded candidate)`` (``mm1d.scoring.rerank_scores`` with weight 0).

    Args:
        pipe: the pipeline.
        modality: ``"image"`` or ``"video"``.
        captions: the G prompt captions (None is refused: there is nothing to verify against).
        num_samples: samples per prompt.
        seed: the ``generate`` seed argument.
        budget: the ``generate`` budget argument (a per-sample list is repeated for each candidate).
        rerank: extra candidates per sample (> 0).
        previews: must be empty (every candidate would preview); a ``callback`` in ``draw`` sees every
            candidate's finished video chunks.
        draw: ``draw(num_samples', seeds, budget)`` runs the task for ``num_samples'`` samples per prompt.

    Returns:
        the chosen samples, with ``metadata`` ``rerank``, ``rerank_scores`` and ``candidate_seeds``; its
        ``seeds`` are the chosen candidates' (each regenerates alone with ``num_samples=1``).
    """
    _check_rerank(rerank)
    if previews:
        raise ValueError("preview_every cannot be combined with rerank (every candidate would be previewed)")
    if any(c is None for c in captions):
        raise ValueError(f"rerank of {modality} samples needs a text prompt: the candidates are scored by how "
                         "well the model captions them with it")
    G, r1 = len(captions), rerank + 1
    B = G * num_samples
    seeds = _seeds(seed, B)
    cands = candidate_seeds(seeds, rerank)
    if isinstance(budget, (list, tuple)) and len(budget) == B and B != G:  # per sample -> per candidate
        budget = [k for k in budget for _ in range(r1)]
    res = draw(num_samples * r1, cands, budget)
    tok, vocab = pipe._need(modality), pipe.vocab
    size = tok.cfg.image_size
    if modality == "image":
        pixels = torch.stack([load_image(im, size) for im in res.images]).to(pipe.device)
        codes = [c.numpy() for c in tok.tokenize(pixels).cpu()]
    else:  # candidates share one length; the captioning direction reads at most max_time_steps time steps
        clips = torch.stack([load_video(v, size) for v in res.videos]).to(pipe.device)  # (B r1, 3, F, S, S)
        codes = [c[: vocab.max_time_steps].numpy() for c in tok.tokenize(clips).cpu()]
    caps = [pipe._caption_ids(c) for c in captions for _ in range(num_samples * r1)]
    task = "i2t" if modality == "image" else "v2t"
    scores = rerank_scores(pipe.model, vocab, task, codes, caps, 0.0).view(B, r1)
    best = scores.argmax(dim=1)
    rows = [b * r1 + int(best[b]) for b in range(B)]

    def pick(xs: list[Any]) -> list[Any]:
        return [xs[r] for r in rows] if len(xs) == B * r1 else xs

    meta = {k: pick(v) if isinstance(v, list) else v for k, v in res.metadata.items()}
    meta.update(rerank=rerank, rerank_scores=scores.max(dim=1).values.tolist(), candidate_seeds=cands)
    return GenerationResult(images=pick(res.images), videos=pick(res.videos), tokens=pick(res.tokens),
                            budgets=pick(res.budgets), previews=[], metadata=meta)


# ----------------------------------------------------------------------------------------------------
# Text to image
# ----------------------------------------------------------------------------------------------------


def text_to_image(
    pipe: Pipeline, prompt: Any, budget: Any, cfg_scale: float, *, num_samples: int, seed: Any,
    params: SamplingParams, preset: SamplerPreset, decoder_steps: int | None, previews: list[int],
    callback: Callable[[Preview], None] | None, rerank: int = 0,
) -> GenerationResult:
    """T2I for every prompt x ``num_samples``; CFG streams ``[caption, no caption]``. ``rerank > 0``: each
    sample is the best of ``1 + rerank`` candidates (``best_of_visual``)."""
    img, vocab = pipe._need("image"), pipe.vocab
    n = pipe.max_budget["image"]
    groups = _prompts(prompt, 1)
    if rerank:
        return best_of_visual(
            pipe, "image", groups, num_samples, seed, budget, rerank, previews,
            lambda ns, sd, bd: text_to_image(pipe, prompt, bd, cfg_scale, num_samples=ns, seed=sd, params=params,
                                             preset=preset, decoder_steps=decoder_steps, previews=[],
                                             callback=callback))
    B = len(groups) * num_samples
    budgets = _budgets(budget, len(groups), num_samples, n, preset.budget, allow_auto=True)
    seeds = _seeds(seed, B)
    caps = [pipe._caption_ids(p) for p in groups for _ in range(num_samples)]
    use_cfg = cfg_scale != 1 and any(c is not None for c in caps)

    def make(cap: np.ndarray | None) -> Callable[[int, bool], SequenceSample]:
        return lambda k, auto: SequenceSample("t2i", cap, np.zeros(k, dtype=np.int64), auto)

    prompts, programs = [], []
    for b in range(B):
        k = None if budgets[b] == "auto" else budgets[b]
        pr, prog = generation_program(vocab, make(caps[b]), k, n, streams=[make(None)] if use_cfg else [])
        prompts.append(pr)
        programs.append(prog)
    steps, guidance = pipe._decode_steps(img, decoder_steps)
    made: list[Preview] = []
    hook = None
    if previews:
        lo, hi = vocab.range("image")
        fired: list[set[int]] = [set() for _ in range(B)]

        def hook(step: int, progs: Sequence[RowProgram]) -> None:
            for b, p in enumerate(progs):
                for k in previews:
                    if k <= p.n_codes and k not in fired[b]:
                        fired[b].add(k)
                        codes = torch.tensor([t - lo for t in p.out if lo <= t < hi][:k])
                        x = img.detokenize([codes], steps=pipe.config.preview_steps, guidance_scale=guidance,
                                           seed=[seeds[b]])
                        _emit(Preview("preview", b, "image", k, image=to_pil(x[0])), made, callback)

    clock = _timer()
    out = pipe._sample(prompts, programs, params, seeds, cfg_weights_2(cfg_scale, B) if use_cfg else None, hook)
    t_sample = clock()
    tokens = [torch.from_numpy(_parse(pipe, out.prompts[b][0], out.tokens[b]).codes) for b in range(B)]
    clock = _timer()
    pixels = img.detokenize(tokens, steps=steps, guidance_scale=guidance, seed=seeds)
    t_decode = clock()
    return GenerationResult(
        images=[to_pil(x) for x in pixels], tokens=tokens, budgets=[len(t) for t in tokens], previews=made,
        metadata=dict(seeds=seeds, prompts=[g for g in groups for _ in range(num_samples)], requested_budgets=budgets,
                      cfg_scale=cfg_scale if use_cfg else 1.0, sampling_s=t_sample, decode_s=t_decode,
                      sampled_tokens=sum(len(t) for t in out.tokens), decoder_steps=steps),
    )


# ----------------------------------------------------------------------------------------------------
# Text (and first frame, or clip) to video
# ----------------------------------------------------------------------------------------------------


def _window_steps(pipe: Pipeline, caps: list[np.ndarray | None], cond_len: int, k_max: int) -> int:
    """Most time steps one window can hold: the vocabulary's length tokens and the model's context."""
    cap = max((len(c) for c in caps if c is not None), default=0)
    fixed = 1 + cap + cond_len + 6  # <bos> caption [cond] <bov> <nt> <kauto> <k> ... <eov> <eos>
    return min(pipe.vocab.max_time_steps, (pipe.model.config.max_seq_len - fixed) // (k_max + 1))


def text_to_video(
    pipe: Pipeline, prompt: Any, imgs: list[Any] | None, vids: list[Any] | None, budget: Any,
    num_frames: int | None, cfg_scale: float, image_cfg_scale: float, *, num_samples: int, seed: Any,
    params: SamplingParams, preset: SamplerPreset, decoder_steps: int | None, previews: list[int],
    callback: Callable[[Preview], None] | None, rerank: int = 0,
) -> GenerationResult:
    """T2V, text-image-to-video (``imgs``) or continuation (``vids``), rolled out window by window.
    ``rerank > 0``: each sample is the best of ``1 + rerank`` candidates (``best_of_visual``)."""
    from mm1d.tokenization.videoflextok import chunk_spans

    vt, vocab, cfg = pipe._need("video"), pipe.vocab, pipe.config
    n = pipe.max_budget["video"]
    inputs = imgs or vids or []
    groups = _prompts(prompt, len(inputs))
    if inputs and len(inputs) not in (1, len(groups)):
        raise ValueError(f"got {len(inputs)} conditioning inputs for {len(groups)} prompts (give 1 or one per prompt)")
    if rerank:
        return best_of_visual(
            pipe, "video", groups, num_samples, seed, budget, rerank, previews,
            lambda ns, sd, bd: text_to_video(pipe, prompt, imgs, vids, bd, num_frames, cfg_scale, image_cfg_scale,
                                             num_samples=ns, seed=sd, params=params, preset=preset,
                                             decoder_steps=decoder_steps, previews=[], callback=callback))
    G, B = len(groups), len(groups) * num_samples
    size = vt.cfg.image_size
    given: torch.Tensor | None = None  # (G, p, N) forced first steps
    cond_codes: torch.Tensor | None = None  # (G, c) FlexTok ids of the first frame
    cond_frames: torch.Tensor | None = None  # (G, 3, F0, S, S) clean frames for the decoder
    if inputs:
        if imgs is not None:
            frames = torch.stack([load_image(x, size) for x in inputs])  # (n, 3, S, S)
            cond_frames = frames[:, :, None]  # (n, 3, 1, S, S)
            img = pipe._need("image")
            c = cfg.cond_budget or pipe.max_budget["image"]
            if not 1 <= c <= pipe.max_budget["image"]:
                raise ValueError(f"generation.cond_budget={c} is outside [1, {pipe.max_budget['image']}]")
            if img.cfg.image_size != size:
                frames = torch.nn.functional.interpolate(frames, size=img.cfg.image_size, mode="bicubic",
                                                         antialias=True).clamp(-1, 1)
            cond_codes = img.tokenize(frames.to(pipe.device), k=c).cpu()
        else:
            clips = [load_video(x, size, cfg.fps) for x in inputs]
            if len({c.shape[1] for c in clips}) != 1:
                raise ValueError(f"clips to continue must have equal lengths, got {[c.shape[1] for c in clips]} frames")
            cond_frames = torch.stack(clips)  # (n, 3, F0, S, S)
        given = vt.tokenize(cond_frames.to(pipe.device)).cpu()  # (n, p, N)
        if len(inputs) == 1 and G > 1:
            given, cond_frames = given.expand(G, -1, -1), cond_frames.expand(G, -1, -1, -1, -1)
            cond_codes = None if cond_codes is None else cond_codes.expand(G, -1)
    p = 0 if given is None else given.shape[1]
    f_given = 0 if cond_frames is None else cond_frames.shape[2]
    if num_frames is None:
        num_frames = cfg.num_frames if cfg.num_frames > f_given else f_given + cfg.num_frames - 1
    if isinstance(num_frames, bool) or not isinstance(num_frames, int):
        raise ValueError(f"num_frames must be an integer of the form 1 + 4m, got {num_frames!r}")
    check_num_frames(num_frames)
    T = num_steps_for_frames(num_frames)
    if p and T <= p:
        raise ValueError(f"num_frames={num_frames} must exceed the {f_given} given frame(s) to generate anything")
    budgets = _budgets(budget, G, num_samples, n, preset.budget, allow_auto=True)
    seeds = _seeds(seed, B)
    caps = [pipe._caption_ids(g) for g in groups for _ in range(num_samples)]
    grp = [b // num_samples for b in range(B)]
    k_max = max(n if k == "auto" else k for k in budgets)
    cond_len = 0 if cond_codes is None else cond_codes.shape[1] + 3
    W = _window_steps(pipe, caps, cond_len, k_max)
    if W < 1 or (T > W and W < 2):
        raise ValueError(f"the model's context (max_seq_len={pipe.model.config.max_seq_len}) cannot hold two time "
                         f"steps of {k_max} tokens with this prompt; use a smaller budget or a shorter prompt")
    C = min(cfg.rollout_context or max(1, W // 2), W - 1) if W > 1 else 0
    steps, guidance = pipe._decode_steps(vt, decoder_steps)
    use_prefix = cfg.first_frame_prefix and cond_frames is not None

    def decode(ids: torch.Tensor, idx: list[int], n_steps: int) -> torch.Tensor:
        """ids ``(g, t, k)`` -> ``(g, 3, F, S, S)``; the given frames stay clean when they fit the first chunk."""
        chunk0 = (min(vt.cfg.chunk_frames, num_frames_for_steps(ids.shape[1])) - 1) // 4 + 1
        cf = cond_frames[[grp[b] for b in idx]].to(pipe.device) if use_prefix and p < chunk0 else None
        return vt.detokenize(ids.to(pipe.device), steps=n_steps, guidance_scale=guidance,
                             seed=[seeds[b] for b in idx], cond_frames=cf).cpu()  # (g, 3, F, S, S)

    known = [given[grp[b]].clone() if given is not None else torch.zeros(0, n, dtype=torch.long) for b in range(B)]
    ks: list[Budget] = list(budgets)
    chunk_ends = [(f1 - 1) // 4 + 1 for _, f1 in chunk_spans(num_frames, vt.cfg.chunk_frames)]
    spans = chunk_spans(num_frames, vt.cfg.chunk_frames)
    made: list[Preview] = []
    fired_p: list[set[int]] = [set() for _ in range(B)]
    fired_c: list[set[int]] = [set() for _ in range(B)]
    t_sample = t_stream = 0.0
    windows = 0
    while len(known[0]) < T:
        have = len(known[0])
        first = windows == 0
        ctx = have if (first and have <= W - 1) else min(C, have)
        with_cond = cond_codes is not None and first and ctx == have
        nt = ctx + min(W - ctx, T - have)
        prompts, programs = [], []
        three = with_cond and (cfg_scale != 1 or image_cfg_scale != 1)
        two = not with_cond and cfg_scale != 1 and any(c is not None for c in caps)
        for b in range(B):
            past = known[b][have - ctx :]
            cond = None if cond_codes is None else cond_codes[grp[b]].numpy()

            def make(cap: Any, cnd: Any, past: torch.Tensor = past, nt: int = nt, ctx: int = ctx,
                     task: str = "ti2v" if with_cond else "t2v") -> Callable[[int, bool], SequenceSample]:
                def fn(kk: int, auto: bool) -> SequenceSample:
                    codes = np.zeros((nt, kk), dtype=np.int64)  # (nt, kk)
                    codes[:ctx] = past[:, :kk].numpy()
                    return SequenceSample(task, cap, codes, auto, cnd if task == "ti2v" else None)
                return fn

            streams = []
            if three:
                streams = [make(None, cond), make(None, None)]
            elif two:
                streams = [make(None, None)]
            k = None if ks[b] == "auto" else ks[b]
            pr, prog = generation_program(vocab, make(caps[b], cond), k, n, given_steps=ctx, streams=streams)
            prompts.append(pr)
            programs.append(prog)
        weights = None
        if three or two:
            weights = cfg_weights_3(cfg_scale, image_cfg_scale, B) if three else cfg_weights_2(cfg_scale, B)
        hook = None
        if previews or callback is not None:
            lo, hi = vocab.range("video")

            def hook(step: int, progs: Sequence[RowProgram], have: int = have, ctx: int = ctx, lo: int = lo,
                     hi: int = hi) -> None:
                nonlocal t_stream
                t0 = time.perf_counter()
                for b, pg in enumerate(progs):
                    k = pg.budget or (ks[b] if ks[b] != "auto" else None)
                    if k is None:
                        continue
                    done = have + pg.n_codes // k
                    todo_p = [t for t in previews if t <= done and t not in fired_p[b]]
                    todo_c = [j for j, e in enumerate(chunk_ends) if e <= done and j not in fired_c[b]]
                    if not todo_p and not (todo_c and callback is not None):
                        continue
                    rows = torch.tensor([t - lo for t in pg.out if lo <= t < hi])
                    rows = rows[: len(rows) // k * k].view(-1, k)  # (steps in window, k)
                    sofar = torch.cat([known[b][:have, :k], rows[ctx:]])  # (done, k)
                    for t in todo_p:
                        fired_p[b].add(t)
                        v = decode(sofar[None, :t], [b], pipe.config.preview_steps)[0]
                        ev = Preview("preview", b, "video", t, frames=[to_pil(f) for f in v.unbind(1)])
                        _emit(ev, made, callback)
                    for j in todo_c if callback is not None else []:
                        fired_c[b].add(j)
                        v = decode(sofar[None, : chunk_ends[j]], [b], steps)[0]
                        f0 = 0 if j == 0 else spans[j][0] + 1
                        _emit(Preview("chunk", b, "video", chunk_ends[j],
                                      frames=[to_pil(f) for f in v[:, f0:].unbind(1)]), made, callback)
                t_stream += time.perf_counter() - t0

        clock = _timer()
        out = pipe._sample(prompts, programs, params, seeds, weights, hook)
        t_sample += clock()
        for b in range(B):
            s = _parse(pipe, out.prompts[b][0], out.tokens[b])
            k = s.codes.shape[1]
            ks[b] = k
            known[b] = torch.cat([known[b][:, :k], torch.from_numpy(s.codes[ctx:])])  # (steps so far, k)
        windows += 1
    t_sample -= t_stream
    clock = _timer()
    videos: list[list[Any]] = [[] for _ in range(B)]
    psnr: list[float] = []
    pixels: list[torch.Tensor | None] = [None] * B
    for k in sorted({int(x) for x in ks}):
        idx = [b for b in range(B) if ks[b] == k]
        v = decode(torch.stack([known[b][:T] for b in idx]), idx, steps)
        for i, b in enumerate(idx):
            pixels[b] = v[i]
            videos[b] = [to_pil(f) for f in v[i].unbind(1)]  # frames
    t_decode = clock()
    if cond_frames is not None:
        psnr = [psnr01(pixels[b][:, 0], cond_frames[grp[b]][:, 0]) for b in range(B)]
    meta = dict(seeds=seeds, prompts=[g for g in groups for _ in range(num_samples)], requested_budgets=budgets,
                num_frames=num_frames, time_steps=T, windows=windows, window_steps=W, rollout_context=C,
                cfg_scale=cfg_scale, image_cfg_scale=image_cfg_scale if cond_codes is not None else None,
                sampling_s=t_sample, decode_s=t_decode, stream_decode_s=t_stream, decoder_steps=steps,
                task="ti2v" if imgs is not None else ("continuation" if vids is not None else "t2v"))
    if psnr:
        meta["first_frame_psnr"] = psnr
    return GenerationResult(videos=videos, tokens=[known[b][:T] for b in range(B)], budgets=[int(k) for k in ks],
                            previews=made, metadata=meta)


# ----------------------------------------------------------------------------------------------------
# Captioning
# ----------------------------------------------------------------------------------------------------


def caption(
    pipe: Pipeline, prompt: Any, imgs: list[Any] | None, vids: list[Any] | None, budget: Any, max_new: int, *,
    num_samples: int, seed: Any, params: SamplingParams, preset: SamplerPreset, decoder_steps: int | None,
    previews: list[int], callback: Callable[[Preview], None] | None, rerank: int = 0, refine: int = 0,
) -> GenerationResult:
    """I2T / V2T; ``prompt`` (optional) is a caption prefix per input.

    With ``rerank > 0`` each sample is the best of ``1 + rerank`` candidates (the ``params`` decode and
    ``rerank`` draws at ``preset.rerank_temperature``) by ``mm1d.scoring.rerank_scores`` with
    ``preset.rerank_weight``. With ``refine > 0`` the kept caption then gets at most ``refine`` single-token
    edits by ``mm1d.scoring.refine_captions`` (``preset.refine_*``); a caption prefix is never edited.
    """
    modality = "image" if imgs is not None else "video"
    tok, vocab = pipe._need(modality), pipe.vocab
    n = pipe.max_budget[modality]
    inputs = imgs if imgs is not None else vids
    G, B = len(inputs), len(inputs) * num_samples
    if prompt is None:
        prefixes: list[str | None] = [None] * G
    else:
        prefixes = _prompts(prompt, G)
        if len(prefixes) == 1:
            prefixes = prefixes * G
        if len(prefixes) != G:
            raise ValueError(f"got {len(prefixes)} caption prefixes for {G} inputs")
    budgets = _budgets(budget, G, num_samples, n, preset.budget, allow_auto=False)
    seeds = _seeds(seed, B)
    size = tok.cfg.image_size
    if modality == "image":
        codes = list(tok.tokenize(torch.stack([load_image(x, size) for x in inputs]).to(pipe.device)).cpu())
    else:
        codes = [tok.tokenize(load_video(x, size, pipe.config.fps)[None].to(pipe.device))[0].cpu() for x in inputs]
        for c in codes:
            if c.shape[0] > vocab.max_time_steps:
                raise ValueError(
                    f"a video of {num_frames_for_steps(c.shape[0])} frames has {c.shape[0]} time steps; the model "
                    f"knows at most {vocab.max_time_steps} (<nt_1>..<nt_{vocab.max_time_steps}>): trim the video"
                )
    _check_rerank(rerank)
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be a non-negative integer (edits per caption), got {refine!r}")
    task = "i2t" if modality == "image" else "v2t"
    inputs_b = [codes[b // num_samples][..., : budgets[b]].numpy() for b in range(B)]
    prefix_ids = [pipe.text.encode(p) if p is not None else [] for p in prefixes]

    def run(rows: list[int], p: SamplingParams, row_seeds: list[int]
            ) -> tuple[list[np.ndarray], int, torch.Tensor]:
        """Captions of ``rows``, tokens sampled, and each caption's ``log p(caption <eos> | input)``."""
        prompts, programs = [], []
        for b in rows:
            g = b // num_samples
            prefix = prefix_ids[g]
            sample_in = SequenceSample(task, np.zeros(1, dtype=np.int64), inputs_b[b])
            pr, prog = understanding_program(vocab, sample_in, max_new, prefix)
            prompts.append([pr])
            programs.append(prog)
        out = pipe._sample(prompts, programs, p, row_seeds, None, logprobs=bool(rerank))
        caps = []
        for r in range(len(rows)):
            s = _parse(pipe, out.prompts[r][0], out.tokens[r])
            caps.append(np.asarray(s.caption if s.caption is not None else np.zeros(0), dtype=np.int64))
        return caps, sum(len(t) for t in out.tokens), out.logprobs

    clock = _timer()
    caps, n_sampled, cap_lp = run(list(range(B)), params, seeds)
    meta: dict[str, Any] = {}
    if rerank:
        # candidate j of row b: its own seed, distinct across rows and candidates for non-negative seeds
        rows = [b for b in range(B) for _ in range(rerank)]
        cand_seeds = [c for j, c in enumerate(candidate_seeds(seeds, rerank)) if j % (rerank + 1)]
        drawn, n, drawn_lp = run(rows, SamplingParams(preset.rerank_temperature, params.top_k, params.top_p),
                                 cand_seeds)
        n_sampled += n
        pool = [[(caps[b], cap_lp[b])] + list(zip(drawn[b * rerank : (b + 1) * rerank],
                                                  drawn_lp[b * rerank : (b + 1) * rerank])) for b in range(B)]
        # each distinct non-empty candidate of a row once (draws often repeat the greedy caption), with the
        # captioning log-likelihood the sampler summed while drawing it: only log p(input | caption) runs here
        flat: list[tuple[int, np.ndarray, torch.Tensor]] = []
        for b in range(B):
            distinct: dict[tuple[int, ...], torch.Tensor] = {}
            for c, lp in pool[b]:
                if len(c):
                    distinct.setdefault(tuple(c.tolist()), lp)
            flat += [(b, np.asarray(c, dtype=np.int64), lp) for c, lp in distinct.items()]
        scores = rerank_scores(pipe.model, vocab, task, [inputs_b[b] for b, _, _ in flat], [c for _, c, _ in flat],
                               preset.rerank_weight, caption_logprobs=torch.stack([lp for _, _, lp in flat]))
        best = torch.full((B,), -float("inf"))
        for (b, c, _), v in zip(flat, scores.tolist()):
            if v > best[b]:
                best[b], caps[b] = v, c
        meta = dict(rerank=rerank, rerank_weight=preset.rerank_weight, rerank_temperature=preset.rerank_temperature,
                    rerank_scores=best.tolist())
    if refine:
        rows = [b for b in range(B) if len(caps[b])]
        fixed = [len(prefix_ids[b // num_samples]) for b in rows]
        done, edits = refine_captions(pipe.model, vocab, task, [inputs_b[b] for b in rows], [caps[b] for b in rows],
                                      rounds=refine, alternatives=preset.refine_alternatives,
                                      weight=preset.refine_weight, edit_weight=preset.refine_edit_weight,
                                      frozen=fixed, text_pieces=pipe.text.vocab_size)
        n_edits = [0] * B
        for b, c, e in zip(rows, done, edits):
            caps[b], n_edits[b] = c, e
        meta.update(refine=refine, refine_edits=n_edits)
    t_sample = clock()
    tokens = [torch.from_numpy(c) for c in caps]
    texts = [pipe.text.decode(c.tolist()) for c in caps]
    return GenerationResult(texts=texts, tokens=tokens, budgets=[int(k) for k in budgets],
                            metadata=dict(seeds=seeds, sampling_s=t_sample, decode_s=0.0, task=task,
                                          sampled_tokens=n_sampled, **meta))
