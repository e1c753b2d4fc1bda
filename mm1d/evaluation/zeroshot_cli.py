"""The command line shared by ``eval/eval_t2i.py``, ``eval/eval_t2v.py`` and ``eval/eval_caption.py``.

Each entry point builds its parser with :func:`build_parser`, turns the arguments into a
``ZeroShotEvalConfig`` with :func:`config_from_args`, and calls :func:`main_for`, which loads the metric
networks (failing fast on a missing one), the model bundle, and runs ``run_zeroshot``. Problems the user can
fix (a missing file, a bad value) exit with status 2 and one line naming them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from mm1d.config import ZeroShotEvalConfig
from mm1d.evaluation.zeroshot import AUTO, parse_budgets


def _budgets(text: str) -> tuple[list[int], bool]:
    try:
        return parse_budgets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def build_parser(task: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of one task (``t2i``, ``t2v`` or ``caption``); flags that do not apply are left out."""
    d = ZeroShotEvalConfig()
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML of ZeroShotEvalConfig fields, e.g. configs/eval/"
                   f"shapesbench_{task}.yaml (the protocol); flags given on the command line override it")
    p.add_argument("--model", default="", help="release bundle directory (default: the shipped bundle)")
    p.add_argument("--out", required=True, help="output folder (results.json, plot, samples)")
    benchmarks = {"t2i": ("shapes", "prompts"), "t2v": ("shapes", "prompts"), "caption": ("shapes", "folder")}[task]
    p.add_argument("--benchmark", choices=benchmarks, default="shapes")
    p.add_argument("--budgets", type=_budgets, default=None,
                   help="comma-separated token budgets and/or 'auto' (default: 1,2,4,...,N,auto)")
    p.add_argument("--num", type=int, default=d.num, help="inputs per ShapesWorld split / from the file (0: all)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="samples per input")
    splits = ["val"] if task == "t2v" else d.splits  # issue 9 measures text-to-video on seen combinations
    p.add_argument("--splits", type=_words, default=splits,
                   help=f"ShapesWorld splits, val = seen, holdout = held-out (default: {','.join(splits)})")
    p.add_argument("--seed", type=int, default=d.seed, help="generation seed")
    p.add_argument("--data-seed", type=int, default=d.data_seed, help="ShapesWorld world seed")
    p.add_argument("--holdout", type=lambda t: [w.strip() for w in t.split(";") if w.strip()], default=None,
                   help="held-out combos as 'red triangle;blue circle' (default: ShapesWorld's)")
    p.add_argument("--max-objects", type=int, default=d.max_objects, help="ShapesWorld objects per image (0: default)")
    if task != "caption":
        p.add_argument("--cfg-scale", type=float, default=None, help="text guidance scale (default: preset)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--decoder-steps", type=int, default=None, help="tokenizer decoder Euler steps")
    p.add_argument("--rerank", type=int, default=None,
                   help="extra candidates per sample, the best kept: captions by log p(caption|input) + "
                        "w log p(input|caption), images and videos by log p(prompt|sample); 0: off "
                        "(default: the bundle's preset)")
    if task == "caption":
        p.add_argument("--modality", choices=("image", "video"), default="image", help="what to caption")
        p.add_argument("--max-new-tokens", type=int, default=None)
        p.add_argument("--refine", type=int, default=None,
                       help="at most this many single-token edits of each kept caption, scored by both directions "
                            "(mm1d.scoring.refine_captions); 0: off (default: the bundle's preset)")
        p.add_argument("--auto-psnr", type=float, default=d.auto_psnr,
                       help="'auto': smallest k whose reconstruction reaches this PSNR (dB)")
        p.add_argument("--auto-video-psnr", type=float, default=d.auto_video_psnr,
                       help="the same threshold for videos (default: --auto-psnr)")
        p.add_argument("--inputs", default=None, help="--benchmark folder: images or videos to caption")
        p.add_argument("--references", default=None, help="COCO-format reference captions (captions_*.json)")
        p.add_argument("--tokenization", choices=("python", "ptb"), default=d.tokenization,
                       help="caption tokenization before BLEU/CIDEr (ptb needs Java)")
    else:
        p.add_argument("--prompts", default=None, help="--benchmark prompts: .txt, .jsonl or COCO captions .json")
        p.add_argument("--clip", default=None, help="local Hugging Face CLIP directory (CLIP score / CLIPSIM)")
        p.add_argument("--reference", default=None,
                       help="real images (FID) / videos (FVD) to compare with (ShapesBench: the renders)")
    if task == "t2i":
        p.add_argument("--inception", default=None, help="FID network: TorchScript path, or 'default'")
        p.add_argument("--geneval-out", default=None, help="also write GenEval's folder layout here (per budget)")
    if task == "t2v":
        p.add_argument("--i3d", default=None, help="FVD network: I3D TorchScript path")
    if task in ("t2v", "caption"):
        p.add_argument("--frames", type=int, default=d.frames, help="video frames, 1 + 4m (0: the bundle's preset)")
        p.add_argument("--fps", type=float, default=d.fps, help="GIF frame rate")
    p.add_argument("--no-ceiling", action="store_true", help="skip the tokenizer ceiling")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grid-count", type=int, default=d.grid_count, help="samples per grid row")
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-progress", action="store_true")
    return p


def apply_config_file(p: argparse.ArgumentParser, path: str) -> None:
    """Make the fields of a ``ZeroShotEvalConfig`` YAML the parser's defaults (the script sets the task and
    ``--out``; raises ``ConfigError``, a ValueError, on unknown keys or wrong types)."""
    import dataclasses

    from mm1d.config import load_config

    base = load_config(path, (), ZeroShotEvalConfig)
    values = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("task", "out", "ceiling", "progress",
                                                                             "budgets", "auto")}
    p.set_defaults(**values, budgets=(list(base.budgets), base.auto), no_ceiling=not base.ceiling,
                   no_progress=not base.progress)


def config_from_args(task: str, a: argparse.Namespace) -> ZeroShotEvalConfig:
    """A ``ZeroShotEvalConfig`` from parsed arguments (flags a task lacks keep their defaults)."""
    budgets, auto = a.budgets if a.budgets is not None else ([], True)
    fields: dict[str, Any] = dict(
        task=task, model=a.model, out=a.out, benchmark=a.benchmark, budgets=budgets, auto=auto, num=a.num,
        num_samples=a.num_samples, splits=a.splits, seed=a.seed, data_seed=a.data_seed, holdout=a.holdout,
        max_objects=a.max_objects, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
        decoder_steps=a.decoder_steps, ceiling=not a.no_ceiling, batch_size=a.batch_size, grid_count=a.grid_count,
        device=a.device, progress=not a.no_progress)
    per_task = ("cfg_scale", "modality", "max_new_tokens", "rerank", "refine", "auto_psnr", "auto_video_psnr", "inputs",
                "references", "tokenization", "prompts", "clip", "reference", "inception", "geneval_out", "i3d",
                "frames", "fps")
    for name in per_task:
        if hasattr(a, name):
            fields[name] = getattr(a, name)
    return ZeroShotEvalConfig(**fields)


def main_for(task: str, doc: str | None, argv: Sequence[str] | None, load: Callable[..., Any],
             prog: str) -> dict[str, Any]:
    """Parse, load the metric networks and the bundle (``load(path_or_None, device=...)``), run, and print the
    headline numbers as one JSON line. Missing files and bad values exit with status 2."""
    from mm1d.evaluation.zeroshot import run_zeroshot
    from mm1d.evaluation.zeroshot_data import check_inputs, load_meters

    p = build_parser(task, doc)
    pre, _ = p.parse_known_args(argv)
    if pre.config:
        try:
            apply_config_file(p, pre.config)
        except ValueError as e:
            p.exit(2, f"{prog}: error: {e}\n")
    a = p.parse_args(argv)
    try:
        cfg = config_from_args(task, a)
        check_inputs(cfg)
        meters = load_meters(cfg)
        pipe = load(cfg.model or None, device=cfg.device)
        results = run_zeroshot(cfg, pipe, meters)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"{prog}: error: {e}\n")
    line: dict[str, Any] = {"out": cfg.out}
    for b in results["budgets"][-1:]:
        line.update({f"k{b}/{n}": results["metrics"][str(b)].get(n) for n in results["summary"]["headline"]})
    auto = results["summary"].get("auto", {})
    line.update({f"{AUTO}/{n}": auto.get(n) for n in results["summary"]["headline"] if n in auto})
    print(json.dumps(line))
    return results
