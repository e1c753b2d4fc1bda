"""The vocabulary registry: contiguous disjoint ranges, exact round trips, specials, clear errors."""

from __future__ import annotations

import pytest
import torch

from mm1d.config import VocabConfig
from mm1d.modality import FIXED_SPECIALS, MODALITIES, UnknownModalityError, Vocab

SIZES = [VocabConfig(), VocabConfig(text_size=7, image_codebook=5, video_codebook=3, max_budget=2, max_time_steps=1),
         VocabConfig(text_size=32000, image_codebook=64000, video_codebook=64000, max_budget=256, max_time_steps=64)]


@pytest.fixture(params=range(len(SIZES)))
def vocab(request: pytest.FixtureRequest) -> Vocab:
    return Vocab.from_config(SIZES[request.param])


def test_ranges_tile_the_id_space(vocab: Vocab) -> None:
    spans = sorted([vocab.range("text"), (vocab.special_offset, vocab.image_offset), vocab.range("image"),
                    vocab.range("video")])
    assert spans[0][0] == 0 and spans[-1][1] == vocab.size
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end == start  # contiguous and disjoint
    assert vocab.local_size("text") == vocab.text_size
    assert vocab.local_size("image") == vocab.image_codebook and vocab.local_size("video") == vocab.video_codebook
    assert vocab.num_specials == len(FIXED_SPECIALS) + vocab.max_budget + vocab.max_time_steps
    assert len(vocab.special_names) == len(set(vocab.special_names)) == vocab.num_specials
    assert vocab.size == vocab.text_size + vocab.num_specials + vocab.image_codebook + vocab.video_codebook


def test_every_id_has_exactly_one_owner(vocab: Vocab) -> None:
    ids = torch.arange(vocab.size)
    owners = torch.stack([vocab.is_in(m, ids) for m in MODALITIES]).sum(0)
    specials = (ids >= vocab.special_offset) & (ids < vocab.image_offset)
    assert torch.equal(owners + specials.long(), torch.ones_like(owners))
    for gid in {0, vocab.text_size - 1, vocab.special_offset, vocab.image_offset, vocab.video_offset, vocab.size - 1}:
        kind = vocab.modality_of(gid)
        assert (kind == "special") == bool(specials[gid]) and (kind == "special" or vocab.is_in(kind, ids[gid]))


def test_local_global_round_trip(vocab: Vocab) -> None:
    for m in MODALITIES:
        local = torch.arange(vocab.local_size(m)).reshape(1, -1)  # any shape
        glob = vocab.to_global(m, local)
        assert glob.dtype == torch.long and torch.equal(vocab.to_local(m, glob), local)
        assert bool(vocab.is_in(m, glob).all())
        assert vocab.to_local(m, vocab.to_global(m, vocab.local_size(m) - 1)) == vocab.local_size(m) - 1
        assert vocab.to_global(m, 0) == vocab.range(m)[0]
    assert vocab.to_global("image", torch.zeros(0, dtype=torch.long)).numel() == 0


def test_out_of_range_ids_raise(vocab: Vocab) -> None:
    for m in MODALITIES:
        n = vocab.local_size(m)
        with pytest.raises(ValueError, match="outside"):
            vocab.to_global(m, n)
        with pytest.raises(ValueError, match="outside"):
            vocab.to_global(m, torch.tensor([0, -1]))
        with pytest.raises(ValueError, match="outside"):
            vocab.to_local(m, torch.tensor([vocab.range(m)[0], vocab.range(m)[1]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.modality_of(vocab.size)
    with pytest.raises(ValueError, match="not a special"):
        vocab.name_of(0)


def test_specials_budgets_and_lengths(vocab: Vocab) -> None:
    for name in vocab.special_names:
        gid = vocab.special(name)
        assert vocab.name_of(gid) == name and vocab.modality_of(gid) == "special"
    assert vocab.pad_id == vocab.special("<pad>")
    for k in range(1, vocab.max_budget + 1):
        assert vocab.budget_of(vocab.budget_token(k)) == k and vocab.name_of(vocab.budget_token(k)) == f"<k_{k}>"
    lo, hi = vocab.budget_range()
    assert hi - lo == vocab.max_budget and vocab.budget_token(1) == lo
    for t in range(1, vocab.max_time_steps + 1):
        assert vocab.length_of(vocab.length_token(t)) == t
    lo2, hi2 = vocab.length_range()
    assert hi2 - lo2 == vocab.max_time_steps and hi2 <= vocab.image_offset and (lo2 >= hi or hi2 <= lo)
    for bad in (0, vocab.max_budget + 1, 1.0, True):
        with pytest.raises(ValueError, match="budget"):
            vocab.budget_token(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="video length"):
        vocab.length_token(vocab.max_time_steps + 1)
    with pytest.raises(ValueError, match="not a budget"):
        vocab.budget_of(vocab.special("<bos>"))
    with pytest.raises(KeyError, match="unknown special"):
        vocab.special("<nope>")


def test_unknown_modality_and_bad_sizes() -> None:
    vocab = Vocab.from_config(VocabConfig())
    with pytest.raises(UnknownModalityError, match="audio"):
        vocab.range("audio")
    with pytest.raises(UnknownModalityError):
        vocab.to_global("audio", 0)
    with pytest.raises(ValueError, match="max_budget"):
        Vocab.from_config(VocabConfig(max_budget=0))


def test_offsets_follow_the_sizes() -> None:
    a = Vocab.from_config(VocabConfig(text_size=100))
    b = Vocab.from_config(VocabConfig(text_size=101))
    assert b.special("<boi>") == a.special("<boi>") + 1 and b.image_offset == a.image_offset + 1
    c = Vocab.from_config(VocabConfig(max_budget=33))
    assert c.image_offset == a.image_offset - 100 + 512 + 1 and c.special("<nt_1>") == c.special("<k_33>") + 1


def test_shared_visual_range() -> None:
    cfg = VocabConfig(text_size=7, image_codebook=5, video_codebook=5, max_budget=2, max_time_steps=1)
    split, shared = Vocab.from_config(cfg), Vocab.from_config(VocabConfig(**{**vars(cfg), "shared_visual": True}))
    assert shared.range("image") == shared.range("video") == split.range("image")
    assert shared.size == split.size - 5
    codes = torch.tensor([0, 4, 2])
    for m in ("image", "video"):
        assert torch.equal(shared.to_local(m, shared.to_global(m, codes)), codes)
    assert shared.modality_of(shared.image_offset) == "visual" and split.modality_of(split.video_offset) == "video"
    with pytest.raises(ValueError, match="out of range|outside"):
        shared.to_global("video", 5)
    with pytest.raises(ValueError, match="image_codebook == video_codebook"):
        Vocab.from_config(VocabConfig(image_codebook=5, video_codebook=6, shared_visual=True))
