"""The ``mm1d`` command line: generate images and videos, caption images and videos.

Examples::

    mm1d generate "a large red circle in the top left" --modality image --budget 8 --out x.png
    mm1d generate "a small blue square moving left" --modality video --out x.gif      # or x.mp4
    mm1d generate "a red circle moving up" --modality video --first-frame frame.png --out x.mp4
    mm1d caption img.png clip.mp4

Without ``--bundle`` the shipped tiny bundle ``mm1d/assets/shapes-tiny`` is used. ``--config FILE`` and
``key=value`` overrides set the generation presets (``mm1d.config.GenerationConfig``), e.g.
``image.top_k=64 decoder_steps=8``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def _budget(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="release bundle directory (default: mm1d/assets/shapes-tiny)")
    p.add_argument("--budget", type=_budget, default=None, help="tokens per image / video time step, or 'auto'")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: from the config)")
    p.add_argument("--config", default=None, help="YAML generation config (GenerationConfig); key=value overrides "
                   "of it may follow anywhere, e.g. decoder_steps=8 image.top_k=64")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm1d", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text to image / video (optionally from a first frame or a clip)")
    g.add_argument("prompt", help="the caption; '' for unconditional generation")
    g.add_argument("--modality", choices=["image", "video"], default="image")
    g.add_argument("--out", required=True, help="output file: .png/.jpg for images, .gif/.mp4 for videos")
    g.add_argument("--num-frames", type=int, default=None, help="video length, 1 + 4m")
    g.add_argument("--first-frame", default=None, help="image file: text-image-to-video from this first frame")
    g.add_argument("--continue-video", default=None, help="video file: continue this clip")
    g.add_argument("--cfg-scale", type=float, default=None)
    g.add_argument("--image-cfg-scale", type=float, default=None, help="first-frame guidance (text-image-to-video)")
    g.add_argument("--decoder-steps", type=int, default=None)
    g.add_argument("--fps", type=float, default=None, help="frame rate of the written video (default: config)")
    _common(g)
    c = sub.add_parser("caption", help="caption images or videos")
    c.add_argument("files", nargs="+", help="image or video files (.mp4/.avi/.mov/.mkv/.webm and multi-frame .gif "
                   "are videos)")
    c.add_argument("--prefix", default=None, help="text every caption starts with")
    c.add_argument("--max-new-tokens", type=int, default=None)
    c.add_argument("--json", action="store_true", help="print one JSON object per caption")
    _common(c)
    return parser


def _config(args: argparse.Namespace) -> Any:
    from mm1d.checkpoint import GENERATION_FILE
    from mm1d.config import GenerationConfig, from_dict, load_config
    from mm1d.inference import DEFAULT_BUNDLE

    if args.config is not None:
        return load_config(args.config, args.overrides, GenerationConfig)
    bundle_cfg = Path(args.bundle or DEFAULT_BUNDLE) / GENERATION_FILE  # the presets the bundle carries
    if args.overrides:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            base = Path(d) / "generation.yaml"
            base.write_text(bundle_cfg.read_text() if bundle_cfg.is_file() else "{}")  # JSON is YAML
            return load_config(base, args.overrides, GenerationConfig)
    if bundle_cfg.is_file():
        return from_dict(GenerationConfig, json.loads(bundle_cfg.read_text()))
    return None


def is_video_file(path: Path) -> bool:
    """Video containers by suffix; a GIF is a video when it has more than one frame."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if path.suffix.lower() == ".gif" and path.is_file():
        from PIL import Image

        with Image.open(path) as im:
            return getattr(im, "n_frames", 1) > 1
    return False


def _out_paths(out: Path, n: int) -> list[Path]:
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


def _run(args: argparse.Namespace) -> int:
    import mm1d
    from mm1d.config import ConfigError

    try:
        cfg = _config(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    pipe = mm1d.load(args.bundle, config=cfg, device=args.device)
    common = dict(budget=args.budget, seed=args.seed, num_samples=args.num_samples, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p)
    if args.command == "generate":
        out = Path(args.out)
        suffixes = (".png", ".jpg", ".jpeg") if args.modality == "image" else (".gif", ".mp4")
        if out.suffix.lower() not in suffixes:
            raise ValueError(f"--out for {args.modality} must end with one of {', '.join(suffixes)}, got {out.name!r}")
        res = pipe.generate(
            args.prompt or None, args.modality,
            images=[args.first_frame] if args.first_frame else None,
            videos=[args.continue_video] if args.continue_video else None,
            num_frames=args.num_frames, cfg_scale=args.cfg_scale, image_cfg_scale=args.image_cfg_scale,
            decoder_steps=args.decoder_steps, **common,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = _out_paths(out, len(res.images) or len(res.videos))
        if args.modality == "image":
            for im, p in zip(res.images, paths, strict=True):
                im.save(p)
        else:
            import numpy as np
            import torch

            from mm1d.tokenization.video_io import write_video

            fps = args.fps or pipe.config.fps
            for frames, p in zip(res.videos, paths, strict=True):
                arr = torch.from_numpy(np.stack([np.asarray(f) for f in frames]))  # (F, H, W, 3) uint8
                write_video(arr.permute(3, 0, 1, 2).contiguous(), p, fps=fps)  # (3, F, H, W)
        for p, b in zip(paths, res.budgets, strict=True):
            print(f"wrote {p} (budget {b})")
        if "first_frame_psnr" in res.metadata:
            print("first frame PSNR (dB):", ", ".join(f"{v:.2f}" for v in res.metadata["first_frame_psnr"]))
        return 0
    files = [Path(f) for f in args.files]
    vids = [f for f in files if is_video_file(f)]
    imgs = [f for f in files if f not in vids]
    rows = []
    for kind, group in (("images", imgs), ("videos", vids)):
        if group:
            res = pipe.generate(args.prefix, "text", **{kind: [str(f) for f in group]},
                                max_new_tokens=args.max_new_tokens, **common)
            n = args.num_samples
            rows += [(group[i // n], t, b) for i, (t, b) in enumerate(zip(res.texts, res.budgets, strict=True))]
    for f, text, b in rows:
        print(json.dumps({"file": str(f), "caption": text, "budget": b}) if args.json else f"{f}: {text}")
    return 0


OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*=")
FLAGS = ("--json",)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``key=value`` config overrides from the other arguments (not when they are an option's value)."""
    rest, overrides = [], []
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if OVERRIDE.match(a) and (not prev.startswith("-") or prev in FLAGS):
            overrides.append(a)
        else:
            rest.append(a)
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mm1d`` console script; returns the exit status."""
    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(rest)
    args.overrides = overrides
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"mm1d {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
