"""The ShapesWorld REPA teacher: slot labels, training, loading, and its use as a FlexTok REPA extractor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mm1d.data.shapes import POSITIONS, make_batch
from mm1d.tokenization.repa import build_feature_extractor
from mm1d.tokenization.shapes_teacher import (
    load_shapes_teacher,
    slot_labels,
    train_shapes_teacher,
)


def test_slot_labels_name_each_position() -> None:
    attrs = [{"objects": [{"shape": "triangle", "colour": "blue", "size": "large", "position": "center"}]},
             {"objects": [{"shape": "circle", "colour": "red", "size": "small", "position": "top left"},
                          {"shape": "diamond", "colour": "white", "size": "large", "position": "bottom right"}]}]
    shape, colour, size = slot_labels(attrs)
    assert shape.shape == colour.shape == size.shape == (2, len(POSITIONS))
    c, tl, br = POSITIONS.index("center"), POSITIONS.index("top left"), POSITIONS.index("bottom right")
    assert shape[0].tolist() == [3 if j == c else 0 for j in range(len(POSITIONS))]  # 1 + SHAPES.index
    assert colour[0, c] == 2 and size[0, c] == 1 and (colour[0] == -100).sum() == len(POSITIONS) - 1
    assert shape[1, tl] == 1 and shape[1, br] == 4 and colour[1, br] == 7 and size[1, tl] == 0


def test_train_load_and_use_as_repa_extractor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    b = make_batch(5, 0, 64, "val")
    metrics = train_shapes_teacher(tmp_path / "t", steps=40, batch_size=32, dim=16, progress=False)
    assert metrics["train_loss"] < 4.0  # chance: ln 5 + ln 8 + ln 2 = 4.38 (three cross-entropies)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    teacher = load_shapes_teacher(tmp_path / "t")
    assert not any(p.requires_grad for p in teacher.parameters())
    feats = teacher(b.pixels[:4])
    assert feats.shape == (4, 16, 4, 4)
    # the spec resolves to the same network, and it checks the width against repa_dim
    fn = build_feature_extractor(f"shapes:{tmp_path / 't'}", 16, 32)
    assert torch.equal(fn(b.pixels[:4]), feats)
    with pytest.raises(ValueError, match="16-dim"):
        build_feature_extractor(f"shapes:{tmp_path / 't'}", 8, 32)
    with pytest.raises(FileNotFoundError, match="shapes_teacher --out"):
        build_feature_extractor(f"shapes:{tmp_path / 'missing'}", 16, 32)
