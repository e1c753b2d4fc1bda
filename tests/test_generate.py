"""mm1d.generate end to end on a tiny random release bundle: tasks, budgets, STIV video tasks, streaming,
previews, captions, errors and the CLI."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mm1d
from mm1d import inference
from mm1d.config import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_bundle import build_tiny_bundle  # noqa: E402

HAVE_VIDEO = importlib.util.find_spec("mm1d.tokenization.videoflextok") is not None
needs_video = pytest.mark.skipif(not HAVE_VIDEO, reason="mm1d/tokenization/videoflextok.py is not there yet")


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("gen"), video=HAVE_VIDEO)


@pytest.fixture(scope="session")
def pipe(bundle: Path) -> inference.Pipeline:
    return mm1d.load(bundle)


def rand_image(seed: int) -> torch.Tensor:
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- images ------------------------------------------------------------------------------------------


def test_text_to_image_budgets_batch_and_outputs(pipe: inference.Pipeline) -> None:
    res = mm1d.generate(["a red circle in the top left", "a blue square"], "image", budget=[2, 8], num_samples=2,
                        seed=0, model=pipe)
    assert [len(t) for t in res.tokens] == [2, 2, 8, 8] == res.budgets
    assert len(res.images) == 4 and all(im.size == (16, 16) for im in res.images)
    assert all(int(t.min()) >= 0 and int(t.max()) < 1000 for t in res.tokens)
    assert res.metadata["seeds"] == [0, 1, 2, 3] and res.metadata["sampling_s"] > 0


def test_auto_budget_and_determinism(pipe: inference.Pipeline) -> None:
    a = pipe.generate("a green triangle", "image", budget="auto", num_samples=3, seed=5)
    b = pipe.generate("a green triangle", "image", budget="auto", num_samples=3, seed=5)
    assert all(1 <= k <= 8 for k in a.budgets) and [len(t) for t in a.tokens] == a.budgets
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images, strict=True))


def test_mixed_budget_batch_equals_single_samples(pipe: inference.Pipeline) -> None:
    prompts, budgets, seeds = ["a red circle", "a white diamond", "a cyan square"], [3, 8, 5], [10, 20, 30]
    batch = pipe.generate(prompts, "image", budget=budgets, seed=seeds)
    for i in range(3):
        one = pipe.generate(prompts[i], "image", budget=budgets[i], seed=[seeds[i]])
        assert torch.equal(one.tokens[0], batch.tokens[i])


def test_image_previews_through_callback(pipe: inference.Pipeline) -> None:
    seen = []
    res = pipe.generate("a red circle", "image", budget=6, seed=1, preview_every=[2, 4, 16], callback=seen.append)
    assert [(p.kind, p.k) for p in seen] == [("preview", 2), ("preview", 4)]
    assert seen == res.previews and seen[0].image.size == (16, 16)


# ---- video -------------------------------------------------------------------------------------------


@needs_video
def test_text_to_video_shapes_and_mixed_budgets(pipe: inference.Pipeline) -> None:
    res = pipe.generate(["a red circle moving left", "a blue square"], "video", budget=[2, 4], num_frames=9, seed=0)
    assert [tuple(t.shape) for t in res.tokens] == [(3, 2), (3, 4)] and res.budgets == [2, 4]
    assert [len(v) for v in res.videos] == [9, 9] and res.videos[0][0].size == (16, 16)
    assert res.metadata["windows"] == 1


@needs_video
def test_text_image_to_video_keeps_the_first_frame(pipe: inference.Pipeline) -> None:
    frame = rand_image(3)
    res = pipe.generate("a red circle moving up", "video", images=[frame], budget=3, num_frames=9, seed=2,
                        num_samples=2, cfg_scale=2.0, image_cfg_scale=1.5)
    want = pipe.video.tokenize(frame[None, :, None])[0, 0, :3]  # VideoFlexTok ids of the frame alone
    for t in res.tokens:
        assert t.shape == (3, 3) and torch.equal(t[0], want)
    first = np.asarray(res.videos[0][0], dtype=np.float64)
    ref = np.asarray(inference.to_pil(frame), dtype=np.float64)
    assert res.metadata["first_frame_psnr"][0] > 40 and np.abs(first - ref).max() <= 1  # kept clean
    assert res.metadata["task"] == "ti2v" and res.metadata["image_cfg_scale"] == 1.5


@needs_video
def test_video_continuation_and_long_rollout(pipe: inference.Pipeline) -> None:
    clip = torch.rand(3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    res = pipe.generate("a green square moving right", "video", videos=[clip], budget=2, num_frames=33, seed=4)
    want = pipe.video.tokenize(clip[None])[0, :, :2]  # (2, 2)
    t = res.tokens[0]
    assert t.shape == (9, 2) and torch.equal(t[:2], want)
    assert len(res.videos[0]) == 33 and res.metadata["windows"] >= 2  # 9 steps > 6 length tokens: rolled out
    assert res.metadata["task"] == "continuation"


@needs_video
def test_video_chunks_stream_and_match_the_final_video(pipe: inference.Pipeline) -> None:
    events = []
    res = pipe.generate("a red circle", "video", budget=2, num_frames=17, seed=7, preview_every=[1, 3],
                        callback=events.append)
    chunks = [e for e in events if e.kind == "chunk"]
    assert [c.k for c in chunks] == [3, 5]  # chunk_frames=9: steps 0-2, then 3-4
    frames = [f for c in chunks for f in c.frames]
    assert len(frames) == 17
    for a, b in zip(frames, res.videos[0], strict=True):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1
    assert [(e.kind, e.k, len(e.frames)) for e in events if e.kind == "preview"] == [("preview", 1, 1),
                                                                                       ("preview", 3, 9)]


# ---- captions ----------------------------------------------------------------------------------------


def test_caption_images(pipe: inference.Pipeline, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    inference.to_pil(rand_image(0)).save(path)
    res = pipe.generate(None, "text", images=[str(path), rand_image(1)], budget=4, max_new_tokens=6, seed=0)
    assert len(res.texts) == 2 and all(isinstance(t, str) for t in res.texts)
    assert all(1 <= len(t) <= 6 for t in res.tokens) and res.budgets == [4, 4]
    pre = pipe.generate("a red", "text", images=[rand_image(1)], max_new_tokens=8, seed=0)
    n = len(pipe.text.encode("a red"))
    assert pre.tokens[0][:n].tolist() == pipe.text.encode("a red")


@needs_video
def test_caption_video(pipe: inference.Pipeline) -> None:
    clip = torch.rand(3, 9, 16, 16) * 2 - 1
    res = pipe.generate(None, "text", videos=[clip], max_new_tokens=5)
    assert len(res.texts) == 1 and 1 <= len(res.tokens[0]) <= 5 and res.budgets == [4]


# ---- errors ------------------------------------------------------------------------------------------


def test_clear_errors(pipe: inference.Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown modality"):
        mm1d.generate("x", "audio", model=pipe)
    for bad in (0, 9, 2.5, "big", True):
        with pytest.raises(ValueError, match="budget"):
            pipe.generate("a red circle", "image", budget=bad)
    with pytest.raises(ValueError, match="budgets for"):
        pipe.generate(["a", "b"], "image", budget=[1, 2, 3])
    with pytest.raises(ValueError, match="needs images= or videos="):
        pipe.generate("a red circle", "text")
    with pytest.raises(ValueError, match="empty"):
        pipe.generate([], "image")
    with pytest.raises(ValueError, match="empty string"):
        pipe.generate("  ", "image")
    with pytest.raises(ValueError, match="auto"):
        pipe.generate(None, "text", images=[rand_image(0)], budget="auto")
    if HAVE_VIDEO:
        with pytest.raises(ValueError, match="1 \\+ 4m"):
            pipe.generate("a red circle", "video", num_frames=6)
        with pytest.raises(ValueError, match="1 \\+ 4m"):
            pipe.generate(None, "text", videos=[torch.zeros(3, 6, 16, 16)])
        with pytest.raises(ValueError, match="exceed"):
            pipe.generate("x", "video", videos=[torch.zeros(3, 9, 16, 16)], num_frames=9)
    monkeypatch.setattr(inference, "DEFAULT_BUNDLE", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="scripts/main_job.sh"):
        mm1d.load()


def test_generate_caches_the_loaded_pipeline(bundle: Path) -> None:
    a = mm1d.generate("a red circle", budget=1, seed=0, model=bundle)
    key = str(Path(bundle).resolve())
    first = inference._CACHE[key]
    b = mm1d.generate("a red circle", budget=1, seed=0, model=str(bundle))
    assert inference._CACHE[key] is first and torch.equal(a.tokens[0], b.tokens[0])


# ---- CLI ---------------------------------------------------------------------------------------------


def test_cli_generate_and_caption(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mm1d.cli import main

    png = tmp_path / "x.png"
    assert main(["generate", "a large red circle in the top left", "--modality", "image", "--budget", "8",
                 "--out", str(png), "--bundle", str(bundle), "--seed", "0", "decoder_steps=1"]) == 0
    assert png.is_file()
    assert main(["caption", str(png), "--bundle", str(bundle), "--max-new-tokens", "4"]) == 0
    assert str(png) in capsys.readouterr().out
    assert main(["generate", "x", "--out", str(tmp_path / "x.txt"), "--bundle", str(bundle)]) == 2
    if HAVE_VIDEO:
        gif = tmp_path / "v.gif"
        assert main(["generate", "a red circle moving left", "--modality", "video", "--num-frames", "5",
                     "--budget", "2", "--out", str(gif), "--bundle", str(bundle)]) == 0
        assert gif.is_file()
        capsys.readouterr()
        assert main(["caption", str(gif), "--bundle", str(bundle), "--json", "text.max_new_tokens=3"]) == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["file"] == str(gif) and row["budget"] == 4  # read as a video: the video tokenizer's N


def test_generation_config_from_bundle(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from mm1d.config import to_dict

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    cfg = GenerationConfig()
    cfg.image.budget = 3
    (copy / "generation.json").write_text(json.dumps(to_dict(cfg)))
    assert mm1d.load(copy).generate("a red circle", seed=0).budgets == [3]


def test_release_bundle_carries_the_pretraining_configs_presets(tmp_path: Path) -> None:
    """The pretraining config's ``generation`` section becomes the bundle's generation.json, which
    ``mm1d.load`` and the CLI use: here best of 4 at budget 5 for images."""
    from mm1d.cli import _config, build_parser
    from mm1d.config import PretrainConfig, from_dict, load_config

    y = tmp_path / "pretrain.yaml"
    y.write_text("generation:\n  image: {rerank: 3, budget: 5}\n")
    gen = load_config(y, [], PretrainConfig).generation
    # a partial section keeps the image preset's other defaults (temperature 0.7 and CFG, not SamplerPreset's)
    assert gen.image.rerank == 3 and gen.image.budget == 5
    assert gen.image.temperature == GenerationConfig().image.temperature != 1.0
    b = build_tiny_bundle(tmp_path / "t", video=False, generation=gen)
    assert from_dict(GenerationConfig, json.loads((b / "generation.json").read_text())) == gen
    out = mm1d.load(b).generate("a red circle", seed=0, decoder_steps=1)
    assert out.budgets == [5]
    plain = mm1d.load(b, config=GenerationConfig())  # the library defaults: one draw at the tokenizer's N
    assert plain.generate("a red circle", seed=0, decoder_steps=1).budgets == [8]
    best = plain.generate("a red circle", seed=0, decoder_steps=1, budget=5, rerank=3)
    assert torch.equal(out.tokens[0], best.tokens[0])
    # unconditional samples and previews cannot be reranked: the preset then draws once; rerank= still raises
    pipe = mm1d.load(b)
    unc = pipe.generate([None, "a red circle"], seed=0, decoder_steps=1)
    one = pipe.generate([None, "a red circle"], seed=0, decoder_steps=1, rerank=0)
    assert all(torch.equal(x, y) for x, y in zip(unc.tokens, one.tokens))
    assert len(pipe.generate("a red circle", seed=0, decoder_steps=1, preview_every=[2]).previews) == 1
    with pytest.raises(ValueError, match="needs a text prompt"):
        pipe.generate(None, seed=0, decoder_steps=1, rerank=3)
    # the CLI starts from the bundle's presets and lays key=value overrides over them
    args = build_parser().parse_args(["generate", "x", "--out", "x.png", "--bundle", str(b)])
    args.overrides = ["image.top_k=64"]
    cli = _config(args)
    assert cli.image.rerank == 3 and cli.image.budget == 5 and cli.image.top_k == 64
