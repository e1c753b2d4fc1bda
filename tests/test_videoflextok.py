"""VideoFlexTok: exact causality and prefix properties, chunking, prefix conditioning, VAE backend, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mm1d.config import VideoFlexTokConfig, load_config
from mm1d.tokenization.blocks import AdaLNBlock
from mm1d.tokenization.video_io import read_video, trim_frames, video_grid, write_video
from mm1d.tokenization.video_latents import TubeletLatent, num_frames_for_steps, num_steps_for_frames
from mm1d.tokenization.videoflextok import VideoFlexTok, chunk_spans, parameter_report

ROOT = Path(__file__).resolve().parents[1]


def make_model(**overrides: object) -> VideoFlexTok:
    torch.manual_seed(0)
    kw: dict = dict(
        image_size=16,
        chunk_frames=9,  # 3 time steps per chunk
        patch_size=8,
        num_registers=4,
        enc_depth=2,
        enc_dim=32,
        dec_depth=1,
        dec_dim=32,
        head_dim=16,
        decode_steps=2,
    )
    kw.update(overrides)
    model = VideoFlexTok(VideoFlexTokConfig(**kw)).eval()
    # adaLN-zero starts as the identity; give the decoder non-trivial weights so outputs depend on inputs
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.startswith(("dec_blocks", "dec_final")) and prm.abs().sum() == 0:
                prm.normal_(0, 0.02)
    return model


def video(b: int, f: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, size, size, generator=g) * 2 - 1


def test_time_arithmetic_and_spans() -> None:
    assert [num_steps_for_frames(f) for f in (1, 5, 17, 33)] == [1, 2, 5, 9]
    assert num_frames_for_steps(5) == 17
    assert chunk_spans(17, 17) == [(0, 17)]
    assert chunk_spans(33, 17) == [(0, 17), (16, 33)]
    assert chunk_spans(21, 17) == [(0, 17), (16, 21)]  # any 1 + 4m works; the last chunk is shorter
    assert chunk_spans(25, 9) == [(0, 9), (8, 17), (16, 25)]
    assert trim_frames(20) == 17


def test_tubelets_round_trip_and_causal() -> None:
    lat = TubeletLatent()
    v = video(2, 9, 8)
    z = lat.encode(v)
    assert z.shape == (2, 12, 3, 8, 8)
    assert torch.equal(z[:, 3:6, 1], v[:, :, 2])  # step 1 holds frames 1..4, frame 2 is its 2nd slot
    assert torch.allclose(lat.decode(z), v)
    v2 = v.clone()
    v2[:, :, 5:] = 0
    assert torch.equal(lat.encode(v2)[:, :, :2], z[:, :, :2])


@pytest.mark.parametrize("see_past", [True, False])
def test_time_causality_exact(see_past: bool) -> None:
    model = make_model(registers_see_past=see_past)
    x = video(2, 17)  # two chunks of 9 frames: 5 time steps
    ids = model.tokenize(x)
    assert ids.shape == (2, 5, 4)
    for t in range(4):
        x2 = x.clone()
        x2[:, :, 4 * t + 1 :] = torch.rand_like(x2[:, :, 4 * t + 1 :]) * 2 - 1  # every frame after step t
        ids2 = model.tokenize(x2)
        assert torch.equal(ids2[:, : t + 1], ids[:, : t + 1])
        assert not torch.equal(ids2[:, t + 1 :], ids[:, t + 1 :])
    # pre-quantization registers are bit-identical too (single chunk)
    lat = model.latent.encode(x[:, :, :9])
    lat2 = lat.clone()
    lat2[:, :, 2:] += 1.0
    assert torch.equal(model.encode_registers(lat)[:, :2], model.encode_registers(lat2)[:, :2])


def test_decoder_time_causality() -> None:
    model = make_model()
    b, t = 2, 3
    x_t = torch.randn(b, 12, t, 16, 16)
    codes = torch.rand(b, t, 4, 4) * 2 - 1
    keep = torch.full((b, t), 4)
    null = torch.zeros(b, dtype=torch.bool)
    prefix = torch.zeros(b, t, dtype=torch.bool)
    ts = torch.full((b, t), 0.5)
    v = model.decoder_forward(x_t, ts, codes, keep, null, prefix)
    x2, c2, ts2 = x_t.clone(), codes.clone(), ts.clone()
    x2[:, :, 2] += 1
    c2[:, 2] = -c2[:, 2]
    ts2[:, 2] = 0.9
    v2 = model.decoder_forward(x2, ts2, c2, keep, null, prefix)
    assert torch.equal(v[:, :, :2], v2[:, :, :2])
    assert not torch.allclose(v[:, :, 2], v2[:, :, 2])


def test_encoder_mask_structure() -> None:
    model = make_model()
    m = model.encoder_mask(2, 3)  # blocks of [4 patches ; 3 registers]
    p = 4
    reg = lambda t, i: t * 7 + p + i  # noqa: E731
    assert m[reg(1, 1), reg(0, 1)] and m[reg(1, 1), reg(0, 0)] and not m[reg(1, 1), reg(0, 2)]
    assert m[reg(1, 1), reg(1, 1)] and not m[reg(1, 1), reg(1, 2)]
    assert not m[reg(0, 2), 7]  # no look into step 1
    assert m[7, 0] and not m[0, 7] and not m[7, reg(1, 0)]  # patches see earlier patches, never registers


@pytest.mark.parametrize("quant_norm", ["layernorm", "batch"])
def test_prefix_invariance_along_n(quant_norm: str) -> None:
    model = make_model(quant_norm=quant_norm)
    x = video(2, 17)
    if quant_norm == "batch":  # move the running statistics away from their initial values
        model.train().training_loss(video(4, 9, seed=5))
        model.eval()
    full = model.tokenize(x)
    for k in (1, 2, 3, 4):
        assert torch.equal(model.tokenize(x, k=k), full[:, :, :k])
    lat = model.latent.encode(x[:, :, :9])
    assert torch.allclose(model.encode_registers(lat, 2), model.encode_registers(lat)[:, :, :2], atol=1e-5)


def test_chunked_encoding_equals_single_pass() -> None:
    model = make_model()
    x = video(2, 9)  # exactly one chunk
    single = model.quantize(model.latent.encode(x))[1]
    assert torch.equal(model.tokenize(x), single)
    long = video(2, 17, seed=1)  # two chunks sharing frame 8
    ids = model.tokenize(long)
    assert torch.equal(ids[:, :3], model.tokenize(long[:, :, :9]))
    assert torch.equal(ids[:, 3:], model.tokenize(long[:, :, 8:17])[:, 1:])


def test_three_chunk_round_trip() -> None:
    model = make_model()
    x = video(1, 25)  # chunks (0, 9), (8, 17), (16, 25): 7 time steps
    ids = model.tokenize(x, k=2)
    assert ids.shape == (1, 7, 2)
    out = model.detokenize(ids, steps=2, seed=0)
    assert out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1
    assert model.autoencode(video(1, 13), k=1, steps=1, seed=0).shape == (1, 3, 13, 16, 16)
    # without prefix-register masking the last decoded frame is re-tokenized for the next chunk
    unmasked = make_model(mask_prefix_registers=False)
    assert unmasked.detokenize(ids, steps=1, seed=0, zero_noise=True).shape == x.shape


def test_decode_determinism() -> None:
    model = make_model()
    ids = model.tokenize(video(2, 17), k=3)
    a = model.detokenize(ids, steps=2, seed=7, guidance_scale=2.0)
    b = model.detokenize(ids, steps=2, seed=7, guidance_scale=2.0)
    c = model.detokenize(ids, steps=2, seed=8, guidance_scale=2.0)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    alone = model.detokenize(ids[1:], steps=2, seed=[8], guidance_scale=2.0)  # sample 1 uses seed 7 + 1
    assert torch.allclose(alone, a[1:], atol=1e-5)


def test_prefix_excluded_from_loss() -> None:
    model = make_model(prefix_prob=1.0, max_prefix_steps=1, cond_dropout=0.0, aux_recon_weight=1.0).train()
    x = video(2, 9)
    p = model.num_patches  # prefix = step 0 = the first P output rows of the head
    shift = {"rows": slice(0, p)}

    def hook(_m: torch.nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, shift["rows"]] += 1000.0
        return out

    base, metrics = model.training_loss(x, torch.Generator().manual_seed(0))
    assert metrics["prefix_steps"] == 1.0
    handle = model.dec_final.register_forward_hook(hook)
    try:
        same, _ = model.training_loss(x, torch.Generator().manual_seed(0))
        shift["rows"] = slice(p, 2 * p)  # a non-prefix step
        moved, _ = model.training_loss(x, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert torch.equal(base, same)
    assert moved > base + 1.0


def test_one_step_decode_mode_is_the_zero_noise_pass() -> None:
    model, one_step = make_model(), make_model(decode_mode="one_step")
    ids = model.tokenize(video(2, 9), 3)
    z = model.detokenize(ids, steps=1, zero_noise=True)
    assert torch.equal(model.detokenize(ids, steps=4, seed=3, zero_noise=True), z)  # steps/seed unused
    assert torch.equal(one_step.detokenize(ids, seed=5), z)
    assert not torch.equal(one_step.detokenize(ids, steps=2, seed=5, zero_noise=False), z)


def test_x0_prediction_per_time_step() -> None:
    """prediction="x0": x_t - t * v recovers the head's output with each time step's own noise level."""
    v_model, x_model = make_model(), make_model(prediction="x0")
    x_model.load_state_dict(v_model.state_dict())
    b, t = 2, 3
    x_t = torch.randn(b, 12, t, 16, 16)
    codes = torch.rand(b, t, 4, 4) * 2 - 1
    keep, null = torch.full((b, t), 4), torch.zeros(b, dtype=torch.bool)
    prefix = torch.zeros(b, t, dtype=torch.bool)
    ts = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.3, 0.6]])
    head = v_model.decoder_forward(x_t, ts, codes, keep, null, prefix)
    v = x_model.decoder_forward(x_t, ts, codes, keep, null, prefix)
    assert torch.allclose(x_t - ts[:, None, :, None, None] * v, head, atol=1e-5)
    loss, _ = make_model(prediction="x0", aux_recon_weight=1.0).train().training_loss(video(2, 9))
    assert torch.isfinite(loss)


def test_training_loss_backward_reaches_encoder() -> None:
    model = make_model(register_summary=True, first_step_dropout="uniform", perturb_prob=0.5).train()
    loss, metrics = model.training_loss(video(3, 9), torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.enc_patch.weight.grad is not None and model.enc_patch.weight.grad.abs().sum() > 0
    assert {"loss", "rf", "codes_used", "keep_k", "prefix_steps"} <= set(metrics)
    zero = make_model(aux_recon_weight=1.0, aux_recon_mode="zero_noise").train()
    full, m_full = zero.training_loss(video(2, 5), torch.Generator().manual_seed(2))
    assert torch.isfinite(full)
    # rf_weight=0 skips the flow pass; the one-step term is the same draw for draw
    one_step = make_model(aux_recon_weight=1.0, aux_recon_mode="zero_noise", rf_weight=0.0).train()
    only, m_only = one_step.training_loss(video(2, 5), torch.Generator().manual_seed(2))
    assert "rf" not in m_only and m_only["aux"] == pytest.approx(m_full["aux"])
    assert float(only) == pytest.approx(m_full["aux"], rel=1e-5)


def test_register_inputs_masks() -> None:
    model = make_model()
    codes = torch.rand(2, 3, 4, 4)
    keep = torch.tensor([[1, 1, 1], [4, 4, 4]])
    keep[0, 0] = 3  # a first step with its own k
    prefix = torch.tensor([[True, False, False], [False, False, False]])
    reg = model.register_inputs(codes, keep, torch.zeros(2, dtype=torch.bool), prefix)
    is_mask = (reg == model.mask_token).all(-1)  # (B, T, N)
    expect = torch.arange(4)[None, None] >= keep[..., None]
    expect[0, 0] = True  # prefix registers are masked
    assert torch.equal(is_mask, expect)
    null = model.register_inputs(codes, keep, torch.tensor([True, False]), prefix)
    assert (null[0] == model.null_cond).all() and not (null[1] == model.null_cond).all(-1).any()


def test_sampling_keeps_clean_prefix() -> None:
    model = make_model()
    b, t = 2, 3
    codes = model.fsq.indices_to_codes(torch.randint(0, model.codebook_size, (b, t, 4)))
    keep = torch.full((b, t), 2)
    prefix = torch.randn(b, 12, 1, 16, 16)
    for scale in (1.0, 3.0):
        out = model.sample_latents(codes, keep, torch.randn(b, 12, t, 16, 16), prefix, steps=3, guidance_scale=scale)
        assert torch.equal(out[:, :, :1], prefix)
    # detokenize with conditioning frames: the first frame comes back (tubelets average 4 equal copies)
    cond = video(b, 1, seed=3)
    ids = model.tokenize(video(b, 9))
    out = model.detokenize(ids, steps=2, seed=0, cond_frames=cond)
    assert torch.allclose(out[:, :, :1], cond, atol=1e-6)


def test_cond_index_matches_per_token_conditioning() -> None:
    torch.manual_seed(0)
    blk = AdaLNBlock(32, 2, num_groups=2)
    torch.nn.init.normal_(blk.modulation.weight)
    x, cond = torch.randn(2, 10, 32), torch.randn(2, 3, 32)
    seg = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    groups = torch.tensor([0, 1] * 5)
    # equal up to float32 rounding of outputs of magnitude ~10 (a relative tolerance, not 1e-6 absolute)
    torch.testing.assert_close(blk(x, cond, groups, cond_index=seg), blk(x, cond[:, seg], groups), rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = make_model()
    x = video(1, 9)
    model.save_pretrained(tmp_path / "bundle")
    loaded = VideoFlexTok.from_pretrained(tmp_path / "bundle")
    assert torch.equal(loaded.tokenize(x), model.tokenize(x))
    ids = model.tokenize(x, k=2)
    assert torch.equal(loaded.detokenize(ids, seed=1), model.detokenize(ids, seed=1))
    (tmp_path / "bundle" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        VideoFlexTok.from_pretrained(tmp_path / "bundle")


def test_clear_errors(tmp_path: Path) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="1 \\+ 4m"):
        model.tokenize(video(1, 8))
    with pytest.raises(ValueError, match="16x16"):
        model.tokenize(video(1, 5, size=32))
    with pytest.raises(ValueError, match="k must be"):
        model.tokenize(video(1, 5), k=0)
    with pytest.raises(ValueError, match="k must be"):
        model.tokenize(video(1, 5), k=5)
    with pytest.raises(ValueError, match="k must be"):
        model.detokenize(torch.zeros(1, 2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the codebook"):
        model.detokenize(torch.full((1, 2, 2), model.codebook_size))
    with pytest.raises(ValueError, match="training videos"):
        model.training_loss(video(1, 13))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(ValueError, match="corrupt"):
        read_video(bad)
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoFlexTok(
            VideoFlexTokConfig(
                latent="vae", vae_path=str(tmp_path / "no_vae"), latent_channels=4, latent_downsample=8, patch_size=2
            )
        )


def test_video_io_round_trip(tmp_path: Path) -> None:
    x = torch.zeros(3, 9, 16, 16, dtype=torch.uint8)
    for f in range(9):
        x[0, f, 4:12, f : f + 6] = 255  # a red bar moving right
    for name in ("a.mp4", "a.gif"):
        write_video(x, tmp_path / name, fps=8)
    back = read_video(tmp_path / "a.mp4")
    assert back.shape == (3, 9, 16, 16) and back.dtype == torch.uint8
    assert (back.float() - x.float()).abs().mean() < 8
    assert read_video(tmp_path / "a.mp4", fps=4).shape[1] == 4  # 9 frames at 8 fps -> 1.125 s at 4 fps
    f = read_video(tmp_path / "a.mp4", num_frames=7, round_to=4, size=8, as_float=True)
    assert f.shape == (3, 5, 8, 8) and f.dtype == torch.float32 and f.min() >= -1
    assert video_grid(torch.zeros(3, 3, 2, 4, 4), nrow=2).shape == (3, 2, 11, 11)
    from PIL import Image

    assert Image.open(tmp_path / "a.gif").n_frames == 9


def _tiny_wan(path: Path) -> None:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, latents_mean=[0.1] * 4, latents_std=[2.0] * 4
    )
    vae.save_pretrained(str(path))


def test_vae_backend(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    _tiny_wan(tmp_path / "wan")
    model = make_model(
        image_size=32, latent="vae", vae_path=str(tmp_path / "wan"), latent_channels=4, latent_downsample=8,
        patch_size=2,
    )
    x = video(1, 17, size=32)
    ids = model.tokenize(x)
    assert ids.shape == (1, 5, 4)
    x2 = x.clone()
    x2[:, :, 5:] = 0  # frames of steps >= 2
    assert torch.equal(model.tokenize(x2)[:, :2], ids[:, :2])
    out = model.detokenize(ids[:, :, :2], steps=1, seed=0)
    assert out.shape == x.shape
    loss, _ = model.train().training_loss(video(2, 9, size=32))
    assert torch.isfinite(loss)
    model.eval().save_pretrained(tmp_path / "bundle")
    assert (tmp_path / "bundle" / "vae" / "config.json").is_file()
    assert not any(k.startswith("latent.") for k in model.state_dict())
    loaded = VideoFlexTok.from_pretrained(tmp_path / "bundle")
    assert torch.equal(loaded.tokenize(x), ids)


def test_d18_d28_config_on_meta_device() -> None:
    from mm1d.config import TrainVideoFlexTokConfig

    cfg = load_config(ROOT / "configs/tokenizer/videoflextok_d18_d28.yaml", schema=TrainVideoFlexTokConfig)
    assert isinstance(cfg.model, VideoFlexTokConfig) and cfg.model.latent == "vae"
    counts = parameter_report(cfg.model)
    assert 1.2e9 < counts["total_without_adaln"] < 1.6e9


def test_calibrated_quantizer_gives_the_training_codes() -> None:
    model = make_model(quant_norm="batch")
    x = video(6, 9, seed=4)
    with torch.no_grad():
        model.train()
        train_ids = model.quantize(model.latent.encode(x))[1]  # (B, T, N), batch statistics over B*T
        model.eval()
        assert model.calibrate_quantizer([x[:3], x[3:]]) == 6
    assert torch.equal(model.tokenize(x), train_ids)


def test_compact_decoder_equals_the_full_register_sequence() -> None:
    """Per step, the registers past the longest kept prefix run as one token with a log(copies) bias under
    the block-causal mask: the velocity equals the full pass for ragged keeps, null rows and a clean prefix
    step, and the blocks see T * (P + kmax + 1) tokens."""
    model = make_model(num_registers=6, mask_prefix_registers=True)
    with torch.no_grad():
        model.mask_token.normal_(0, 1.0)
        model.null_cond.normal_(0, 1.0)
    seen: list[int] = []
    model.dec_blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    b, t, n, p = 3, 3, 6, model.num_patches
    codes = model.fsq.indices_to_codes(torch.randint(0, model.codebook_size, (b, t, n)))
    x, t_step = torch.randn(b, 12, t, 16, 16), torch.rand(b, t)
    for keep_k in ([[1, 1, 1]] * 3, [[1, 2, 1], [3, 1, 1], [2, 2, 2]], [[6, 6, 6]] * 3):
        keep = torch.tensor(keep_k)
        for null, prefix in ((torch.zeros(b, dtype=torch.bool), torch.zeros(b, t, dtype=torch.bool)),
                             (torch.tensor([False, True, False]), torch.tensor([[True, False, False]] * b))):
            seen.clear()
            full = model.decoder_forward(x, t_step, codes, keep, null, prefix)
            compact = model.decoder_forward(x, t_step, codes, keep, null, prefix, compact=True)
            torch.testing.assert_close(compact, full, rtol=1e-5, atol=1e-5)
            copies = n - int(keep.max())
            assert seen == [t * (p + n), t * (p + (n - copies + 1 if copies > 1 else n))]
