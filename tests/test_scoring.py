"""mm1d.scoring: document log-likelihoods and caption reranking by both directions of the model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mm1d
from mm1d import inference
from mm1d.sampling import SamplingParams, understanding_program
from mm1d.scoring import (
    caption_direction,
    caption_token_logprobs,
    document_logprobs,
    refine_captions,
    rerank_scores,
    suffix_logprobs,
)
from mm1d.sequence import MOD_IMAGE, MOD_VIDEO, Document, SequenceSample, build_document, parse_document

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_bundle import build_tiny_bundle  # noqa: E402

HAVE_VIDEO = importlib.util.find_spec("mm1d.tokenization.videoflextok") is not None


@pytest.fixture(scope="module", params=[False, True], ids=["full_softmax", "grouped_softmax"])
def pipe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> inference.Pipeline:
    return mm1d.load(build_tiny_bundle(tmp_path_factory.mktemp("score"), video=HAVE_VIDEO, grouped=request.param))


def _log_softmax(model: torch.nn.Module, ids: np.ndarray) -> torch.Tensor:
    """Reference: one unpadded forward -> ``(n, V)`` float64 log-probabilities; a grouped-softmax model's
    columns are normalized group by group, so each entry is log p(that id) when the next id lies in its group."""
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)[None]).double()[0]  # (n, V)
    if not model.config.grouped_softmax:
        return torch.log_softmax(logits, dim=-1)
    assert len(model.softmax_groups) == 3  # text + specials, image codes, video codes
    return torch.cat([torch.log_softmax(logits[:, lo:hi], dim=-1) for lo, hi in model.softmax_groups], dim=1)


def _full_logprob(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> float:
    """Reference: one unpadded forward, log-softmax over the vocabulary (or each id's group), summed at the
    masked tokens."""
    logp = _log_softmax(model, ids)  # (n, V)
    pos = np.flatnonzero(mask)
    return float(sum(logp[p - 1, ids[p]] for p in pos))


def _pairs(pipe: inference.Pipeline, n: int, video: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    tok = pipe.video if video else pipe.image
    shape = (2, 3) if video else (5,)
    codes = [rng.integers(0, tok.codebook_size, size=shape) for _ in range(n)]
    caps = [rng.integers(0, pipe.text.vocab_size, size=int(rng.integers(2, 9))) for _ in range(n)]
    return codes, caps


def test_document_logprobs_equal_a_plain_softmax_and_ignore_padding(pipe: inference.Pipeline) -> None:
    codes, caps = _pairs(pipe, 5)
    docs = [build_document(SequenceSample("i2t", c, x), pipe.vocab) for x, c in zip(codes, caps)]
    masks = [(~d.prompt) & (np.arange(len(d)) > 0) for d in docs]
    got = document_logprobs(pipe.model, docs, masks, pipe.vocab.pad_id)
    ref = [_full_logprob(pipe.model, d.ids, m) for d, m in zip(docs, masks)]
    assert torch.allclose(got.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-3, rtol=1e-5)
    one_by_one = document_logprobs(pipe.model, docs, masks, pipe.vocab.pad_id, batch_size=1)
    assert torch.allclose(got, one_by_one, atol=1e-4)  # rows of other lengths and their padding change nothing
    in_pairs = document_logprobs(pipe.model, docs, masks, pipe.vocab.pad_id, batch_size=2)
    assert torch.allclose(got, in_pairs, atol=1e-4)  # batched by length, each score back in its document's place
    with pytest.raises(ValueError, match="first token"):
        document_logprobs(pipe.model, docs[:1], [np.ones(len(docs[0]), dtype=bool)], pipe.vocab.pad_id)


def test_suffix_logprobs_share_prefixes_and_equal_full_documents(pipe: inference.Pipeline) -> None:
    """Candidates of one input share one prefill; prefixes of other lengths (left padding), suffixes of other
    lengths (right padding), and passes split by ``batch_rows`` change nothing."""
    rng = np.random.default_rng(1)
    codes = [rng.integers(0, pipe.image.codebook_size, size=n) for n in (3, 5, 5)]
    docs = []
    for x in codes:
        for _ in range(3):
            cap = rng.integers(0, pipe.text.vocab_size, size=int(rng.integers(1, 7)))
            docs.append(build_document(SequenceSample("i2t", cap, x), pipe.vocab))
    lengths = [1 + int(d.prompt.sum()) for d in docs]  # <bos>, then the prompt
    assert len(set(lengths)) == 2 and all(d.prompt[1:p].all() and not d.prompt[p:].any() for d, p in zip(docs, lengths))
    want = document_logprobs(pipe.model, docs, [np.arange(len(d)) >= p for d, p in zip(docs, lengths)],
                             pipe.vocab.pad_id)
    for rows in (256, 4, 1):
        got = suffix_logprobs(pipe.model, docs, lengths, pipe.vocab.pad_id, batch_rows=rows)
        assert torch.allclose(got, want, atol=1e-4), rows
    with pytest.raises(ValueError, match="prefix length"):
        suffix_logprobs(pipe.model, docs[:1], [len(docs[0])], pipe.vocab.pad_id)


@pytest.mark.parametrize("task", ["i2t", "v2t"])
def test_rerank_scores_add_the_generation_direction(pipe: inference.Pipeline, task: str) -> None:
    if task == "v2t" and not HAVE_VIDEO:
        pytest.skip("no video tokenizer")
    codes, caps = _pairs(pipe, 3, video=task == "v2t")
    und = rerank_scores(pipe.model, pipe.vocab, task, codes, caps, 0.0)
    both = rerank_scores(pipe.model, pipe.vocab, task, codes, caps, 2.0)
    gen_task = "t2i" if task == "i2t" else "t2v"
    for i, (x, c) in enumerate(zip(codes, caps)):
        d = build_document(SequenceSample(task, c, x), pipe.vocab)
        cap_part = _full_logprob(pipe.model, d.ids, (~d.prompt) & (np.arange(len(d)) > 0))
        g = build_document(SequenceSample(gen_task, c, x), pipe.vocab)
        code_part = _full_logprob(pipe.model, g.ids, np.isin(g.modality, (MOD_IMAGE, MOD_VIDEO)))
        assert und[i].item() == pytest.approx(cap_part, abs=1e-3)
        assert both[i].item() == pytest.approx(cap_part + 2.0 * code_part, abs=2e-3)
    with pytest.raises(ValueError, match="i2t/v2t"):
        rerank_scores(pipe.model, pipe.vocab, "t2i", codes, caps, 1.0)


def test_caption_token_logprobs_share_the_prompt_and_equal_full_documents(pipe: inference.Pipeline) -> None:
    """Per-token log-probabilities and the top other text tokens at each caption position, with each input's
    prompt prefilled once for its captions (three per input, in passes of at most four), against one unpadded
    forward per document."""
    codes, caps = _pairs(pipe, 6)
    codes = [codes[i % 2] for i in range(6)]  # inputs 0 and 1, three captions each
    pieces = pipe.text.vocab_size
    logps, alts = caption_token_logprobs(pipe.model, pipe.vocab, "i2t", codes, caps, alternatives=3,
                                         text_pieces=pieces, batch_size=4)
    lo = pipe.vocab.range("text")[0]
    for i, (x, c) in enumerate(zip(codes, caps)):
        d = build_document(SequenceSample("i2t", c, x), pipe.vocab)
        logp = _log_softmax(pipe.model, d.ids)  # (n, V)
        pos = np.flatnonzero(~d.prompt & (np.arange(len(d)) > 0))  # the caption tokens, then <eos>
        assert len(pos) == len(c) + 1
        np.testing.assert_allclose(logps[i], logp[pos - 1, d.ids[pos]].numpy(), atol=1e-4)
        text = logp[pos[:-1] - 1, lo : lo + pieces].clone()
        text[torch.arange(len(c)), torch.from_numpy(c)] = -float("inf")  # never the caption's own token
        assert alts[i].tolist() == torch.topk(text, 3, dim=1).indices.tolist()


def test_sampler_logprobs_equal_the_captioning_direction_of_what_it_drew(pipe: inference.Pipeline) -> None:
    """``return_logprobs`` sums log p(token) of every emitted token under the raw logits, <eos> included (sampled,
    or forced at the length limit), and nothing after a row's end, while other rows go on or are dropped."""
    rng = np.random.default_rng(1)
    codes = [rng.integers(0, pipe.image.codebook_size, size=4) for _ in range(6)]
    prompts, programs = [], []
    for i, x in enumerate(codes):  # caption limits 1..6: rows end at different steps
        pr, prog = understanding_program(pipe.vocab, SequenceSample("i2t", np.zeros(1, np.int64), x), max_new=1 + i)
        prompts.append([pr])
        programs.append(prog)
    out = pipe._sample(prompts, programs, SamplingParams(0.7, 0, 1.0), list(range(6)), None, logprobs=True)
    caps = [parse_document(np.asarray(p[0] + t), pipe.vocab).caption for p, t in zip(out.prompts, out.tokens)]
    assert len({len(t) for t in out.tokens}) > 1  # rows ended at different steps
    ref = caption_direction(pipe.model, pipe.vocab, "i2t", codes, caps)
    assert out.logprobs is not None and torch.allclose(out.logprobs, ref, atol=1e-4)
    again = pipe._sample(prompts[:1], [understanding_program(pipe.vocab, SequenceSample("i2t", np.zeros(1, np.int64),
                                                                                       codes[0]), 1)[1]],
                         SamplingParams(0.7, 0, 1.0), [0], None)
    assert again.logprobs is None


def test_caption_rerank_keeps_the_best_candidate(pipe: inference.Pipeline) -> None:
    """Reranking alone (refine=0; the preset then refines, tested below)."""
    imgs = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (0, 1)]
    r, seed = 3, 7
    res = pipe.generate(None, "text", images=imgs, budget=4, max_new_tokens=6, seed=seed, rerank=r, refine=0)
    assert res.metadata["rerank"] == r
    codes = [c[:4].numpy() for c in pipe.image.tokenize(torch.stack(imgs))]
    temp = pipe.config.text.rerank_temperature
    for b in range(2):
        greedy = pipe.generate(None, "text", images=[imgs[b]], budget=4, max_new_tokens=6, seed=seed + b, rerank=0,
                               refine=0)
        cands = [greedy.tokens[0].numpy()]
        for j in range(r):  # candidate j of row b is drawn with seed (seed + b) * (r + 1) + j + 1
            d = pipe.generate(None, "text", images=[imgs[b]], budget=4, max_new_tokens=6, rerank=0, refine=0,
                              temperature=temp, seed=(seed + b) * (r + 1) + j + 1)
            cands.append(d.tokens[0].numpy())
        cands = [c for c in cands if len(c)]
        scores = rerank_scores(pipe.model, pipe.vocab, "i2t", [codes[b]] * len(cands), cands,
                               pipe.config.text.rerank_weight)
        best = int(torch.argmax(scores))
        assert res.tokens[b].tolist() == cands[best].tolist()
        assert res.metadata["rerank_scores"][b] == pytest.approx(scores[best].item(), abs=1e-4)
    plain = pipe.generate(None, "text", images=imgs, budget=4, max_new_tokens=6, seed=seed, rerank=0, refine=0)
    assert "rerank" not in plain.metadata
    with pytest.raises(ValueError, match="non-negative"):
        pipe.generate(None, "text", images=imgs, rerank=-1)


@pytest.mark.parametrize("modality", ["image", "video"])
def test_visual_rerank_keeps_the_candidate_the_model_captions_best(pipe: inference.Pipeline, modality: str) -> None:
    """generate(prompt, image/video, rerank=r): each sample is, of its 1 + r candidates (seeds s, s(r+1)+j), the
    one whose decoded pixels, tokenized again, give the prompt the highest captioning log-likelihood."""
    if modality == "video" and not HAVE_VIDEO:
        pytest.skip("no video tokenizer")
    prompts, r, seed = ["a red circle", "two blue squares"], 2, 3
    kw: dict = dict(budget=4, cfg_scale=1.0) if modality == "image" else dict(budget=2, num_frames=5)
    res = pipe.generate(prompts, modality, seed=seed, rerank=r, **kw)
    assert res.metadata["rerank"] == r and len(res.tokens) == 2
    tok = pipe.image if modality == "image" else pipe.video
    for b, prompt in enumerate(prompts):
        seeds = [seed + b] + [(seed + b) * (r + 1) + j for j in range(1, r + 1)]
        assert res.metadata["candidate_seeds"][b * (r + 1): (b + 1) * (r + 1)] == seeds
        cands = [pipe.generate([prompt], modality, seed=[s], rerank=0, **kw) for s in seeds]
        if modality == "image":
            size = tok.cfg.image_size
            again = [tok.tokenize(inference.load_image(c.images[0], size)[None])[0].numpy() for c in cands]
        else:
            size = tok.cfg.image_size
            again = [tok.tokenize(inference.load_video(c.videos[0], size)[None])[0].numpy() for c in cands]
        cap = np.asarray(pipe.text.encode(prompt), dtype=np.int64)
        task = "i2t" if modality == "image" else "v2t"
        scores = rerank_scores(pipe.model, pipe.vocab, task, again, [cap] * len(again), 0.0)
        best = int(torch.argmax(scores))
        assert torch.equal(res.tokens[b], cands[best].tokens[0])
        assert res.metadata["seeds"][b] == seeds[best]  # the chosen sample regenerates alone from its seed
        assert res.metadata["rerank_scores"][b] == pytest.approx(scores[best].item(), abs=1e-4)
    with pytest.raises(ValueError, match="needs a text prompt"):
        pipe.generate(None, modality, rerank=1, **kw)
    with pytest.raises(ValueError, match="preview_every"):
        pipe.generate(prompts[:1], modality, rerank=1, preview_every=[1], **kw)
    with pytest.raises(ValueError, match="non-negative"):
        pipe.generate(prompts[:1], modality, rerank=-2, **kw)


def _token_logprobs(model: torch.nn.Module, d: Document) -> tuple[np.ndarray, torch.Tensor]:
    """Reference: one unpadded forward; log-probs of the caption tokens and <eos>, and their full rows."""
    logp = _log_softmax(model, d.ids)  # (n, V)
    pos = np.flatnonzero(~d.prompt & (np.arange(len(d)) > 0))
    return np.array([float(logp[p - 1, d.ids[p]]) for p in pos]), logp[pos - 1]


def _brute_force_edit(pipe: inference.Pipeline, x: np.ndarray, cap: np.ndarray, m: int, w: float, e: float,
                      frozen: int = 0) -> np.ndarray:
    """The single edit refine_captions must pick, from separate unpadded forwards of every candidate."""
    vocab, model = pipe.vocab, pipe.model
    lo, hi = vocab.range("text")

    def parts(c: np.ndarray) -> tuple[np.ndarray, torch.Tensor, float]:
        lp, rows = _token_logprobs(model, build_document(SequenceSample("i2t", c, x), vocab))
        g = build_document(SequenceSample("t2i", c, x), vocab)
        return lp, rows, _full_logprob(model, g.ids, g.modality == MOD_IMAGE)

    lp0, rows, g0 = parts(cap)
    best, best_gain = cap, 0.0
    for j in range(frozen, len(cap)):
        order = torch.argsort(rows[j, lo:hi], descending=True).tolist()
        for v in [v for v in order if v != cap[j]][:m]:
            c = cap.copy()
            c[j] = v
            lp, _, g = parts(c)
            gain = lp.sum() - lp0.sum() - (1 - e) * (lp[j] - lp0[j]) + w * (g - g0)
            if gain > best_gain:
                best, best_gain = c, gain
    return best


def test_refine_captions_applies_the_best_single_token_edit(pipe: inference.Pipeline) -> None:
    codes, caps = _pairs(pipe, 4)
    kw = dict(alternatives=3, weight=2.0, edit_weight=0.5)
    same, none = refine_captions(pipe.model, pipe.vocab, "i2t", codes, caps, rounds=0, **kw)
    assert [c.tolist() for c in same] == [c.tolist() for c in caps] and none == [0] * 4
    one, edits = refine_captions(pipe.model, pipe.vocab, "i2t", codes, caps, rounds=1, **kw)
    for x, c, got, n in zip(codes, caps, one, edits):
        want = _brute_force_edit(pipe, x, c, 3, 2.0, 0.5)
        assert got.tolist() == want.tolist()
        assert n == int((want != c).sum()) and n <= 1
    assert sum(edits) >= 1  # random weights: some caption has an edit that gains
    # a caption that stops before its last round is a local optimum: one more round leaves it alone
    more, edits3 = refine_captions(pipe.model, pipe.vocab, "i2t", codes, caps, rounds=3, **kw)
    again, edits_again = refine_captions(pipe.model, pipe.vocab, "i2t", codes, more, rounds=1, **kw)
    for c, n, c2, n2 in zip(more, edits3, again, edits_again):
        assert n <= 3
        if n < 3:
            assert n2 == 0 and c2.tolist() == c.tolist()
    # frozen prefixes are never edited
    frozen = [len(c) - 1 for c in caps]
    tail, _ = refine_captions(pipe.model, pipe.vocab, "i2t", codes, caps, rounds=2, frozen=frozen, **kw)
    for c, t, f in zip(caps, tail, frozen):
        assert t[:f].tolist() == c[:f].tolist()
    with pytest.raises(ValueError, match="non-empty"):
        refine_captions(pipe.model, pipe.vocab, "i2t", codes[:1], [np.zeros(0, dtype=np.int64)], rounds=1, **kw)
    with pytest.raises(ValueError, match="frozen"):
        refine_captions(pipe.model, pipe.vocab, "i2t", codes, caps, rounds=1, frozen=[0], **kw)


def test_caption_refine_edits_the_reranked_caption(pipe: inference.Pipeline) -> None:
    imgs = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (2, 3)]
    kw = dict(budget=4, max_new_tokens=6, seed=5, rerank=2)
    base = pipe.generate(None, "text", images=imgs, refine=0, **kw)
    res = pipe.generate(None, "text", images=imgs, refine=2, **kw)
    assert pipe.config.text.refine == 2  # the caption preset refines: no argument gives the same captions
    preset = pipe.generate(None, "text", images=imgs, **kw)
    assert [c.tolist() for c in preset.tokens] == [c.tolist() for c in res.tokens]
    codes = [c[:4].numpy() for c in pipe.image.tokenize(torch.stack(imgs))]
    t = pipe.config.text
    want, edits = refine_captions(pipe.model, pipe.vocab, "i2t", codes, [c.numpy() for c in base.tokens], rounds=2,
                                  alternatives=t.refine_alternatives, weight=t.refine_weight,
                                  edit_weight=t.refine_edit_weight, text_pieces=pipe.text.vocab_size)
    assert all(int(c.max()) < pipe.text.vocab_size for c in res.tokens)
    assert [c.tolist() for c in res.tokens] == [c.tolist() for c in want]
    assert res.metadata["refine_edits"] == edits and res.texts == [pipe.text.decode(c.tolist()) for c in want]
    prefix = pipe.text.encode("a red")
    fixed = pipe.generate("a red", "text", images=imgs, refine=3, **kw)
    assert all(c[: len(prefix)].tolist() == prefix for c in fixed.tokens)  # the given prefix is never edited
    with pytest.raises(ValueError, match="refine must be"):
        pipe.generate(None, "text", images=imgs, refine=-1)
    with pytest.raises(ValueError, match="refine edits captions"):
        pipe.generate(["a red circle"], "image", budget=4, refine=1)
