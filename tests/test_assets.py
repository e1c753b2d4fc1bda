"""The tokenizers and model shipped inside the package: they load, behave, and fit the size budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mm1d.checkpoint import ASSETS, load_release_bundle, resolve_asset, save_release_bundle
from mm1d.config import ModelConfig, PretrainConfig, TokenizerPaths, VocabConfig
from mm1d.data.shapes import make_batch
from mm1d.modality import Vocab
from mm1d.model.transformer import Transformer
from mm1d.tokenization.flextok import FlexTok
from mm1d.tokenization.videoflextok import VideoFlexTok


def test_assets_fit_the_package_budget() -> None:
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert size <= 30e6, f"mm1d/assets holds {size / 1e6:.1f} MB > 30 MB"


def test_shipped_flextok_is_prefix_invariant_and_decodes() -> None:
    tok = FlexTok.from_pretrained(ASSETS / "flextok-shapes-tiny")
    x = make_batch(0, 0, 4, "val").pixels
    full = tok.tokenize(x)
    assert full.shape == (4, tok.num_registers)
    assert torch.equal(tok.tokenize(x, k=4), full[:, :4])
    out = tok.detokenize(full[:, :4], steps=2, seed=0)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_shipped_videoflextok_is_time_causal() -> None:
    tok = VideoFlexTok.from_pretrained(ASSETS / "videoflextok-shapes-tiny")
    v = make_batch(0, 0, 2, "val", kind="video").pixels  # (2, 3, 17, 32, 32)
    ids = tok.tokenize(v)
    v2 = v.clone()
    v2[:, :, 9:] = -v2[:, :, 9:]  # change frames of the last two time steps
    assert torch.equal(tok.tokenize(v2)[:, :3], ids[:, :3])


def test_release_bundle_references_shipped_tokenizers(tmp_path: Path) -> None:
    vocab = VocabConfig(text_size=64, max_budget=32, max_time_steps=8)
    cfg = PretrainConfig(model=ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64),
                         vocab=vocab, tokenizers=TokenizerPaths(image="asset:flextok-shapes-tiny",
                                                                video=str(ASSETS / "videoflextok-shapes-tiny")))
    model = Transformer(cfg.model, Vocab.from_config(vocab).size)
    out = save_release_bundle(tmp_path / "b", model.state_dict(), cfg)
    assert not (out / "image").exists() and (out / "tokenizers.json").is_file()  # referenced, not copied
    rb = load_release_bundle(out)
    assert rb.tokenizer_dir("image") == ASSETS / "flextok-shapes-tiny"
    assert rb.tokenizer_dir("video") == ASSETS / "videoflextok-shapes-tiny"
    with pytest.raises(FileNotFoundError, match="shipped asset asset:nope"):
        resolve_asset("asset:nope")


def test_default_bundle_generates_right_after_install() -> None:
    """mm1d.load() with no path loads the shipped mm1d/assets/shapes-tiny bundle (main job output)."""
    import mm1d

    out = mm1d.generate(["a large red circle in the top left", "a small blue square in the center"],
                        modality="image", budget=[4, 8], seed=0, decoder_steps=2)
    assert [len(t) for t in out.tokens] == [4, 8] and out.budgets == [4, 8]
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    cap = mm1d.generate(None, modality="text", images=out.images[:1], seed=0)
    assert isinstance(cap.texts[0], str) and cap.texts[0]
    # the bundle remembers the smallest budget it was trained to caption from (caption "auto" never goes below)
    pipe = mm1d.load()
    assert pipe.understanding_min_k == 8
    # its presets are the ones configs/mm_tiny.yaml writes into the bundle (images: best of 8)
    from mm1d.config import load_config

    assert pipe.config == load_config(Path("configs/mm_tiny.yaml"), [], PretrainConfig).generation
    assert pipe.config.image.rerank == 7 and pipe.config.video.rerank == 0
    # stored in float16 for size, computed in float32 (the default GenerationConfig.dtype)
    stored = {p.dtype for p in load_release_bundle(ASSETS / "shapes-tiny").model.parameters()}
    assert stored == {torch.float16}
    assert {p.dtype for p in pipe.model.parameters()} == {torch.float32}
