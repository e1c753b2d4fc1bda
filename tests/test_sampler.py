"""The constrained CFG sampler: cache parity, constraints under fuzzing, budgets, CFG, seeds, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mm1d.config import ModelConfig, VocabConfig
from mm1d.modality import Vocab
from mm1d.model import Transformer
from mm1d.model.decode import DecodeState
from mm1d.sampling import (
    KIND_IMAGE,
    KIND_TEXT,
    ConstraintTable,
    SamplingParams,
    cfg_weights_2,
    cfg_weights_3,
    generation_program,
    sample,
    sample_logits,
    understanding_program,
)
from mm1d.sequence import SequenceSample, parse_document

VOCAB = Vocab.from_config(
    VocabConfig(text_size=40, image_codebook=60, video_codebook=50, max_budget=8, max_time_steps=5)
)


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=160, qk_norm=True)
    return Transformer(cfg, VOCAB.size).eval()


def t2i(cap: list[int] | None) -> object:
    c = None if cap is None else np.asarray(cap)
    return lambda k, auto: SequenceSample("t2i", c, np.zeros(k, dtype=np.int64), auto)


def t2v(cap: list[int] | None, steps: int, given: np.ndarray | None = None, cond: np.ndarray | None = None) -> object:
    c = None if cap is None else np.asarray(cap)

    def fn(k: int, auto: bool) -> SequenceSample:
        codes = np.zeros((steps, k), dtype=np.int64)
        if given is not None:
            codes[: len(given)] = given[:, :k]
        if cond is not None:
            return SequenceSample("ti2v", c, codes, auto, cond)
        return SequenceSample("t2v", c, codes, auto)

    return fn


def image_batch(budgets: list[int | None], caps: list[list[int]], cfg: bool = True) -> tuple[list, list]:
    prompts, programs = [], []
    for k, cap in zip(budgets, caps, strict=True):
        pr, prog = generation_program(VOCAB, t2i(cap), k, 8, streams=[t2i(None)] if cfg else [])
        prompts.append(pr)
        programs.append(prog)
    return prompts, programs


def run(model: object, budgets: list[int | None], caps: list[list[int]], seeds: list[int], scale: float = 3.0,
        cfg: bool = True, params: SamplingParams | None = None, **kw: object) -> object:
    prompts, programs = image_batch(budgets, caps, cfg)
    w = cfg_weights_2(scale, len(budgets)) if cfg else None
    return sample(model, prompts, programs, ConstraintTable(VOCAB), params or SamplingParams(), seeds, w,
                  VOCAB.pad_id, **kw)


CAPS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]


def test_cached_and_uncached_logits_agree(model: Transformer) -> None:
    out = run(model, [5, None, 8], CAPS, [0, 1, 2], return_logits=True)
    for b in range(3):
        seq = torch.tensor(out.prompts[b][0] + out.tokens[b])
        n_prompt = len(out.prompts[b][0])
        with torch.no_grad():
            full = model(seq[None])[0]  # (L, V) uncached, no padding
        for t in range(len(out.tokens[b])):
            torch.testing.assert_close(out.logits[t][b], full[n_prompt - 1 + t], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_decode_state_matches_the_uncached_forward(qk_norm: bool) -> None:
    torch.manual_seed(1)
    cfg = ModelConfig(d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, ffn_hidden=64, max_seq_len=64, qk_norm=qk_norm)
    lm = Transformer(cfg, 97).eval()
    rows = [torch.randint(0, 97, (n,)) for n in (5, 9, 7)]
    lp = max(len(r) for r in rows)
    ids = torch.zeros(3, lp, dtype=torch.long)
    mask = torch.zeros(3, lp, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, lp - len(r) :], mask[b, lp - len(r) :] = r, True
    state = DecodeState(lm, 3, 30)
    extra = torch.randint(0, 97, (3, 6))
    with torch.inference_mode():
        got = [lm.lm_head(state.forward(ids, mask))]
        for t in range(3):  # one-token steps
            got.append(lm.lm_head(state.forward(extra[:, t : t + 1])))
        got.append(lm.lm_head(state.forward(extra[:, 3:6])))  # several tokens after a padded prefill
        for b, r in enumerate(rows):
            full = lm(torch.cat([r, extra[b]])[None])[0]  # (L, V) uncached, unpadded
            want = [full[len(r) - 1 + t] for t in range(4)] + [full[-1]]
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g[b], w, rtol=1e-4, atol=1e-4)


class RandomLM(torch.nn.Module):
    """Random logits with a large bias toward ids that the constraints forbid most of the time."""

    def __init__(self, vocab_size: int, seed: int) -> None:
        super().__init__()
        self.lm_head = torch.nn.Identity()
        self.g = torch.Generator().manual_seed(seed)
        self.bias = torch.zeros(vocab_size)
        self.bias[torch.randint(0, vocab_size, (20,), generator=self.g)] = 30.0
        self.bias[VOCAB.special("<eos>")] = 30.0
        self.bias[VOCAB.pad_id] = 30.0

    def new_kv_cache(self, batch_size: int, max_len: int) -> None:
        return None

    def hidden_states(self, input_ids: torch.Tensor, kv_cache: object = None, token_mask: object = None
                      ) -> torch.Tensor:
        b, n = input_ids.shape
        return torch.randn(b, n, self.bias.numel(), generator=self.g) * 8 + self.bias


def test_constraints_never_violated_under_fuzzing() -> None:
    rng = np.random.default_rng(0)
    table = ConstraintTable(VOCAB, text_pieces=33, image_codes=45, video_codes=50, image_max_budget=6,
                            video_max_budget=4)
    ilo = VOCAB.range("image")[0]
    for trial in range(25):
        lm = RandomLM(VOCAB.size, trial)
        prompts, programs, expect = [], [], []
        for _ in range(int(rng.integers(1, 6))):
            task = rng.choice(["t2i", "t2v", "ti2v", "cont", "i2t"])
            cap = rng.integers(0, 33, int(rng.integers(1, 6))).tolist()
            auto = bool(rng.random() < 0.3)
            if task == "t2i":
                k = None if auto else int(rng.integers(1, 7))
                pr, prog = generation_program(VOCAB, t2i(cap), k, 6, streams=[t2i(None)])
                expect.append(("t2i", k, None))
            elif task == "i2t":
                codes = rng.integers(0, 45, int(rng.integers(1, 7)))
                pr1, prog = understanding_program(VOCAB, SequenceSample("i2t", np.zeros(1, np.int64), codes),
                                                  int(rng.integers(1, 6)))
                pr = [pr1, pr1]
                expect.append(("i2t", prog.text_max, None))
            else:
                steps = int(rng.integers(2, 6))
                k = None if auto else int(rng.integers(1, 5))
                given = rng.integers(0, 50, (1 if task == "ti2v" else int(rng.integers(1, steps)), 4))
                cond = rng.integers(0, 45, 3) if task == "ti2v" else None
                fn = t2v(cap, steps, given, cond)
                pr, prog = generation_program(VOCAB, fn, k, 4, given_steps=len(given),
                                              streams=[t2v(None, steps, given, cond)])
                expect.append((task, k, (steps, given)))
            prompts.append(pr)
            programs.append(prog)
        params = SamplingParams(float(rng.choice([0.0, 0.7, 1.0, 2.0])), int(rng.choice([0, 1, 5, 1000])),
                                float(rng.choice([1.0, 0.5, 0.05])))
        seeds = rng.integers(0, 1000, len(programs)).tolist()
        out = sample(lm, prompts, programs, table, params, seeds, cfg_weights_2(4.0, len(programs)), VOCAB.pad_id)
        for b, (task, k, extra) in enumerate(expect):
            doc = parse_document(np.asarray(out.prompts[b][0] + out.tokens[b]), VOCAB)  # raises on a bad layout
            if task == "i2t":
                assert doc.task == "i2t" and 1 <= len(doc.caption) <= k and doc.caption.max() < 33
                continue
            assert doc.auto == (k is None)
            kk = doc.codes.shape[-1]
            assert (kk == k) if k is not None else (1 <= kk <= (6 if task == "t2i" else 4))
            if task == "t2i":
                assert doc.codes.shape == (kk,) and doc.codes.max() < 45
                assert all(ilo <= t < ilo + 45 for t in out.tokens[b][(1 if k is None else 0) : kk])
            else:
                steps, given = extra
                assert doc.codes.shape == (steps, kk)
                np.testing.assert_array_equal(doc.codes[: len(given)], given[:, :kk])  # forced steps untouched
                if task == "ti2v":
                    assert doc.task == "ti2v" and doc.cond is not None


def test_mask_is_applied_before_top_k_and_top_p() -> None:
    logits = torch.tensor([[10.0, 9.0, 1.0, 0.5, 0.0]])
    allowed = torch.tensor([[0.0, float("-inf"), 0.0, 0.0, float("-inf")]])
    for u in torch.linspace(0.01, 1.0, 25):
        # top-k=1 and a tiny top-p keep the best *allowed* id, never a masked one
        assert sample_logits(logits.clone() + allowed, u[None], SamplingParams(1.0, 1, 1.0)).item() == 0
        assert sample_logits(logits.clone() + allowed, u[None], SamplingParams(1.0, 0, 0.01)).item() == 0
        assert sample_logits(logits.clone() + allowed, u[None], SamplingParams(1.0, 3, 1.0)).item() in (0, 2, 3)
    # a full sweep of u hits every allowed id and nothing else
    flat = torch.zeros(1, 5) + allowed
    got = {sample_logits(flat, u[None], SamplingParams()).item() for u in torch.linspace(0.001, 1.0, 200)}
    assert got == {0, 2, 3}


def test_every_span_has_exactly_its_budget(model: Transformer) -> None:
    for k in (1, 3, 8):
        out = run(model, [k, k], CAPS[:2], [5, 6])
        for b in range(2):
            doc = parse_document(np.asarray(out.prompts[b][0] + out.tokens[b]), VOCAB)
            assert doc.codes.shape == (k,)
    prompts, programs = [], []
    for k, steps in ((2, 3), (4, 1)):
        pr, prog = generation_program(VOCAB, t2v([1, 2], steps), k, 8)
        prompts.append(pr)
        programs.append(prog)
    out = sample(model, prompts, programs, ConstraintTable(VOCAB), SamplingParams(), [0, 1], None, VOCAB.pad_id)
    shapes = [parse_document(np.asarray(out.prompts[b][0] + out.tokens[b]), VOCAB).codes.shape for b in range(2)]
    assert shapes == [(3, 2), (1, 4)]


def test_cfg_scale_one_equals_conditional_sampling(model: Transformer) -> None:
    guided = run(model, [6, 4, None], CAPS, [3, 4, 5], scale=1.0, cfg=True)
    plain = run(model, [6, 4, None], CAPS, [3, 4, 5], cfg=False)
    assert guided.tokens == plain.tokens
    strong = run(model, [6, 4, None], CAPS, [3, 4, 5], scale=5.0, cfg=True)
    assert strong.tokens != plain.tokens  # guidance does change the samples


def test_joint_guidance_weights() -> None:
    full, img, none = torch.randn(3, 2, 7).unbind(0)
    w = cfg_weights_3(2.5, 1.5, 2)  # streams [full, frame only, neither]
    mixed = (torch.stack([full, img, none]) * w.t()[:, :, None]).sum(0)
    torch.testing.assert_close(mixed, none + 1.5 * (img - none) + 2.5 * (full - img))
    w2 = cfg_weights_2(3.0, 2)
    torch.testing.assert_close((torch.stack([full, none]) * w2.t()[:, :, None]).sum(0), none + 3.0 * (full - none))


def test_deterministic_for_a_fixed_seed(model: Transformer) -> None:
    a = run(model, [8, None, 3], CAPS, [7, 8, 9])
    b = run(model, [8, None, 3], CAPS, [7, 8, 9])
    c = run(model, [8, None, 3], CAPS, [17, 18, 19])
    assert a.tokens == b.tokens and a.budgets == b.budgets
    assert a.tokens != c.tokens


def test_mixed_budget_batch_equals_each_row_alone(model: Transformer) -> None:
    budgets, seeds = [2, 8, None], [11, 12, 13]
    batch = run(model, budgets, CAPS, seeds)
    for b in range(3):
        alone = run(model, [budgets[b]], [CAPS[b]], [seeds[b]])
        assert alone.tokens[0] == batch.tokens[b]
        assert alone.budgets[0] == batch.budgets[b]


def test_repeated_prompts_prefill_once_and_finished_rows_leave_the_batch(
    model: Transformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows with one prompt share a prefill, rows of short programs are dropped when done, and every sample
    still equals itself run alone."""
    from mm1d.model.decode import DecodeState

    built, kept = [], []
    init, select = DecodeState.__init__, DecodeState.select
    monkeypatch.setattr(DecodeState, "__init__", lambda self, m, b, n: (built.append(b), init(self, m, b, n))[1])
    monkeypatch.setattr(DecodeState, "select", lambda self, rows: (kept.append(rows.tolist()), select(self, rows))[1])
    budgets, caps, seeds = [2, 2, 8, 8], [CAPS[0], CAPS[0], CAPS[1], CAPS[1]], [1, 2, 3, 4]
    batch = run(model, budgets, caps, seeds)
    assert built[0] == 4  # 2 streams x 2 distinct prompts
    assert kept[0] == [0, 0, 1, 1, 2, 2, 3, 3]  # fanned out to 2 streams x 4 samples (stream-major)
    assert kept[1] == [2, 3, 6, 7]  # the k = 2 samples finished: both streams of the k = 8 ones stay
    for b in range(4):
        alone = run(model, [budgets[b]], [caps[b]], [seeds[b]])
        assert alone.tokens[0] == batch.tokens[b]
    assert batch.tokens[0] != batch.tokens[1]  # same prompt, own seeds


def test_auto_budget_is_chosen_by_the_model(model: Transformer) -> None:
    out = run(model, [None] * 4, [CAPS[0]] * 4, [0, 1, 2, 3])
    for b in range(4):
        doc = parse_document(np.asarray(out.prompts[b][0] + out.tokens[b]), VOCAB)
        assert doc.auto and doc.codes.shape == (out.budgets[b],) and 1 <= out.budgets[b] <= 8
        assert out.prompts[b][1][-1] == VOCAB.special("<kauto>")  # the unconditional stream keeps <kauto>
    # the unconditional prompt keeps <boi> and the budget token
    prompts, _ = image_batch([5], [CAPS[0]])
    assert prompts[0][1] == [VOCAB.special("<bos>"), VOCAB.special("<boi>"), VOCAB.budget_token(5)]


def test_caption_program_forces_eos_and_is_never_empty(model: Transformer) -> None:
    table = ConstraintTable(VOCAB, text_pieces=30)
    lm = RandomLM(VOCAB.size, 0)
    prompts, programs = [], []
    for n in (1, 3, 6):
        pr, prog = understanding_program(VOCAB, SequenceSample("i2t", np.zeros(1, np.int64), np.arange(4)), n)
        prompts.append([pr])
        programs.append(prog)
    out = sample(lm, prompts, programs, table, SamplingParams(temperature=0.0), [0, 1, 2], None, VOCAB.pad_id)
    for b, n in enumerate((1, 3, 6)):
        cap = parse_document(np.asarray(out.prompts[b][0] + out.tokens[b]), VOCAB).caption
        assert 1 <= len(cap) <= n and cap.max() < 30
    assert table.allowed[KIND_TEXT, VOCAB.special("<eos>")] and not table.allowed[KIND_IMAGE, 0]


def test_clear_errors(model: Transformer) -> None:
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    prompts, programs = image_batch([8], [list(range(40)) * 4])
    with pytest.raises(ValueError, match="max_seq_len"):
        sample(model, prompts, programs, ConstraintTable(VOCAB), SamplingParams(), [0], cfg_weights_2(2.0, 1),
               VOCAB.pad_id, max_seq_len=160)
    with pytest.raises(ValueError, match="budget"):
        generation_program(VOCAB, t2i([1]), 9, 8)
