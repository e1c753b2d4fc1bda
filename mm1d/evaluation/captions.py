"""Caption metrics: BLEU-1..4 and CIDEr-D, numerically identical to pycocoevalcap's scorers.

The COCO caption protocol first runs Stanford's PTB tokenizer (Java) on every caption, lowercasing and
dropping punctuation tokens, then scores the space-separated tokens. Here:
- ``tokenize_caption`` reimplements that step in Python (no Java): lowercase; split off punctuation,
  currency/percent signs and English clitics (``n't``, ``'s``, ``'re``, ...) the way the PTB tokenizer
  does; drop the tokens pycocoevalcap drops. Like pycocoevalcap it keeps the lowercased bracket tokens
  ``-lrb-``/``-rrb-``/... (pycocoevalcap's filter lists them in upper case, so after ``-lowerCase`` they
  survive). It matches the Java tokenizer on ordinary captions (tested where Java is installed); rare
  constructs (unusual abbreviations, URLs next to punctuation) can differ.
- ``tokenizer="ptb"`` runs the original Java tokenizer through pycocoevalcap instead (needs ``java``,
  e.g. Debian's ``default-jre-headless``, and ``pip install pycocoevalcap``).
- ``bleu`` and ``cider_d`` reimplement pycocoevalcap's ``Bleu(4)`` (corpus BLEU with the "closest"
  reference length and its 1e-9/1e-15 smoothing) and ``Cider()`` (CIDEr-D: TF-IDF n-gram vectors with
  document frequencies from the evaluated references, clipped counts, a Gaussian length penalty with
  sigma 6, times 10).

Results record which tokenizer was used (``"tokenization": "python"`` or ``"ptb"``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# tokens pycocoevalcap removes after PTB tokenization (its list, as it matches lowercased output, plus a
# plain double quote, which the PTB tokenizer turns into `` or '')
DROPPED = frozenset({'"', "''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na",
                "lemme": "lem me", "gimme": "gim me", "'tis": "'t is", "'twas": "'t was"}
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "inc.", "ltd.", "co.",
                            "corp.", "vs.", "etc.", "no.", "mt.", "ave.", "jan.", "feb.", "aug.", "sept.", "oct.",
                            "nov.", "dec."})
_ACRONYM = re.compile(r"^(?:[a-z]\.)+[a-z]?\.?$")  # u.s. / e.g. / a.m.
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_PUNCT_RUNS = re.compile(r"(\.\.\.|--|[;!?\"`])")
_COMMA = re.compile(r",(?!\d)|(?<!\d),")  # commas not inside numbers (1,000 stays)
_COLON = re.compile(r":(?!\d)|(?<!\d):")  # colons not inside times (10:30 stays)
_SIGNS = re.compile(r"([$#%&])")

Refs = Mapping[Hashable, Sequence[str]]
Hyps = Mapping[Hashable, str]


# ---- tokenization -----------------------------------------------------------------------------------
def _split_token(tok: str) -> list[str]:
    """One whitespace-separated chunk -> PTB tokens (quotes, a final period and clitics split off)."""
    if tok in _SPLIT_WORDS:
        return _SPLIT_WORDS[tok].split()
    if tok in DROPPED:  # e.g. "..." or "--" split off earlier
        return [tok]
    head: list[str] = []
    while len(tok) > 1 and tok.startswith("'") and not _CLITIC.match(tok):  # opening single quotes
        head.append("'")
        tok = tok[1:]
    tail: list[str] = []
    while len(tok) > 1 and tok.endswith("'"):  # closing quotes, or a plural possessive (dogs')
        tail.insert(0, "'")
        tok = tok[:-1]
    if tok.endswith(".") and len(tok) > 1 and tok not in _ABBREVIATIONS and not _ACRONYM.match(tok):
        tail.insert(0, ".")
        tok = tok[:-1]
    m = _CLITIC.match(tok)
    words = [m.group(1), m.group(2)] if m and m.group(1) != "'" else [tok]
    return head + words + tail


def tokenize_caption(text: str) -> str:
    """PTB-style tokens of one caption, lowercased, punctuation dropped, joined by single spaces."""
    s = text.replace("\n", " ").lower()
    for ch, name in _BRACKETS.items():
        s = s.replace(ch, f" {name} ")
    s = _PUNCT_RUNS.sub(r" \1 ", s)
    s = _COMMA.sub(" , ", s)
    s = _COLON.sub(" : ", s)
    s = _SIGNS.sub(r" \1 ", s)
    tokens = [t for raw in s.split() for t in _split_token(raw)]
    return " ".join(t for t in tokens if t not in DROPPED and t)


def java_available() -> bool:
    """Whether ``java`` is on PATH (needed by ``tokenizer="ptb"``)."""
    return shutil.which("java") is not None


def tokenize_corpus(captions: Mapping[Hashable, Sequence[str]], tokenizer: str = "python") -> dict[Any, list[str]]:
    """Tokenize ``{key: [caption, ...]}`` with ``"python"`` (:func:`tokenize_caption`) or ``"ptb"`` (Java).

    Raises:
        RuntimeError: for ``"ptb"`` without Java or pycocoevalcap, naming what to install.
    """
    if tokenizer == "python":
        return {k: [tokenize_caption(c) for c in v] for k, v in captions.items()}
    if tokenizer != "ptb":
        raise ValueError(f"tokenizer must be 'python' or 'ptb', got {tokenizer!r}")
    if not java_available():
        raise RuntimeError("tokenizer='ptb' runs Stanford's Java PTB tokenizer: install Java (Debian: "
                           "apt-get install default-jre-headless) or use tokenizer='python'")
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as e:
        raise RuntimeError("tokenizer='ptb' needs pycocoevalcap (pip install pycocoevalcap)") from e
    keys = list(captions)
    index = {i: [{"caption": c} for c in captions[k]] for i, k in enumerate(keys)}
    out = PTBTokenizer().tokenize(index)
    return {k: out.get(i, []) for i, k in enumerate(keys)}


# ---- n-grams ----------------------------------------------------------------------------------------
def ngram_counts(tokens: str, n: int = 4) -> Counter[tuple[str, ...]]:
    """Counts of all 1..n-grams of a space-separated token string."""
    words = tokens.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(refs: Refs, hyps: Hyps) -> list[Hashable]:
    if set(refs) != set(hyps):
        missing, extra = set(refs) - set(hyps), set(hyps) - set(refs)
        raise ValueError(f"references and hypotheses have different keys (only in refs: "
                         f"{sorted(map(str, missing))[:5]}, only in hyps: {sorted(map(str, extra))[:5]})")
    if not refs:
        raise ValueError("no captions to score")
    for k, r in refs.items():
        if isinstance(r, str) or len(r) == 0:
            raise ValueError(f"references of {k!r} must be a non-empty list of strings")
        if not isinstance(hyps[k], str):
            raise ValueError(f"the hypothesis of {k!r} must be one string, got {type(hyps[k]).__name__}")
    return list(refs)


# ---- BLEU ---------------------------------------------------------------------------------------------
def bleu(refs: Refs, hyps: Hyps, n: int = 4) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and per-caption BLEU, as pycocoevalcap's ``Bleu(n)`` computes them.

    Args:
        refs: ``{key: [reference, ...]}``, already tokenized (space-separated).
        hyps: ``{key: hypothesis}``, already tokenized.

    Returns:
        (``[BLEU-1, ..., BLEU-n]`` over the corpus, ``per_caption[k][i]`` = BLEU-(k+1) of caption i).
    """
    keys = _check(refs, hyps)
    tiny, small = 1e-15, 1e-9
    total_guess, total_correct = [0] * n, [0] * n
    total_test, total_ref = 0, 0
    per: list[list[float]] = [[] for _ in range(n)]
    for key in keys:
        ref_lens, max_counts = [], Counter()
        for r in refs[key]:
            ref_lens.append(len(r.split()))
            for g, c in ngram_counts(r, n).items():
                max_counts[g] = max(max_counts[g], c)
        test_len = len(hyps[key].split())
        ref_len = min((abs(rl - test_len), rl) for rl in ref_lens)[1]  # closest, ties to the shorter
        guess = [max(0, test_len - k) for k in range(n)]
        correct = [0] * n
        for g, c in ngram_counts(hyps[key], n).items():
            correct[len(g) - 1] += min(max_counts.get(g, 0), c)
        total_test, total_ref = total_test + test_len, total_ref + ref_len
        score = 1.0
        penalty = _brevity(test_len, ref_len, tiny, small)
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            score *= (correct[k] + tiny) / (guess[k] + small)
            per[k].append(score ** (1.0 / (k + 1)) * penalty)
    corpus, score = [], 1.0
    penalty = _brevity(total_test, total_ref, tiny, small)
    for k in range(n):
        score *= (total_correct[k] + tiny) / (total_guess[k] + small)
        corpus.append(score ** (1.0 / (k + 1)) * penalty)
    return corpus, per


def _brevity(test_len: float, ref_len: float, tiny: float, small: float) -> float:
    ratio = (test_len + tiny) / (ref_len + small)
    return math.exp(1 - 1 / ratio) if ratio < 1 else 1.0


# ---- CIDEr-D ------------------------------------------------------------------------------------------
def cider_d(refs: Refs, hyps: Hyps, n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D as pycocoevalcap's ``Cider()`` computes it.

    Document frequencies come from the references of this corpus (so the score of one caption depends
    on the others, as in the official code).

    Args:
        refs: ``{key: [reference, ...]}``, tokenized.
        hyps: ``{key: hypothesis}``, tokenized.

    Returns:
        (corpus mean, per-caption scores in key order).
    """
    keys = _check(refs, hyps)
    ref_counts = [[ngram_counts(r, n) for r in refs[k]] for k in keys]
    doc_freq: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:
        doc_freq.update({g for c in counts for g in c})
    log_docs = math.log(float(len(keys)))

    def vectorize(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        for g, tf in counts.items():
            w = float(tf) * (log_docs - math.log(max(1.0, float(doc_freq.get(g, 0)))))
            vec[len(g) - 1][g] = w
            norm[len(g) - 1] += w * w
        length = sum(c for g, c in counts.items() if len(g) == 2)  # as in the official code: bigram count
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for key, counts in zip(keys, ref_counts):
        vh, nh, lh = vectorize(ngram_counts(hyps[key], n))
        total = np.zeros(n)
        for rc in counts:
            vr, nr, lr = vectorize(rc)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(float(total.mean()) / len(counts) * 10.0)
    return float(np.mean(scores)), scores


# ---- one call ----------------------------------------------------------------------------------------
def caption_metrics(refs: Mapping[Hashable, Sequence[str]], hyps: Mapping[Hashable, str],
                    tokenizer: str = "python") -> dict[str, Any]:
    """Tokenize raw captions, then BLEU-1..4 and CIDEr-D.

    Args:
        refs: ``{key: [raw reference, ...]}``.
        hyps: ``{key: raw hypothesis}``.
        tokenizer: ``"python"`` (default, no Java) or ``"ptb"``.

    Returns:
        ``{"BLEU-1": ..., "BLEU-4": ..., "CIDEr": ..., "tokenization": tokenizer, "num_captions": N,
        "per_caption": {"CIDEr": [...], "BLEU-4": [...], "keys": [...]}}``.
    """
    _check(refs, {k: str(v) for k, v in hyps.items()})
    tok_refs = tokenize_corpus(refs, tokenizer)
    tok_hyps = {k: v[0] for k, v in tokenize_corpus({k: [h] for k, h in hyps.items()}, tokenizer).items()}
    corpus_bleu, per_bleu = bleu(tok_refs, tok_hyps)
    cider, per_cider = cider_d(tok_refs, tok_hyps)
    out: dict[str, Any] = {f"BLEU-{i + 1}": b for i, b in enumerate(corpus_bleu)}
    out.update({"CIDEr": cider, "tokenization": tokenizer, "num_captions": len(tok_refs),
                "per_caption": {"keys": [str(k) for k in tok_refs], "CIDEr": per_cider, "BLEU-4": per_bleu[3]}})
    return out


def load_coco_references(path: str | Path) -> dict[Any, list[str]]:
    """``{image_id: [caption, ...]}`` from a COCO captions file (``annotations`` with image_id/caption).

    Raises:
        FileNotFoundError: naming the file (e.g. ``captions_val2014.json`` or the Karpathy test split).
        ValueError: if the file is not in COCO caption format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO caption references not found: {path} (e.g. annotations/captions_val2014.json "
                                "from https://cocodataset.org/#download)")
    data = json.loads(path.read_text())
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list) or not all("image_id" in a and "caption" in a for a in anns):
        raise ValueError(f"{path} is not a COCO captions file (expected 'annotations' with image_id and caption)")
    refs: dict[Any, list[str]] = {}
    for a in anns:
        refs.setdefault(a["image_id"], []).append(str(a["caption"]))
    return refs
