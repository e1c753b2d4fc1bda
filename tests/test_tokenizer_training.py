"""Tokenizer training end to end (tiny, a few steps): the shipped YAML recipes load and train, the bundle is
written with FSQ statistics recomputed under the released weights, and the reconstruction grid is drawn.
(Resume is covered by tests/test_trainer.py, which drives the same Trainer.)"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from mm1d.config import ShapesConfig, TrainFlexTokConfig, TrainVideoFlexTokConfig, load_config
from mm1d.data.shapes import make_batch, parse_holdout
from mm1d.evaluation.reconstruction import load_tokenizer
from mm1d.tokenization import tokenizer_class
from mm1d.tokenization.shapes_teacher import train_shapes_teacher
from mm1d.training.tokenizer_training import init_from_bundle, make_data, run_tokenizer_training
from mm1d.utils import safe_torch_load

REPO = Path(__file__).resolve().parents[1]

TINY = ["model.enc_depth=1", "model.dec_depth=1", "model.enc_dim=32", "model.dec_dim=32", "model.head_dim=16",
        "train.batch_size=4", "train.log_every=1", "train.save_every=2", "train.sample_every=100",
        "train.ema_decay=0.9", "optim.warmup_steps=1", "data.val_samples=2", "data.calibrate_batches=3",
        "samples.steps=1"]


def _train(kind: str, tmp_path: Path, steps: int, extra: list[str], recipe: str = "") -> Any:
    """Train ``configs/tokenizer/<recipe or the kind's tiny recipe>.yaml`` for ``steps``; returns its config."""
    if kind == "image":
        path, schema = REPO / f"configs/tokenizer/{recipe or 'flextok_tiny'}.yaml", TrainFlexTokConfig
    else:
        path, schema = REPO / f"configs/tokenizer/{recipe or 'videoflextok_tiny'}.yaml", TrainVideoFlexTokConfig
    cfg = load_config(path, [f"out_dir={tmp_path}", f"train.max_steps={steps}", *TINY, *extra], schema=schema)
    run_tokenizer_training(cfg, kind)
    return cfg


@pytest.mark.parametrize("kind", ["image", "video"])
def test_recipe_trains_and_releases_a_calibrated_bundle(kind: str, tmp_path: Path) -> None:
    extra = ["model.num_registers=4", "model.image_size=16", "data.shapes.size=16"]
    if kind == "video":
        extra += ["model.chunk_frames=5", "data.shapes.frames=5"]
    cfg = _train(kind, tmp_path, 3, extra)
    out = tmp_path
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x][-1] == 3
    tok = tokenizer_class(kind).from_pretrained(out / "bundle")
    assert tok.cfg.prediction == "x0" and tok.cfg.aux_recon_mode == "zero_noise"  # the shipped recipe
    # the released statistics are those of the calibration batches under the released (EMA) weights
    assert json.loads((out / "config.json").read_text())["data"]["calibrate_batches"] == 3
    frames = cfg.data.shapes.frames if kind == "video" else 1
    data = iter(make_data(cfg.data, cfg.train, kind, 16, frames, cfg.seed + 2))
    with torch.no_grad():
        zs = [tok.encode_registers(tok.latent.encode(next(data))) for _ in range(3)]
    z = torch.cat([x.reshape(-1, *x.shape[-2:]) for x in zs])
    assert torch.allclose(tok.fsq.running_mean, z.mean(0), atol=1e-5)
    assert torch.allclose(tok.fsq.running_var, z.var(0, unbiased=False), atol=1e-5)
    grids = sorted((out / "samples").iterdir())
    assert grids and grids[-1].suffix == (".png" if kind == "image" else ".gif")

    # a mid-run checkpoint loads as a tokenizer (live weights, recalibrated), for eval_reconstruction RUN@STEP
    mid = load_tokenizer(f"{out}@2", kind)
    state = safe_torch_load(out / "checkpoints" / "step00000002" / "state.pt")["model"]
    assert torch.equal(mid.enc_patch.weight, state["enc_patch.weight"])
    assert not torch.equal(mid.fsq.running_mean, state["fsq.running_mean"])  # recomputed, not the lagging one
    with pytest.raises(FileNotFoundError, match="no checkpoint step00000007"):
        load_tokenizer(f"{out}@7", kind)


def test_world_decoder_stage_renders_every_pair_and_keeps_the_ids(tmp_path: Path) -> None:
    """flextok_tiny_decoder_world.yaml (stage 3): the decoder trains on every colour+shape pair, held-out ones
    included, while the frozen encoder keeps the ids of the bundle it starts from."""
    extra = ["model.num_registers=4", "model.image_size=16", "data.shapes.size=16"]
    _train("image", tmp_path / "base", 2, extra)
    base = tokenizer_class("image").from_pretrained(tmp_path / "base" / "bundle")
    cfg = _train("image", tmp_path / "world", 2, [*extra, f"init_from={tmp_path / 'base' / 'bundle'}", "seed=1"],
                 recipe="flextok_tiny_decoder_world")
    assert cfg.freeze_encoder and cfg.data.shapes.holdout == []
    held = parse_holdout(ShapesConfig().holdout)

    def pairs(shapes: ShapesConfig) -> set[tuple[str, str]]:
        return {(o["colour"], o["shape"]) for a in make_batch(0, 0, 256, "train", cfg=shapes).attrs
                for o in a["objects"]}

    assert pairs(cfg.data.shapes) & held and not pairs(ShapesConfig()) & held  # the default train split: none
    world = tokenizer_class("image").from_pretrained(tmp_path / "world" / "bundle")
    x = make_batch(3, 0, 8, "holdout", size=16).pixels
    assert torch.equal(world.tokenize(x), base.tokenize(x))
    assert not torch.equal(world.autoencode(x, 4), base.autoencode(x, 4))  # the decoder trained


def test_repa_recipe_aligns_the_tokens_and_releases_without_its_teacher(tmp_path: Path) -> None:
    """flextok_tiny_repa.yaml trains the REPA term on the kept tokens; the released bundle loads after the
    teacher is gone (it is built only to train), and the plain stage 2 starts from it with the same ids."""
    teacher = tmp_path / "teacher"
    train_shapes_teacher(teacher, steps=2, batch_size=8, dim=16, size=16, progress=False)
    small = ["model.num_registers=4", "model.image_size=16", "data.shapes.size=16"]
    extra = [*small, "model.repa_dim=16", f"model.repa_extractor=shapes:{teacher}"]
    _train("image", tmp_path / "run", 2, extra, recipe="flextok_tiny_repa")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    repa = [x["repa"] for x in lines if "loss" in x]
    assert len(repa) == 2 and all(0.0 < r < 2.0 for r in repa)  # 1 - cosine, logged every step
    shutil.rmtree(teacher)
    tok = tokenizer_class("image").from_pretrained(tmp_path / "run" / "bundle")
    assert tok.cfg.repa_pass == "tokens" and tok.repa_proj is not None
    x = make_batch(0, 0, 4, "val", size=16).pixels
    ids = tok.tokenize(x)
    # stage 2 (the plain decoder recipe, no REPA) starts from it and keeps its ids
    _train("image", tmp_path / "ft", 1, [*small, f"init_from={tmp_path / 'run' / 'bundle'}", "freeze_encoder=true"],
           recipe="flextok_tiny_decoder")
    ft = tokenizer_class("image").from_pretrained(tmp_path / "ft" / "bundle")
    assert ft.repa_proj is None and torch.equal(ft.tokenize(x), ids)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_decoder_finetune_keeps_the_token_ids(kind: str, tmp_path: Path) -> None:
    """init_from + freeze_encoder: only the decoder moves, the FSQ statistics stay, and the released bundle
    gives exactly the ids of the bundle it started from (pretokenized data stays valid)."""
    extra = ["model.num_registers=4", "model.image_size=16", "data.shapes.size=16"]
    if kind == "video":
        extra += ["model.chunk_frames=5", "data.shapes.frames=5"]
    _train(kind, tmp_path / "base", 2, extra)
    base = tokenizer_class(kind).from_pretrained(tmp_path / "base" / "bundle")
    cfg = _train(kind, tmp_path / "ft", 3, [*extra, f"init_from={tmp_path / 'base' / 'bundle'}",
                                            "freeze_encoder=true", "optim.lr=1e-2", "seed=1"])
    ft = tokenizer_class(kind).from_pretrained(tmp_path / "ft" / "bundle")
    frames = cfg.data.shapes.frames if kind == "video" else 1
    x = next(iter(make_data(cfg.data, cfg.train, kind, 16, frames, 99)))
    assert torch.equal(ft.tokenize(x), base.tokenize(x))
    mid = load_tokenizer(f"{tmp_path / 'ft'}@2", kind)  # RUN@STEP is not recalibrated either
    assert torch.equal(mid.fsq.running_var, base.fsq.running_var) and torch.equal(mid.tokenize(x), base.tokenize(x))
    b_sd, f_sd = base.state_dict(), ft.state_dict()
    enc = [n for n in b_sd if n.startswith(base.ENCODER_PREFIXES)]
    dec = [n for n in b_sd if n.startswith("dec_")]
    assert enc and dec
    assert [n for n in enc if not torch.equal(b_sd[n], f_sd[n])] == []  # encoder, registers and FSQ statistics
    assert sum(not torch.equal(b_sd[n], f_sd[n]) for n in dec) > len(dec) // 2  # the decoder trained

    # a frozen model keeps its quantizer in eval mode: training codes do not depend on the batch
    frozen = set(ft.freeze_encoder())
    assert frozen and frozen <= set(enc)
    assert all(p.requires_grad == (n not in frozen) for n, p in ft.named_parameters())
    ft.train()
    assert ft.training and not ft.fsq.training
    lat = ft.latent.encode(x)
    assert torch.equal(ft.quantize(lat)[1][:2], ft.quantize(lat[:2])[1])

    # a deeper decoder grows from the bundle: the new adaLN-zero blocks start as identities, so the grown
    # model reconstructs exactly as the bundle does before any training
    grown = tokenizer_class(kind)(replace(base.cfg, dec_depth=base.cfg.dec_depth + 2)).eval()
    init_from_bundle(grown, str(tmp_path / "base" / "bundle"), x, frozen=True)
    assert len(grown.dec_blocks) == len(base.dec_blocks) + 2
    k = base.num_registers
    assert torch.equal(grown.autoencode(x, k), base.autoencode(x, k))
    grown.save_pretrained(tmp_path / "grown")
    with pytest.raises(ValueError, match="do not fit this run's model section"):  # shrinking is refused
        init_from_bundle(tokenizer_class(kind)(base.cfg), str(tmp_path / "grown"), x, frozen=True)

    # a linear output head widens into an MLP head (model.head_mlp) that starts as the bundle's head
    wide = tokenizer_class(kind)(replace(base.cfg, head_mlp=3 * base.cfg.dec_dim)).eval()
    init_from_bundle(wide, str(tmp_path / "base" / "bundle"), x, frozen=True)
    assert wide.dec_final.out is not None and base.dec_final.out is None
    assert base.dec_final.linear.weight.abs().sum() > 0  # trained away from its zero init
    torch.testing.assert_close(wide.autoencode(x, k), base.autoencode(x, k), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs at least"):
        init_from_bundle(tokenizer_class(kind)(replace(base.cfg, head_mlp=base.cfg.dec_dim)),
                         str(tmp_path / "base" / "bundle"), x, frozen=True)

    # freeze_quantizer: encoder and decoder train, the FSQ statistics stay those of init_from (no recalibration)
    _train(kind, tmp_path / "fq", 2, [*extra, f"init_from={tmp_path / 'base' / 'bundle'}", "freeze_quantizer=true",
                                      "optim.lr=1e-2", "seed=2"])
    fq_sd = tokenizer_class(kind).from_pretrained(tmp_path / "fq" / "bundle").state_dict()
    stats = [n for n in enc if n.startswith("fsq.")]
    assert stats and all(torch.equal(b_sd[n], fq_sd[n]) for n in stats)
    assert sum(not torch.equal(b_sd[n], fq_sd[n]) for n in enc) > len(enc) // 2  # the encoder trained

    with pytest.raises(ValueError, match="freeze_encoder=true needs init_from"):
        _train(kind, tmp_path / "bad", 1, [*extra, "freeze_encoder=true"])
    with pytest.raises(ValueError, match="freeze_quantizer=true needs init_from"):
        _train(kind, tmp_path / "bad4", 1, [*extra, "freeze_quantizer=true"])
    with pytest.raises(ValueError, match="do not fit this run's model section"):
        _train(kind, tmp_path / "bad2", 1, [*extra, f"init_from={tmp_path / 'base' / 'bundle'}",
                                             "model.dec_dim=64"])
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        _train(kind, tmp_path / "bad3", 1, [*extra, f"init_from={tmp_path / 'nowhere'}", "freeze_encoder=true"])
