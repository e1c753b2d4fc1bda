"""Shards and the packed loader: exact resume, disjoint ranks, task mixing, load-time truncation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mm1d.config import BudgetConfig, LoaderConfig, SequenceConfig, VocabConfig
from mm1d.data.loader import PackedLoader
from mm1d.data.packing import PackedBatch
from mm1d.data.shards import Shard, ShardMismatchError, write_shard
from mm1d.modality import Vocab
from mm1d.sequence import IGNORE_INDEX, StoredSample, UnknownTaskError, parse_document, split_documents

VOCAB = Vocab.from_config(VocabConfig(text_size=300, image_codebook=64, video_codebook=48, max_budget=16,
                                      max_time_steps=6))
N_IMG, N_VID = 16, 8


def _sample(i: int, rng: np.random.Generator) -> StoredSample:
    # The first two caption ids encode the sample number, so a parsed document names its sample.
    text = np.concatenate([[i // 256, i % 256], rng.integers(0, 300, size=int(rng.integers(0, 6)))])
    kind = i % 3  # 0: image, 1: video (+ first frame), 2: both
    return StoredSample(
        text=text.astype(np.uint16),
        image=rng.integers(0, 64, size=N_IMG).astype(np.uint16) if kind != 1 else None,
        video=rng.integers(0, 48, size=(int(rng.integers(2, 5)), N_VID)).astype(np.uint16) if kind else None,
        cond=rng.integers(0, 64, size=N_IMG).astype(np.uint16) if kind else None,
        auto_image=int(rng.integers(1, N_IMG + 1)),
        key=f"sample{i:04d}",
    )


def make_shards(root: Path, n: int = 120, per_shard: int = 25, seed: int = 0) -> tuple[Path, list[StoredSample]]:
    rng = np.random.default_rng(seed)
    samples = [_sample(i, rng) for i in range(n)]
    out = root / "shards"
    for s in range(0, n, per_shard):
        write_shard(out, s // per_shard, samples[s : s + per_shard], meta={"test": True})
    return out, samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, list[StoredSample]]:
    return make_shards(tmp_path_factory.mktemp("loader"))


def _cfg(path: Path, **kw) -> LoaderConfig:
    base = dict(shards=[str(path)], seq_len=96, batch_size=3, seed=1)
    base.update(kw)
    return LoaderConfig(**base)


def _docs(batch: PackedBatch) -> list:
    return [parse_document(d, VOCAB) for b in range(batch.input_ids.shape[0])
            for d in split_documents(batch.input_ids[b], batch.doc_ids[b])]


def _same(a: PackedBatch, b: PackedBatch) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in
               ("input_ids", "targets", "positions", "doc_ids", "loss_weight", "modality"))


def test_batch_shapes_and_dtypes(shards) -> None:
    batch = next(PackedLoader(_cfg(shards[0]), VOCAB, rank=0, world_size=1))
    for f in ("input_ids", "targets", "positions", "doc_ids", "modality"):
        assert getattr(batch, f).shape == (3, 96) and getattr(batch, f).dtype == torch.int64
    assert batch.loss_weight.dtype == torch.float32
    torch.testing.assert_close(batch.loss_weight.sum(), torch.tensor(1.0))  # equal weights: a mean


def test_resume_gives_same_next_50_batches(shards) -> None:
    cfg = _cfg(shards[0], sequence=SequenceConfig(auto_prob=0.3, video_time="random"))
    a = PackedLoader(cfg, VOCAB, rank=0, world_size=1)
    for _ in range(7):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # must survive a JSON round trip (checkpoints)
    expected = [next(a) for _ in range(50)]
    b = PackedLoader(cfg, VOCAB, rank=0, world_size=1)
    b.load_state_dict(state)
    got = [next(b) for _ in range(50)]
    assert all(_same(x, y) for x, y in zip(expected, got, strict=True))
    assert b.stats["batches"] == a.stats["batches"] == 57
    # a fresh loader with the same seed repeats itself; another seed does not
    c = PackedLoader(cfg, VOCAB, rank=0, world_size=1)
    first = [next(c) for _ in range(8)]
    d = PackedLoader(cfg, VOCAB, rank=0, world_size=1)
    assert all(_same(x, next(d)) for x in first)
    e = PackedLoader(_cfg(shards[0], seed=2), VOCAB, rank=0, world_size=1)
    assert not _same(first[0], next(e))
    with pytest.raises(ValueError, match="does not match this loader"):
        e.load_state_dict(state)


def test_two_ranks_see_disjoint_samples(shards) -> None:
    seq = SequenceConfig(caption_dropout=0.0, ti2v_text_dropout=0.0)
    seen = []
    for r in range(2):
        loader = PackedLoader(_cfg(shards[0], sequence=seq), VOCAB, rank=r, world_size=2)
        ids = set()
        for _ in range(40):
            for s in _docs(next(loader)):
                ids.add(int(s.caption[0]) * 256 + int(s.caption[1]))
        seen.append(ids)
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(120))  # 40 batches cover every sample


def test_task_weights_and_load_time_truncation(shards) -> None:
    path, samples = shards
    tasks = {"t2i": 3.0, "v2t": 1.0, "ti2v": 0.0, "text": 0.0}
    seq = SequenceConfig(caption_dropout=0.0, image_budget=BudgetConfig(mode="uniform"))
    loader = PackedLoader(_cfg(path, tasks=tasks, sequence=seq, seq_len=128), VOCAB, rank=0, world_size=1)
    counts = {"t2i": 0, "v2t": 0}
    budgets = set()
    for _ in range(60):
        for s in _docs(next(loader)):
            counts[s.task] += 1
            st = samples[int(s.caption[0]) * 256 + int(s.caption[1])]
            np.testing.assert_array_equal(s.caption, st.text)
            if s.task == "t2i":
                np.testing.assert_array_equal(s.codes, st.image[: s.budget])
                budgets.add(s.budget)
            else:
                np.testing.assert_array_equal(s.codes, st.video[:, : s.budget])
    frac = counts["t2i"] / sum(counts.values())
    assert 0.65 < frac < 0.85  # weights 3:1
    assert len(budgets) > 8


@pytest.mark.parametrize("source", ["uniform", "bigram"])
def test_caption_input_noise_changes_inputs_not_targets(shards, source: str) -> None:
    path, samples = shards
    seq = SequenceConfig(caption_dropout=0.0, caption_input_noise=0.3, caption_noise_source=source)
    follows = {(a, b) for st in samples for a, b in zip([-1, *st.text[:-1].tolist()], st.text.tolist())}
    cfg = _cfg(path, tasks={"t2i": 1.0, "i2t": 1.0}, sequence=seq, seq_len=128)
    lo, hi = VOCAB.range("text")
    n_changed = 0
    loader = PackedLoader(cfg, VOCAB, rank=0, world_size=1)
    for _ in range(20):
        batch = next(loader)
        for b in range(batch.input_ids.shape[0]):
            for d in range(int(batch.doc_ids[b].max()) + 1):
                idx = torch.nonzero(batch.doc_ids[b] == d)[:, 0]
                read, tgt = batch.input_ids[b, idx], batch.targets[b, idx]
                assert (tgt[:-1] != IGNORE_INDEX).all()
                clean = torch.cat([read[:1], tgt[:-1]])  # the document the targets spell out
                s = parse_document(clean.numpy(), VOCAB)
                np.testing.assert_array_equal(s.caption, samples[int(s.caption[0]) * 256 + int(s.caption[1])].text)
                changed = read != clean
                if s.task == "t2i":
                    assert not changed.any()
                    continue
                cap_start = len(clean) - 1 - len(s.caption)  # I2T: the caption sits right before <eos>
                assert not changed[:cap_start].any() and not changed[-1]
                assert ((read[changed] >= lo) & (read[changed] < hi)).all()
                if source == "bigram":  # each replacement follows the previous true word somewhere in the data
                    cap = clean[cap_start:-1] - lo
                    for j in torch.nonzero(changed[cap_start:-1])[:, 0].tolist():
                        prev = int(cap[j - 1]) if j else -1
                        assert (prev, int(read[cap_start + j]) - lo) in follows
                n_changed += int(changed.sum())
    assert n_changed > 20
    # resumable like every other loader choice
    a = PackedLoader(cfg, VOCAB, rank=0, world_size=1)
    next(a)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(5)]
    b = PackedLoader(cfg, VOCAB, rank=0, world_size=1)
    b.load_state_dict(state)
    assert all(_same(x, next(b)) for x in expected)


def test_errors(shards, tmp_path) -> None:
    path, _ = shards
    with pytest.raises(UnknownTaskError, match="unknown task 'i2v'"):
        PackedLoader(_cfg(path, tasks={"i2v": 1.0}), VOCAB, rank=0, world_size=1)
    with pytest.raises(ValueError, match="above N=16"):
        PackedLoader(_cfg(path, sequence=SequenceConfig(image_budget=BudgetConfig(max_k=32))), VOCAB, 0, 1)
    with pytest.raises(ValueError, match="cond_k=17"):
        PackedLoader(_cfg(path, sequence=SequenceConfig(cond_k=17)), VOCAB, rank=0, world_size=1)
    small = Vocab.from_config(VocabConfig(text_size=200, image_codebook=64, video_codebook=48, max_budget=16))
    with pytest.raises(ValueError, match="overflows the text range"):
        PackedLoader(_cfg(path), small, rank=0, world_size=1)
    with pytest.raises(FileNotFoundError, match="no shard"):
        PackedLoader(_cfg(tmp_path), VOCAB, rank=0, world_size=1)


def test_mismatched_shard_index_is_detected(tmp_path) -> None:
    path, _ = make_shards(tmp_path, n=40, per_shard=20)
    Shard(path / "shard_00000.json")  # fine
    # 1) same size, different bytes: checksum
    data = bytearray((path / "shard_00000.bin").read_bytes())
    data[-1] ^= 1
    (path / "shard_00000.bin").write_bytes(bytes(data))
    with pytest.raises(ShardMismatchError, match="sha256"):
        Shard(path / "shard_00000.json")
    # 2) an index pointing at another shard's bin: size or checksum
    idx = json.loads((path / "shard_00001.json").read_text())
    idx["bin"] = "shard_00000.bin"
    (path / "shard_00001.json").write_text(json.dumps(idx))
    with pytest.raises(ShardMismatchError, match="does not match its shard"):
        Shard(path / "shard_00001.json")
    # 3) truncated bin
    (path / "shard_00000.bin").write_bytes(bytes(data[:-10]))
    with pytest.raises(ShardMismatchError, match="bytes"):
        Shard(path / "shard_00000.json", verify=False)
    # 4) sample count that disagrees with the arrays
    good, _ = make_shards(tmp_path / "b", n=20, per_shard=20)
    idx = json.loads((good / "shard_00000.json").read_text())
    idx["num_samples"] = 19
    (good / "shard_00000.json").write_text(json.dumps(idx))
    with pytest.raises(ShardMismatchError, match="expected"):
        Shard(good / "shard_00000.json")


def test_shard_roundtrip(tmp_path) -> None:
    path, samples = make_shards(tmp_path, n=30, per_shard=30)
    shard = Shard(path / "shard_00000.json")
    assert shard.index["tasks"]["t2i"] == sum("t2i" in s.tasks() for s in samples)
    for i, s in enumerate(samples):
        got = shard.get(i)
        assert got.key == s.key and got.tasks() == s.tasks() and got.auto_image == s.auto_image
        for f in ("text", "image", "video", "cond"):
            a, b = getattr(got, f), getattr(s, f)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)
