"""Pretokenization with fake deterministic tokenizers: identical shards on re-runs, disjoint ranks,
skipping finished shards, corrupt samples, adaptive budgets, and the loader on the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mm1d.config import (
    AdaptiveBudgetConfig,
    LoaderConfig,
    PretokenizeConfig,
    ShapesConfig,
    TextTokenizerConfig,
    VocabConfig,
)
from mm1d.data.loader import PackedLoader
from mm1d.data.pretokenize import RawSample, ShapesSource, Tokenizers, adaptive_budget, pretokenize
from mm1d.data.shards import Shard
from mm1d.modality import Vocab
from mm1d.sequence import parse_document, split_documents
from mm1d.tokenization.text import TextTokenizer


class FakeImageTokenizer:
    """Fixed random projection + argmax: (B, 3, S, S) -> (B, N); decode paints each token's colour."""

    def __init__(self, n: int = 8, codebook: int = 40, size: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.num_registers, self.codebook_size, self.image_size = n, codebook, size
        self.proj = torch.randn(3 * size * size, n * codebook, generator=g)
        self.palette = torch.rand(codebook, 3, generator=g) * 2 - 1

    def tokenize(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        assert x.dim() == 4 and x.shape[-1] == self.image_size
        logits = (x.flatten(1) @ self.proj).view(x.shape[0], self.num_registers, self.codebook_size)
        return logits.argmax(-1)[:, : k or self.num_registers]

    def detokenize(self, ids: torch.Tensor, steps: int = 1, guidance_scale: float = 1.0, seed=None) -> torch.Tensor:
        colour = self.palette[ids].mean(1)  # (B, 3): more tokens -> a different average colour
        return colour[:, :, None, None].expand(-1, -1, self.image_size, self.image_size).contiguous()


class FakeVideoTokenizer:
    """Causal in time: step 0 is frame 0, step t frames 4t-3..4t; (B, 3, F, S, S) -> (B, T, N)."""

    def __init__(self, n: int = 6, codebook: int = 30, size: int = 16) -> None:
        self.img = FakeImageTokenizer(n, codebook, size, seed=1)
        self.num_registers, self.codebook_size, self.image_size = n, codebook, size

    def tokenize(self, v: torch.Tensor, k: int | None = None) -> torch.Tensor:
        b, _, f, s, _ = v.shape
        assert (f - 1) % 4 == 0
        steps = [v[:, :, 0]] + [v[:, :, 1 + 4 * t : 5 + 4 * t].mean(2) for t in range((f - 1) // 4)]
        return torch.stack([self.img.tokenize(x, k) for x in steps], dim=1)  # (B, T, k)

    def detokenize(self, ids: torch.Tensor, steps: int = 1, guidance_scale: float = 1.0, seed=None) -> torch.Tensor:
        frames = [self.img.detokenize(ids[:, t]) for t in range(ids.shape[1])]
        out = [frames[0]] + [f for fr in frames[1:] for f in [fr] * 4]
        return torch.stack(out, dim=2)  # (B, 3, F, S, S)


@pytest.fixture(scope="module")
def text_tok() -> TextTokenizer:
    from mm1d.config import TextCorpusConfig
    from mm1d.data.corpus import text_corpus

    return TextTokenizer.train(text_corpus(TextCorpusConfig(shapes_images=300, shapes_videos=60)),
                               TextTokenizerConfig(vocab_size=300))


def _toks(text_tok: TextTokenizer) -> Tokenizers:
    return Tokenizers(text_tok, FakeImageTokenizer(), FakeVideoTokenizer())


def _cfg(out: Path, **kw) -> PretokenizeConfig:
    base = dict(out_dir=str(out), num_images=9, num_videos=6, samples_per_shard=4, batch_size=3,
                shapes=ShapesConfig(size=32, frames=9))
    base.update(kw)
    return PretokenizeConfig(**base)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard_*"))}


def test_twice_gives_identical_shards_and_rerun_skips(text_tok, tmp_path) -> None:
    toks = _toks(text_tok)
    a, b = tmp_path / "a", tmp_path / "b"
    sa = pretokenize(_cfg(a), toks, ShapesSource(_cfg(a)), rank=0, world_size=1)
    pretokenize(_cfg(b), toks, ShapesSource(_cfg(b)), rank=0, world_size=1)
    assert sa["shards_written"] == 4 and sa["samples"] == 15 and sa["corrupt"] == 0
    fa = _files(a)
    assert len(fa) == 8 and fa == _files(b)
    # a re-run finishes nothing new and leaves the files untouched
    again = pretokenize(_cfg(a), toks, ShapesSource(_cfg(a)), rank=0, world_size=1)
    assert again["shards_written"] == 0 and again["shards_skipped"] == 4
    assert _files(a) == fa
    # a missing shard is rebuilt identically
    (a / "shard_00002.json").unlink()
    again = pretokenize(_cfg(a), toks, ShapesSource(_cfg(a)), rank=0, world_size=1)
    assert again["shards_written"] == 1 and _files(a) == fa


def test_ranks_write_disjoint_shards(text_tok, tmp_path) -> None:
    toks = _toks(text_tok)
    full, split = tmp_path / "full", tmp_path / "split"
    pretokenize(_cfg(full), toks, ShapesSource(_cfg(full)), rank=0, world_size=1)
    r0 = pretokenize(_cfg(split), toks, ShapesSource(_cfg(split)), rank=0, world_size=2)
    names0 = set(_files(split))
    r1 = pretokenize(_cfg(split), toks, ShapesSource(_cfg(split)), rank=1, world_size=2)
    names1 = set(_files(split)) - names0
    assert r0["shards_written"] == r1["shards_written"] == 2
    assert {n[:11] for n in names0} == {"shard_00000", "shard_00002"}
    assert {n[:11] for n in names1} == {"shard_00001", "shard_00003"}
    assert _files(split) == _files(full)

    class Stream:  # a sequential source (no random access), like the readers
        def __init__(self, items: list[RawSample]) -> None:
            self.items = items

        def __iter__(self):
            return iter(self.items)

    items = [ShapesSource(_cfg(full))[i] for i in range(15)]
    seq = tmp_path / "seq"
    for r in (1, 0):
        pretokenize(_cfg(seq), toks, Stream(items), rank=r, world_size=2)
    assert _files(seq) == _files(full)


def test_stored_tokens_match_tokenizers_and_loader_reads_them(text_tok, tmp_path) -> None:
    toks = _toks(text_tok)
    cfg = _cfg(tmp_path)
    src = ShapesSource(cfg)
    pretokenize(cfg, toks, src, rank=0, world_size=1)
    shard = Shard(tmp_path / "shard_00000.json")
    raw = src[1]
    got = shard.get(1)
    assert got.key == raw.key
    assert text_tok.decode(got.text.tolist()) == raw.caption
    img = torch.nn.functional.interpolate(raw.image[None], size=(16, 16), mode="bilinear", antialias=True)
    np.testing.assert_array_equal(got.image, toks.image.tokenize(img)[0].numpy())
    vshard = Shard(tmp_path / "shard_00003.json")  # samples 12..14: videos
    v = vshard.get(0)
    assert v.video.shape == (3, 6) and v.cond.shape == (8,) and "ti2v" in v.tasks()
    assert vshard.index["tasks"]["t2v"] == 3 and vshard.meta["video_tokenizer"]["num_registers"] == 6

    vocab = Vocab.from_config(VocabConfig(text_size=300, image_codebook=40, video_codebook=30, max_budget=8,
                                          max_time_steps=4))
    loader = PackedLoader(LoaderConfig(shards=[str(tmp_path)], seq_len=64, batch_size=2), vocab, 0, 1)
    tasks = set()
    for _ in range(10):
        batch = next(loader)
        for row in range(2):
            tasks |= {parse_document(d, vocab).task for d in split_documents(batch.input_ids[row],
                                                                              batch.doc_ids[row])}
    assert {"t2i", "i2t", "t2v", "v2t", "ti2v"} <= tasks


def test_corrupt_samples_are_skipped_and_counted(text_tok, tmp_path) -> None:
    good = torch.rand(3, 16, 16) * 2 - 1
    source = [
        RawSample("ok0", "a red star", image=good),
        RawSample("nan", "a red star", image=torch.full((3, 16, 16), float("nan"))),
        RawSample("flat", "a red star", image=torch.zeros(16, 16)),
        RawSample("nocap", None, image=good),
        RawSample("frames", "a clip", video=torch.zeros(3, 4, 16, 16)),  # 4 frames: keeps the first (1 + 4m)
        RawSample("ok1", "a blue dot", video=torch.zeros(3, 9, 16, 16)),
    ]
    stats = pretokenize(_cfg(tmp_path, samples_per_shard=10), _toks(text_tok), source, rank=0, world_size=1)
    shard = Shard(tmp_path / "shard_00000.json")
    assert stats["corrupt"] == 3 and shard.index["skipped_corrupt"] == 3
    assert shard.index["keys"] == ["ok0", "frames", "ok1"]
    assert shard.get(1).video.shape == (1, 6)  # 4 frames -> the largest 1 + 4m prefix (1 frame)


def test_adaptive_budget_is_smallest_passing_k(text_tok, tmp_path) -> None:
    tok = FakeImageTokenizer()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ids = tok.tokenize(x)
    acfg = AdaptiveBudgetConfig(enabled=True, psnr=9.7, candidates=[1, 2, 3, 5, 8])
    ks = adaptive_budget(tok, x, ids, acfg)
    for i in range(5):
        expected = 8
        for k in [1, 2, 3, 5, 8]:
            rec = tok.detokenize(ids[i : i + 1, :k])
            mse = ((rec - x[i : i + 1]) / 2).pow(2).mean()
            if -10 * torch.log10(mse) >= 9.7:
                expected = k
                break
        assert ks[i] == expected
    assert len(set(ks)) > 1  # the threshold separates these samples
    # the k = N pass is never decoded (a sample that reaches it gets N either way), and the answer is unchanged
    decoded: list[int] = []
    plain = tok.detokenize
    tok.detokenize = lambda ids, **kw: (decoded.append(ids.shape[-1]), plain(ids, **kw))[1]  # type: ignore[method-assign]
    assert adaptive_budget(tok, x, ids, AdaptiveBudgetConfig(enabled=True, psnr=1e3)) == [8] * 5
    assert decoded == [1, 2, 4]
    tok.detokenize = plain  # type: ignore[method-assign]
    cfg = _cfg(tmp_path, adaptive=acfg, num_videos=2)
    pretokenize(cfg, _toks(text_tok), ShapesSource(cfg), rank=0, world_size=1)
    shard = Shard(tmp_path / "shard_00000.json")
    assert all(1 <= shard.get(i).auto_image <= 8 for i in range(4))
    vids = Shard(tmp_path / "shard_00002.json")
    assert all(1 <= vids.get(i).auto_video <= 6 for i in range(1, 3))
    # a separate video threshold: unreachable -> all N = 6 tokens, always met -> the smallest candidate;
    # images keep theirs
    for name, video_psnr, expected in (("high", 1e3, [6, 6]), ("low", -1e3, [1, 1])):
        acfg = AdaptiveBudgetConfig(enabled=True, psnr=9.7, video_psnr=video_psnr, candidates=[1, 2, 3, 5, 8])
        cfg = _cfg(tmp_path / name, adaptive=acfg, num_videos=2)
        pretokenize(cfg, _toks(text_tok), ShapesSource(cfg), rank=0, world_size=1)
        assert [Shard(tmp_path / name / "shard_00000.json").get(i).auto_image for i in range(4)] == \
            [shard.get(i).auto_image for i in range(4)]
        assert [Shard(tmp_path / name / "shard_00002.json").get(i).auto_video for i in range(1, 3)] == expected


def test_needs_a_visual_tokenizer(text_tok) -> None:
    with pytest.raises(ValueError, match="image or a video tokenizer"):
        Tokenizers(text_tok, None, None)


def test_entry_point_with_real_tokenizers_on_a_folder_source(text_tok, tmp_path) -> None:
    """tokenizers/pretokenize.py end to end: untrained tiny FlexTok/VideoFlexTok bundles, a ShapesWorld split
    written to disk (images/ + videos/ folders), adaptive budgets on."""
    import subprocess
    import sys

    from mm1d.config import FlexTokConfig, VideoFlexTokConfig
    from mm1d.data.shapes_writer import write_split
    from mm1d.tokenization.flextok import FlexTok
    from mm1d.tokenization.videoflextok import VideoFlexTok

    torch.manual_seed(0)
    small = dict(enc_depth=1, dec_depth=1, enc_dim=32, dec_dim=32, head_dim=16)
    FlexTok(FlexTokConfig(num_registers=8, **small)).save_pretrained(tmp_path / "flextok")
    VideoFlexTok(VideoFlexTokConfig(num_registers=4, chunk_frames=9, **small)).save_pretrained(tmp_path / "vft")
    text_tok.save_pretrained(tmp_path / "text")
    write_split(tmp_path / "data", "train", 5, 2, 0, cfg=ShapesConfig(frames=9), progress=False)
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "tokens"
    cmd = [sys.executable, str(root / "tokenizers/pretokenize.py"), "--config",
           str(root / "configs/tokenizer/pretokenize_tiny.yaml"), f"out_dir={out}", f"source={tmp_path / 'data'}",
           "samples_per_shard=4", f"tokenizers.text={tmp_path / 'text'}", f"tokenizers.image={tmp_path / 'flextok'}",
           f"tokenizers.video={tmp_path / 'vft'}", "adaptive.enabled=true", "adaptive.steps=1", "train.max_steps=1"]
    subprocess.run(cmd, check=True, cwd=root, capture_output=True, timeout=300)
    shards = [Shard(p) for p in sorted(out.glob("shard_*.json"))]
    assert sum(len(s) for s in shards) == 7
    assert sum(s.index["tasks"]["ti2v"] for s in shards) == 2
    v = shards[1].get(1)  # sample 5: the first video
    assert v.video.shape == (3, 4) and v.cond.shape == (8,) and 1 <= v.auto_video <= 4
    assert 1 <= shards[0].get(0).auto_image <= 8
