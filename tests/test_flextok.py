"""FlexTok: prefix invariance, nested dropout, decoding determinism and parity, bundles, errors, VAE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mm1d.config import FlexTokConfig
from mm1d.tokenization.flextok import FlexTok, nested_dropout_mask, parameter_report, sample_keep_k
from mm1d.tokenization.repa import RandomConvFeatures


def tiny_cfg(**kw: object) -> FlexTokConfig:
    base = dict(
        image_size=16, patch_size=4, num_registers=8, fsq_levels=[8, 5, 5, 5], enc_depth=2, enc_dim=32,
        dec_depth=2, dec_dim=32, head_dim=16, decode_steps=3,
    )
    base.update(kw)
    return FlexTokConfig(**base)  # type: ignore[arg-type]


def make_model(seed: int = 0, **kw: object) -> FlexTok:
    torch.manual_seed(seed)
    model = FlexTok(tiny_cfg(**kw))
    # non-zero adaLN / head so the decoder output depends on its inputs (zero-init would hide bugs)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if "modulation" in name or name.startswith(("dec_final.linear", "dec_final.out")):
                prm.normal_(0, 0.05)
    return model.eval()


def images(b: int = 3, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("quant_norm", ["none", "layernorm", "batch", "renorm"])
def test_prefix_invariance(quant_norm: str) -> None:
    model = make_model(quant_norm=quant_norm)
    x = images(3)
    full = model.tokenize(x)
    assert full.shape == (3, 8) and full.dtype == torch.long
    assert full.min() >= 0 and full.max() < model.codebook_size
    for k in (1, 2, 5, 8):
        assert torch.equal(model.tokenize(x, k=k), full[:, :k])
    z_full = model.encode_registers(x)
    z_3 = model.encode_registers(x, 3)
    assert z_3.shape == (3, 3, 4)
    assert torch.allclose(z_3, z_full[:, :3], atol=1e-5)


def test_nested_dropout_mask_and_sampling() -> None:
    keep = torch.tensor([1, 3, 8])
    m = nested_dropout_mask(keep, 8)
    for i, k in enumerate(keep.tolist()):
        assert not m[i, :k].any() and m[i, k:].all()
    gen = torch.Generator().manual_seed(0)
    assert set(sample_keep_k(500, 8, "pow2", gen).tolist()) == {1, 2, 4, 8}
    assert set(sample_keep_k(500, 12, "pow2", gen).tolist()) == {1, 2, 4, 8, 12}
    assert set(sample_keep_k(500, 8, "uniform", gen).tolist()) == set(range(1, 9))
    assert set(sample_keep_k(500, 8, "uniform_pow2", gen).tolist()) == {1, 2, 4, 8}
    assert set(sample_keep_k(10, 8, "none", gen).tolist()) == {8}
    with pytest.raises(ValueError, match="nested dropout"):
        sample_keep_k(2, 8, "bogus")
    # in the decoder, exactly the positions >= k carry the mask token; null rows carry the null condition
    model = make_model()
    codes = model.fsq.indices_to_codes(torch.randint(0, 1000, (3, 8)))
    reg = model.register_inputs(codes, keep, torch.tensor([False, False, True]))
    is_mask = torch.isclose(reg, model.mask_token.expand_as(reg)).all(-1)
    assert torch.equal(is_mask[:2], m[:2])
    assert torch.isclose(reg[2], model.null_cond.expand(8, -1)).all()


def test_detokenize_deterministic_and_guidance() -> None:
    model = make_model()
    ids = model.tokenize(images(2), k=4)
    a = model.detokenize(ids, steps=3, seed=7)
    b = model.detokenize(ids, steps=3, seed=7)
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, model.detokenize(ids, steps=3, seed=8))
    # guidance at scale 1 (CFG or APG) equals the conditional decode; scale > 1 changes the result
    g1 = model.detokenize(ids, steps=3, seed=7, guidance_scale=1.0, apg=True)
    c1 = model.detokenize(ids, steps=3, seed=7, guidance_scale=1.0, apg=False)
    assert torch.equal(g1, c1)
    g3 = model.detokenize(ids, steps=3, seed=7, guidance_scale=3.0, apg=True)
    assert not torch.allclose(g3, g1)
    # zero-noise decoding is one deterministic pass: it ignores the seed and the step count, and it is
    # what decode_mode="one_step" selects by default
    z1 = model.detokenize(ids, steps=1, seed=1, zero_noise=True)
    assert torch.equal(z1, model.detokenize(ids, steps=5, seed=2, zero_noise=True))
    one_step = make_model(decode_mode="one_step")
    assert torch.equal(one_step.detokenize(ids), z1)
    assert torch.equal(one_step.detokenize(ids, steps=3, seed=7, zero_noise=False), a)


def test_ragged_batch_equals_one_at_a_time() -> None:
    model = make_model()
    full = model.tokenize(images(3))
    ragged = [full[0, :1], full[1, :4], full[2, :8]]
    for scale, apg in ((1.0, False), (2.5, True)):
        batch = model.detokenize(ragged, steps=3, guidance_scale=scale, apg=apg, seed=11)
        for i, r in enumerate(ragged):
            alone = model.detokenize([r], steps=3, guidance_scale=scale, apg=apg, seed=11 + i)
            assert torch.allclose(batch[i : i + 1], alone, atol=1e-5)
    # the tensor and list forms agree; so do explicit per-sample seeds
    t = model.detokenize(full[:, :4], steps=2, seed=3)
    lst = model.detokenize(list(full[:, :4]), steps=2, seed=[3, 4, 5])
    assert torch.allclose(t, lst, atol=1e-6)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = make_model(quant_norm="batch", register_summary=True)
    model.train()
    model.training_loss(images(4))  # moves the FSQ running statistics away from their init
    model.eval()
    x = images(2, seed=5)
    ids = model.tokenize(x)
    pix = model.detokenize(ids[:, :4], steps=2, seed=0)
    model.save_pretrained(tmp_path / "bundle")
    meta = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert meta["config"]["num_registers"] == 8
    loaded = FlexTok.from_pretrained(tmp_path / "bundle")
    assert not loaded.training
    assert torch.equal(loaded.tokenize(x), ids)
    assert torch.equal(loaded.detokenize(ids[:, :4], steps=2, seed=0), pix)
    assert not list(tmp_path.glob("bundle/.*.tmp"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "bundle" / "model.safetensors").unlink()
        FlexTok.from_pretrained(tmp_path / "bundle")
    with pytest.raises(FileNotFoundError, match="config.json"):
        FlexTok.from_pretrained(tmp_path / "nowhere")


def test_bad_inputs() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="3 channels"):
        model.tokenize(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="16x16"):
        model.tokenize(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.tokenize(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.tokenize(torch.full((1, 3, 16, 16), 255.0))
    x = images(1)
    for k in (0, 9, -1):
        with pytest.raises(ValueError, match="k must be"):
            model.tokenize(x, k=k)
    with pytest.raises(ValueError, match="outside the codebook"):
        model.detokenize(torch.tensor([[0, 1000]]), steps=1)
    with pytest.raises(ValueError, match="outside the codebook"):
        model.detokenize([torch.tensor([-3])], steps=1)
    with pytest.raises(ValueError, match="1 to 8 tokens"):
        model.detokenize(torch.zeros(1, 9, dtype=torch.long), steps=1)
    with pytest.raises(ValueError, match="1 to 8 tokens"):
        model.detokenize([torch.zeros(0, dtype=torch.long)], steps=1)
    with pytest.raises(ValueError, match="integer"):
        model.detokenize(torch.zeros(1, 2), steps=1)
    with pytest.raises(ValueError, match="invalid FlexTok config"):
        FlexTok(tiny_cfg(patch_size=3))
    with pytest.raises(ValueError, match="repa_dim"):
        FlexTok(tiny_cfg(repa_weight=1.0))


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"nested_dropout": "none", "quant_norm": "rms", "timestep_sampling": "uniform"},
        {"aux_recon_weight": 1.0, "aux_recon_mode": "zero_noise", "register_summary": True},
        {"aux_recon_weight": 0.5, "aux_recon_mode": "x0", "perturb_prob": 1.0, "perturb_fraction": 0.5},
        {"prediction": "x0", "aux_recon_weight": 1.0},
        {"prediction": "x0", "aux_recon_weight": 1.0, "aux_recon_mode": "zero_noise", "recon_contrast_weight": 10.0},
        {"repa_weight": 0.5, "repa_dim": 24, "repa_extractor": "random_conv", "repa_layer": 0},
        {"patch_mlp": 64, "prediction": "x0", "aux_recon_weight": 1.0, "aux_recon_mode": "zero_noise"},
    ],
)
def test_training_loss_backward_and_reproducible(kw: dict) -> None:
    model = make_model(**kw)
    model.train()
    x = images(4)
    loss, metrics = model.training_loss(x, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert metrics["loss"] == pytest.approx(float(loss.detach()))
    assert 1 <= metrics["keep_k"] <= 8 and metrics["codes_used"] >= 1
    if kw.get("nested_dropout") == "none":
        assert metrics["keep_k"] == 8
    for key in ("aux", "repa"):
        assert (key in metrics) == (f"{key}_weight" in kw or f"{key}_recon_weight" in kw)
    loss.backward()
    assert model.enc_registers.grad is not None and model.enc_registers.grad.abs().sum() > 0
    assert model.dec_patch.weight.grad.abs().sum() > 0
    if "repa_weight" in kw:
        assert model.repa_proj[0].weight.grad.abs().sum() > 0
    if kw.get("quant_norm") != "batch":
        again, _ = model.training_loss(x, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(again, loss)


def test_rf_weight_scales_the_flow_term_and_zero_skips_it() -> None:
    """loss = rf_weight * rf + aux_recon_weight * aux with the same random draws for every rf_weight; at 0
    the flow pass is skipped (no "rf" metric) and only the one-step decoder trains."""
    kw = dict(prediction="x0", aux_recon_weight=1.0, aux_recon_mode="zero_noise", quant_norm="rms")
    runs = {}
    for w in (1.0, 0.25, 0.0):
        model = make_model(seed=3, rf_weight=w, **kw).train()
        runs[w] = model.training_loss(images(4), generator=torch.Generator().manual_seed(5))
    (one, m1), (quarter, mq), (zero, m0) = runs[1.0], runs[0.25], runs[0.0]
    one, quarter = one.detach(), quarter.detach()
    assert m0["aux"] == pytest.approx(m1["aux"]) and m0["aux"] == pytest.approx(mq["aux"])
    assert "rf" not in m0 and mq["rf"] == pytest.approx(m1["rf"])
    assert float(one) == pytest.approx(m1["rf"] + m1["aux"], rel=1e-5)
    assert float(quarter) == pytest.approx(0.25 * m1["rf"] + m1["aux"], rel=1e-5)
    assert float(zero) == pytest.approx(m1["aux"], rel=1e-5)
    zero.backward()
    model = make_model(seed=3, rf_weight=0.0, **kw)
    with pytest.raises(ValueError, match="rf_weight=0"):
        make_model(rf_weight=0.0, prediction="x0", aux_recon_weight=1.0)  # x0 mode needs the flow pass
    with pytest.raises(ValueError, match="must be >= 0"):
        make_model(rf_weight=-1.0)
    assert model.cfg.rf_weight == 0.0


def test_contrast_weighting_only_reweights() -> None:
    """A flat image has no contrast, so the weighted loss equals the plain one; a scene with an object
    does not."""
    kw = dict(prediction="x0", aux_recon_weight=1.0, aux_recon_mode="zero_noise", quant_norm="rms")
    plain, weighted = make_model(seed=2, **kw), make_model(seed=2, recon_contrast_weight=10.0, **kw)
    flat = torch.full((2, 3, 16, 16), -0.5)
    scene = flat.clone()
    scene[:, :, 4:8, 4:8] = 0.9

    def loss(model: FlexTok, x: torch.Tensor) -> torch.Tensor:
        return model.training_loss(x, generator=torch.Generator().manual_seed(0))[0]

    assert torch.allclose(loss(plain, flat), loss(weighted, flat))
    assert not torch.allclose(loss(plain, scene), loss(weighted, scene))


def test_x0_prediction_decoder_outputs_the_implied_velocity() -> None:
    """With prediction="x0" the head's output is the clean estimate: x_t - t * v gives it back for every t."""
    v_model, x_model = make_model(seed=1), make_model(seed=1, prediction="x0")
    x_model.load_state_dict(v_model.state_dict())
    codes, _ = v_model.quantize(images(2))
    keep, null = torch.tensor([8, 3]), torch.zeros(2, dtype=torch.bool)
    x_t = torch.randn(2, 3, 16, 16)
    t = torch.tensor([0.25, 0.8])
    head, _ = v_model.decoder_forward(x_t, t, codes, keep, null)  # the same head output, read as v
    v, _ = x_model.decoder_forward(x_t, t, codes, keep, null)
    assert torch.allclose(x_t - t[:, None, None, None] * v, head, atol=1e-5)
    assert not torch.allclose(v, head)


def test_repa_custom_teacher_and_latent_perturbation_changes_codes() -> None:
    model = make_model(repa_weight=1.0, repa_dim=8)
    model.set_repa_teacher(RandomConvFeatures(8))  # (B, 8, 4, 4) map, resized to the 4x4 patch grid
    model.train()
    loss, metrics = model.training_loss(images(2))
    assert 0 <= metrics["repa"] <= 2
    # the frozen teacher is not part of the model: checkpoints and bundles hold the tokenizer only
    assert not any(key.startswith("_teacher") for key in model.state_dict())
    configured = make_model(repa_weight=1.0, repa_dim=8, repa_extractor="random_conv").train()
    configured.training_loss(images(2))  # builds the teacher from the spec
    assert not any(key.startswith("_teacher") for key in configured.state_dict())
    # perturbation: with prob 1 and fraction 1 every code is random, so the loss no longer sees the encoder
    pert = make_model(perturb_prob=1.0, perturb_fraction=1.0)
    pert.train()
    loss, _ = pert.training_loss(images(2))
    loss.backward()
    assert pert.enc_registers.grad is None or pert.enc_registers.grad.abs().sum() == 0


@pytest.mark.parametrize("repa_pass", ["flow", "one_step", "tokens"])
def test_repa_pass_picks_the_aligned_decoder_pass(repa_pass: str) -> None:
    # one_step aligns the zero-input pass, which sees only the codes: with every register kept and no
    # condition dropout its REPA term cannot depend on the flow draws (noise, t); the flow pass's does
    kw = dict(repa_weight=1.0, repa_dim=8, repa_pass=repa_pass, aux_recon_weight=1.0, aux_recon_mode="zero_noise",
              nested_dropout="none", cond_dropout=0.0, quant_norm="none")
    model = make_model(**kw)
    model.set_repa_teacher(RandomConvFeatures(8))
    model.train()
    x = images(2)
    _, m0 = model.training_loss(x, generator=torch.Generator().manual_seed(0))
    _, m1 = model.training_loss(x, generator=torch.Generator().manual_seed(1))
    assert m0["rf"] != m1["rf"]
    assert (m0["repa"] == m1["repa"]) == (repa_pass != "flow")
    # one_step and tokens REPA work without the flow pass (rf_weight=0) and train the encoder through the codes
    if repa_pass != "flow":
        model = make_model(**{**kw, "rf_weight": 0.0})
        model.set_repa_teacher(RandomConvFeatures(8))
        model.train()
        loss, metrics = model.training_loss(x)
        assert "rf" not in metrics and "repa" in metrics
        loss.backward()
        assert model.enc_registers.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="repa_pass"):
        FlexTok(tiny_cfg(repa_weight=1.0, repa_dim=8, repa_pass="one_step"))  # no zero-noise pass to align
    with pytest.raises(ValueError, match="rf_weight"):
        FlexTok(tiny_cfg(repa_weight=1.0, repa_dim=8, rf_weight=0.0, aux_recon_weight=1.0,
                         aux_recon_mode="zero_noise"))
    # repa_layer names the decoder block of the flow and one-step passes; the tokens pass reads none
    with pytest.raises(ValueError, match="repa_layer"):
        FlexTok(tiny_cfg(repa_weight=1.0, repa_dim=8, repa_layer=2))
    assert FlexTok(tiny_cfg(repa_weight=1.0, repa_dim=8, repa_layer=2, repa_pass="tokens")).repa_proj is not None


def test_tokens_repa_reads_only_the_kept_codes() -> None:
    """repa_pass='tokens': the readout sees the first keep_k codes and nothing of the decoder."""
    model = make_model(repa_weight=1.0, repa_dim=8, repa_pass="tokens", quant_norm="none").train()
    readout = model.repa_proj
    n, dd = model.num_registers, model.cfg.dec_dim
    reg = torch.randn(3, n, dd)
    keep = torch.tensor([1, 3, n])
    kept = ~nested_dropout_mask(keep, n)
    base = readout(reg, kept)
    assert base.shape == (3, model.num_patches, 8)
    changed = reg.clone()
    changed[0, 1:] = torch.randn(n - 1, dd)  # registers past row 0's prefix: invisible to it
    changed[1, 3:] = torch.randn(n - 3, dd)
    out = readout(changed, kept)
    torch.testing.assert_close(out[:2], base[:2])
    changed[1, 2] = torch.randn(dd)  # inside row 1's prefix: visible
    assert not torch.allclose(readout(changed, kept)[1], base[1])
    # the REPA term's gradient reaches the encoder but no decoder block
    model.set_repa_teacher(RandomConvFeatures(8))
    model.cfg.aux_recon_weight = 0.0
    model.cfg.rf_weight = 0.0  # only the REPA term is left in the loss (config checks ran at construction)
    loss, metrics = model.training_loss(images(2))
    assert loss.item() == pytest.approx(metrics["repa"])
    loss.backward()
    assert model.enc_registers.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.dec_blocks.parameters())


def test_init_from_moves_between_repa_and_plain_runs(tmp_path: Path) -> None:
    """A REPA-trained bundle starts a plain stage 2 (its REPA head is dropped), and a plain bundle starts a
    REPA run (the run's head is kept); the token ids are the bundle's either way."""
    from mm1d.training.tokenizer_training import init_from_bundle

    x = images(4)
    repa = make_model(repa_weight=1.0, repa_dim=8, repa_pass="tokens").eval()
    repa.save_pretrained(tmp_path / "repa")
    plain = make_model(seed=1).eval()
    init_from_bundle(plain, str(tmp_path / "repa"), x, frozen=True)
    assert torch.equal(plain.tokenize(x), repa.tokenize(x))
    assert not any(key.startswith("repa_proj.") for key in plain.state_dict())
    plain.save_pretrained(tmp_path / "plain")
    again = make_model(seed=2, repa_weight=1.0, repa_dim=8, repa_pass="flow").eval()
    head = {k: v.clone() for k, v in again.state_dict().items() if k.startswith("repa_proj.")}
    for ref in ("plain", "repa"):  # no head, or another kind of head: the run's own stays
        init_from_bundle(again, str(tmp_path / ref), x, frozen=True)
        assert head and all(torch.equal(again.state_dict()[k], v) for k, v in head.items())
        assert torch.equal(again.tokenize(x), repa.tokenize(x))


def test_compile_blocks_compiles_what_training_runs() -> None:
    from mm1d.training.engine import compile_in_place

    model = make_model(prediction="x0", aux_recon_weight=1.0, aux_recon_mode="zero_noise").train()
    x = images(2)
    eager, _ = model.training_loss(x, generator=torch.Generator().manual_seed(0))
    keys = set(model.state_dict())
    compile_in_place(model)  # the engine's call for engine.compile=true
    blocks = [*model.enc_blocks, *model.dec_blocks]
    assert all(blk._compiled_call_impl is not None for blk in blocks)
    assert set(model.state_dict()) == keys  # checkpoints stay interchangeable with eager runs
    model.compile_blocks(backend="eager")  # recompile without inductor: same numbers as eager
    again, _ = model.training_loss(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(again, eager)


def test_vae_backend(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5, shift_factor=0.1,
    )
    vae.save_pretrained(tmp_path / "vae")
    cfg = tiny_cfg(latent="vae", vae_path=str(tmp_path / "vae"), latent_channels=4, latent_downsample=2,
                   patch_size=2)
    torch.manual_seed(0)
    model = FlexTok(cfg).eval()
    assert model.latent.scaling_factor == 0.5 and model.latent.shift_factor == 0.1
    assert not any(k.startswith("latent") for k in model.state_dict())
    x = images(2)
    lat = model.latent.encode(x)
    assert lat.shape == (2, 4, 8, 8)
    ids = model.tokenize(x)
    assert torch.equal(model.tokenize(x, k=3), ids[:, :3])
    out = model.detokenize(ids, steps=2, seed=0)
    assert out.shape == (2, 3, 16, 16)
    model.train()
    loss, _ = model.training_loss(x)
    loss.backward()
    assert all(p.grad is None for p in model.latent.vae.parameters())
    model.eval()
    model.save_pretrained(tmp_path / "bundle")
    assert (tmp_path / "bundle" / "vae" / "config.json").is_file()
    loaded = FlexTok.from_pretrained(tmp_path / "bundle")
    assert torch.equal(loaded.tokenize(x), ids)
    assert torch.equal(loaded.detokenize(ids, steps=2, seed=0), out)
    with pytest.raises(ValueError, match="latent_channels"):
        FlexTok(tiny_cfg(latent="vae", vae_path=str(tmp_path / "vae"), latent_channels=16, latent_downsample=2))
    with pytest.raises(FileNotFoundError, match="VAE directory"):
        FlexTok(tiny_cfg(latent="vae", vae_path=str(tmp_path / "missing"), latent_channels=4, latent_downsample=2))
    with pytest.raises(ValueError, match="vae_path"):
        FlexTok(tiny_cfg(latent="vae", latent_channels=4, latent_downsample=2))


def test_d18_d28_parameter_count() -> None:
    from mm1d.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "tokenizer" / "flextok_d18_d28.yaml"
    from dataclasses import dataclass, field

    @dataclass
    class Wrapper:
        model: FlexTokConfig = field(default_factory=FlexTokConfig)

    cfg = load_config(path, [], Wrapper).model
    counts = parameter_report(cfg)
    # 12 d^2 per block: encoder 18 x 1152, decoder 28 x 1792 -> about 1.37B without adaLN
    assert 1.30e9 < counts["total_without_adaln"] < 1.45e9
    assert counts["decoder_adaln"] > 0.9 * 28 * 12 * 1792**2


def test_repa_hf_backbone(tmp_path: Path) -> None:
    """The 'hf:<dir>' REPA teacher: a tiny random DINOv2 saved locally, patch tokens only."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, patch_size=4, image_size=16
    )
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    model = make_model(image_size=32, repa_weight=1.0, repa_dim=16, repa_extractor=f"hf:{tmp_path / 'dino'}")
    model.train()
    loss, metrics = model.training_loss(images(2, size=32))
    assert "repa" in metrics and torch.isfinite(loss)
    teacher = model._teacher_fn()
    assert teacher(images(2, size=32)).shape == (2, 4, 16)  # 32 px -> grid 2 -> 2x2 patch tokens
    with pytest.raises(FileNotFoundError, match="REPA feature extractor"):
        FlexTok(tiny_cfg(repa_weight=1.0, repa_dim=16, repa_extractor=f"hf:{tmp_path / 'none'}")).training_loss(
            images(1)
        )


def test_calibrated_quantizer_gives_the_training_codes() -> None:
    """After calibrate_quantizer on a batch, eval-mode ids equal the train-mode (batch-statistics) ids."""
    model = make_model(quant_norm="batch")
    x = images(16, seed=3)
    with torch.no_grad():
        model.train()
        train_ids = model.quantize(model.latent.encode(x))[1]
        model.eval()
        stale = model.tokenize(x)
        assert model.calibrate_quantizer([x[:8], x[8:]]) == 16
    assert not torch.equal(stale, train_ids)  # the fresh running averages are far off
    assert torch.equal(model.tokenize(x), train_ids)
    assert torch.equal(model.tokenize(x, 3), train_ids[:, :3])  # still prefix-invariant
    with pytest.raises(ValueError, match="quant_norm 'batch' or 'renorm'"):
        make_model(quant_norm="rms").calibrate_quantizer([x])


def test_frozen_quantizer_trains_the_encoder_on_batch_independent_codes() -> None:
    """freeze_quantizer(): in train mode a sample's codes no longer depend on its batch and equal tokenize's,
    the FSQ statistics stay put, and the encoder still gets gradients."""
    model = make_model(quant_norm="batch", prediction="x0", aux_recon_weight=1.0, aux_recon_mode="zero_noise")
    x = images(8, seed=4)
    model.calibrate_quantizer([x])
    model.train()
    with torch.no_grad():
        alone = model.quantize(model.latent.encode(x[:2]))[1]
        batched = model.quantize(model.latent.encode(x))[1][:2]
    assert not torch.equal(alone, batched)  # batch statistics: the companions change the ids
    model.freeze_quantizer()
    model.train()
    assert model.training and not model.fsq.training
    stats = model.fsq.running_mean.clone(), model.fsq.running_var.clone()
    with torch.no_grad():
        alone = model.quantize(model.latent.encode(x[:2]))[1]
        batched = model.quantize(model.latent.encode(x))[1][:2]
    assert torch.equal(alone, batched) and torch.equal(alone, model.tokenize(x[:2]))
    loss, _ = model.training_loss(x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.enc_registers.grad is not None and model.enc_registers.grad.abs().sum() > 0
    assert torch.equal(model.fsq.running_mean, stats[0]) and torch.equal(model.fsq.running_var, stats[1])


def test_mlp_patch_head_lifts_the_rank_bound_and_starts_at_zero(tmp_path: Path) -> None:
    """A linear head emits patches in a dec_dim-dimensional affine subspace (here 32 of 48 values); the
    MLP head of ``patch_mlp`` does not. Both start at zero output (adaLN-zero), and the MLP stems survive
    a bundle round trip."""

    def head_outputs(model: FlexTok) -> torch.Tensor:
        codes, _ = model.quantize(images(8, seed=1))
        keep, null = torch.full((8,), 8), torch.zeros(8, dtype=torch.bool)
        x_t, t = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.rand(8)
        out = []
        handle = model.dec_final.register_forward_hook(lambda m, i, o: out.append(o))
        with torch.no_grad():
            model.decoder_forward(x_t, t, codes, keep, null)
        handle.remove()
        rows = out[0].reshape(-1, out[0].shape[-1])  # (B * P, C p p) = (128, 48)
        return rows - rows.mean(0)

    assert int(torch.linalg.matrix_rank(head_outputs(make_model()))) <= 32
    mlp = make_model(patch_mlp=64)
    assert int(torch.linalg.matrix_rank(head_outputs(mlp))) == 48
    assert {"enc_patch.out.1.weight", "dec_patch.out.1.weight", "dec_final.out.1.weight"} <= set(mlp.state_dict())
    fresh = FlexTok(tiny_cfg(patch_mlp=64))
    assert head_outputs(fresh).abs().max() == 0
    x = images(2, seed=5)
    mlp.save_pretrained(tmp_path / "bundle")
    loaded = FlexTok.from_pretrained(tmp_path / "bundle")
    assert loaded.cfg.patch_mlp == 64
    assert torch.equal(loaded.autoencode(x, 4, steps=2, seed=0), mlp.autoencode(x, 4, steps=2, seed=0))


def test_compact_decoder_equals_the_full_register_sequence() -> None:
    """Inference runs the registers past the longest kept prefix as one token with a log(copies) attention
    bias: the velocity equals the full 16 + N token pass for every k, for ragged rows and for null
    (unconditional) rows, and the blocks see only P + kmax + 1 tokens."""
    model = make_model(register_summary=True)
    with torch.no_grad():
        model.mask_token.normal_(0, 1.0)  # distinct from the null condition, so a wrong count would show
        model.null_cond.normal_(0, 1.0)
    seen: list[int] = []
    model.dec_blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    codes = model.fsq.indices_to_codes(model.tokenize(images(4)))  # (4, 8, D_fsq)
    x, t = torch.randn(4, 3, 16, 16), torch.rand(4)
    p, n = model.num_patches, model.num_registers
    for keep_k in ([1, 1, 1, 1], [1, 3, 2, 1], [5, 2, 7, 1], [8, 8, 8, 8], [7, 7, 7, 7]):
        keep = torch.tensor(keep_k)
        for null in (torch.zeros(4, dtype=torch.bool), torch.tensor([False, True, False, True])):
            seen.clear()
            full = model.decoder_forward(x, t, codes, keep, null)[0]
            compact = model.decoder_forward(x, t, codes, keep, null, compact=True)[0]
            torch.testing.assert_close(compact, full, rtol=1e-5, atol=1e-5)
            copies = n - max(keep_k)
            assert seen == [p + n, p + n - copies + 1 if copies > 1 else p + n]
    # and detokenize uses it: a 1-token decode equals the plain decoder's
    ids = model.tokenize(images(2), k=1)
    fast = model.detokenize(ids, steps=2, seed=0, guidance_scale=2.0)
    plain = FlexTok.decoder_forward
    try:
        FlexTok.decoder_forward = lambda self, *a, compact=False, **kw: plain(self, *a, **kw)  # type: ignore[method-assign]
        slow = model.detokenize(ids, steps=2, seed=0, guidance_scale=2.0)
    finally:
        FlexTok.decoder_forward = plain  # type: ignore[method-assign]
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
