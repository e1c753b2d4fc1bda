"""The token probe (mm1d.evaluation.probe, eval/probe_tokens.py): an oracle tokenizer whose tokens spell out
the attributes is read perfectly, a constant tokenizer no better than the commonest class."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mm1d.config import ShapesConfig
from mm1d.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, parse_holdout
from mm1d.evaluation.judge import judge_image
from mm1d.evaluation.probe import run_probe, single_object_samples
from mm1d.tokenization.fsq import FSQ


class OracleTokenizer:
    """Two tokens per image that encode the judged attributes of its first object (or constant ones)."""

    num_registers = 2
    cfg = SimpleNamespace(image_size=32)

    def __init__(self, constant: bool = False) -> None:
        self.fsq = FSQ([8, 5, 5, 5])
        self.constant = constant

    def tokenize(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        rows = []
        for img in x:
            o = judge_image(img)["objects"][0]
            a = SHAPES.index(o["shape"]) * len(COLOURS) + list(COLOURS).index(o["colour"])
            b = SIZES.index(o["size"]) * len(POSITIONS) + POSITIONS.index(o["position"])
            rows.append([0, 0] if self.constant else [a, b])
        return torch.tensor(rows)[:, : k or 2]


def test_single_object_labels_match_the_rendering() -> None:
    x, y = single_object_samples(3, 64, "val", "image", 32)
    assert 0 < len(y) < 64 and x.shape == (len(y), 3, 32, 32)
    for img, lab in zip(x[:8], y[:8]):
        o = judge_image(img)["objects"]
        assert len(o) == 1 and SHAPES.index(o[0]["shape"]) == lab[0] and SIZES.index(o[0]["size"]) == lab[2]


def test_probe_reads_an_oracle_and_not_a_constant(tmp_path: Path) -> None:
    kw = dict(num_train=1200, num_val=300, epochs=60, hidden=128, lr=1e-2, progress=False)
    good = run_probe(OracleTokenizer(), "image", [1, 2], **kw)["metrics"]
    assert good["2"]["all"] >= 0.95
    assert good["1"]["shape"] >= 0.95 and good["1"]["colour"] >= 0.95  # token 1 holds shape and colour
    assert good["1"]["position"] < 0.6  # ... and not the position, which token 2 adds
    bad = run_probe(OracleTokenizer(constant=True), "image", [2], **kw)["metrics"]["2"]
    assert bad["shape"] < 0.4 and bad["colour"] < 0.25 and bad["all"] < 0.05
    with pytest.raises(ValueError, match="outside"):
        run_probe(OracleTokenizer(), "image", [3], **kw)
    with pytest.raises(ValueError, match="kind"):
        run_probe(OracleTokenizer(), "audio", [1], **kw)


class RecordingOracle(OracleTokenizer):
    """The oracle, remembering the colour+shape pairs of every image it tokenized, call by call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[set[tuple[str, str]]] = []

    def tokenize(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        self.calls.append({(o["colour"], o["shape"]) for img in x for o in judge_image(img)["objects"]})
        return super().tokenize(x, k)


@pytest.mark.parametrize("split", ["val", "holdout"])
def test_probe_scores_on_the_chosen_split(split: str) -> None:
    """score_split='holdout' scores on the held-out colour+shape pairs only; training stays on the train split."""
    tok = RecordingOracle()
    run_probe(tok, "image", [1], num_train=200, num_val=60, epochs=1, hidden=16, progress=False, score_split=split)
    held = parse_holdout(ShapesConfig().holdout)
    trained, scored = tok.calls[0], tok.calls[-1]  # token_features runs on the train set, then the scored set
    assert trained and not trained & held
    assert scored and (scored <= held if split == "holdout" else not scored & held)
    with pytest.raises(ValueError, match="score_split"):
        run_probe(tok, "image", [1], num_train=200, num_val=60, epochs=1, progress=False, score_split="train")


def test_cli_writes_results(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "probe"
    args = ["--tokenizer", "mm1d/assets/flextok-shapes-tiny", "--budgets", "1,2", "--num-train", "200",
            "--num-val", "64", "--epochs", "2", "--out", str(out), "--no-progress"]
    r = subprocess.run([sys.executable, str(repo / "eval/probe_tokens.py"), *args], capture_output=True, text=True,
                       cwd=repo)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["budgets"] == [1, 2] and 0.0 <= res["metrics"]["2"]["probe/all"] <= 1.0
    assert (out / "probe_vs_k.png").stat().st_size > 0
    r = subprocess.run([sys.executable, str(repo / "eval/probe_tokens.py"), "--tokenizer", str(tmp_path / "none"),
                        "--out", str(out)], capture_output=True, text=True, cwd=repo)
    assert r.returncode == 2 and "missing config.json" in r.stderr


def test_video_probe_reads_the_shipped_videoflextok() -> None:
    """The video path: (B, T, k) ids become T * k * D features, and motion is among the attributes."""
    from mm1d.evaluation.probe import token_features
    from mm1d.tokenization.videoflextok import VideoFlexTok

    tok = VideoFlexTok.from_pretrained(Path(__file__).resolve().parents[1] / "mm1d/assets/videoflextok-shapes-tiny")
    x, y = single_object_samples(1, 4, "val", "video", 32, frames=tok.cfg.chunk_frames)
    assert x.shape[0] == 4 and y.shape == (4, 4)  # every video has one object
    feats = token_features(tok, x, 2)
    steps = tok.tokenize(x[:1]).shape[1]
    assert feats.shape == (4, steps * 2 * tok.fsq.dim)
    res = run_probe(tok, "video", [1], num_train=8, num_val=4, epochs=1, hidden=8, progress=False)
    assert res["attributes"] == ["shape", "colour", "size", "motion"]
    assert set(res["metrics"]["1"]) == {"shape", "colour", "size", "motion", "all"}
