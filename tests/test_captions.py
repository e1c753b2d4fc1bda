"""BLEU and CIDEr-D against pycocoevalcap's own scorers; the Python PTB-style tokenizer against Java's."""

from __future__ import annotations

import json
import random

import pytest

from mm1d.evaluation.captions import (
    bleu,
    caption_metrics,
    cider_d,
    java_available,
    load_coco_references,
    tokenize_caption,
    tokenize_corpus,
)

RAW_REFS = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
          "A person on a surfboard riding a wave!", "Man surfing on a big blue wave."],
    "2": ["Two dogs' toys, and a cat's bed.", "A cat sleeping in a bed next to dog toys.",
          "A small cat lying on its bed."],
    "3": ["A red square in the top left corner.", "There is a small red square at the top left.",
          "A picture showing a red square; it's small."],
    "4": ["He doesn't like (green) eggs; really?", "A plate of green eggs and ham.",
          "Green eggs on a white plate -- with ham."],
}
RAW_HYPS = {"1": "A man riding a wave on a surfboard.", "2": "A cat lying on a bed with toys.",
            "3": "A small red square in the top left corner", "4": "A plate of eggs."}


def _coco(refs: dict, hyps: dict) -> tuple[list[float], list[list[float]], float, list[float]]:
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed (pip install pycocoevalcap)")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts, res = {k: list(v) for k, v in refs.items()}, {k: [h] for k, h in hyps.items()}
    b, b_per = Bleu(4).compute_score(gts, res, verbose=0)
    c, c_per = Cider().compute_score(gts, res)
    return b, b_per, float(c), [float(x) for x in c_per]


def _check_against_coco(refs: dict, hyps: dict) -> None:
    b_ref, b_per_ref, c_ref, c_per_ref = _coco(refs, hyps)
    b, b_per = bleu(refs, hyps)
    c, c_per = cider_d(refs, hyps)
    assert b == pytest.approx(b_ref, rel=1e-12, abs=1e-15)
    for k in range(4):
        assert b_per[k] == pytest.approx(b_per_ref[k], rel=1e-12, abs=1e-15)
    assert c == pytest.approx(c_ref, rel=1e-12)
    assert c_per == pytest.approx(c_per_ref, rel=1e-12, abs=1e-15)


def test_bleu_and_cider_match_pycocoevalcap_on_a_fixed_example() -> None:
    refs = tokenize_corpus(RAW_REFS)
    hyps = {k: tokenize_caption(h) for k, h in RAW_HYPS.items()}
    _check_against_coco(refs, hyps)
    b, _ = bleu(refs, hyps)
    c, per = cider_d(refs, hyps)
    assert 0 < b[3] < b[0] < 1 and c > 0.5
    assert per[2] == max(per)  # the near-copy of a reference scores best


def test_bleu_and_cider_match_pycocoevalcap_on_random_corpora() -> None:
    rng = random.Random(0)
    words = "a the red blue small large square circle moving left right in top of".split()
    for _ in range(3):
        refs, hyps = {}, {}
        for i in range(rng.randint(2, 6)):
            refs[i] = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 4))]
            hyps[i] = " ".join(rng.choices(words, k=rng.randint(1, 12)))
        _check_against_coco(refs, hyps)


def test_identical_captions_score_perfect_bleu() -> None:
    refs = {0: ["a red square moving left"], 1: ["a blue circle in the center"]}
    b, _ = bleu(refs, {0: "a red square moving left", 1: "a blue circle in the center"})
    assert b == pytest.approx([1.0] * 4, abs=1e-6)


TOKENIZER_CASES = [
    "A man riding a horse.",
    "Two dogs' toys, and a cat's bed!",
    "He doesn't like (green) eggs; really?",
    "A black-and-white photo of 3.5 people -- no, 1,000!",
    "\"Quoted\" text and 'single' quotes...",
    "A U.S. flag & a T-shirt: size 10/12.",
    "I can't, won't, I'm, they're, we've, you'll, he'd",
    "a  red   square\tmoving LEFT",
    "cannot gonna e-mail",
    "It's 5 o'clock. Mr. Smith's car",
    "two-thirds {braces} [brackets]",
    "price $5 and 50% off #1 tag",
    "end with dash -",
    "A small red square in the top left corner, moving left.",
]


def test_python_tokenizer_examples() -> None:
    assert tokenize_caption("He doesn't like (green) eggs; really?") == "he does n't like -lrb- green -rrb- eggs really"
    assert tokenize_caption("A U.S. flag & a T-shirt: size 10/12.") == "a u.s. flag & a t-shirt size 10/12"
    assert tokenize_caption("price $5 and 50% off") == "price $ 5 and 50 % off"


def test_python_tokenizer_matches_java_ptb() -> None:
    if not java_available():
        pytest.skip("java is not installed (Debian: default-jre-headless); the PTB comparison needs it")
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed")
    cases = list(TOKENIZER_CASES)
    try:  # ShapesWorld's own caption templates, when the generator is present
        from mm1d.config import ShapesConfig
        from mm1d.data.shapes import sample_image, sample_rng, sample_video

        cfg = ShapesConfig()
        cases += [sample_image(sample_rng(0, "train", "image", i), cfg)[2] for i in range(12)]
        cases += [sample_video(sample_rng(0, "train", "video", i), cfg)[2] for i in range(12)]
    except ImportError:
        pass
    captions = {i: [c] for i, c in enumerate(cases)}
    assert tokenize_corpus(captions, "python") == tokenize_corpus(captions, "ptb")


def test_caption_metrics_and_errors(tmp_path) -> None:
    out = caption_metrics(RAW_REFS, RAW_HYPS)
    assert out["tokenization"] == "python" and out["num_captions"] == 4
    assert set(out) >= {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"}
    with pytest.raises(ValueError, match="different keys"):
        bleu({1: ["a"]}, {2: "a"})
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d({1: "a b"}, {1: "a"})
    with pytest.raises(ValueError, match="'python' or 'ptb'"):
        tokenize_corpus({1: ["a"]}, "spacy")
    coco = {"annotations": [{"image_id": 7, "caption": "A cat."}, {"image_id": 7, "caption": "A dog."}]}
    (tmp_path / "caps.json").write_text(json.dumps(coco))
    assert load_coco_references(tmp_path / "caps.json") == {7: ["A cat.", "A dog."]}
    with pytest.raises(FileNotFoundError, match="captions_val2014"):
        load_coco_references(tmp_path / "missing.json")
