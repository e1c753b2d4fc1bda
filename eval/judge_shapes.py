"""Judge a ShapesWorld split written by ``python -m mm1d.data.shapes``: one JSON line on stdout.

    python eval/judge_shapes.py --data DIR [--jpeg-quality 75] [--max-images N] [--max-videos M] [--out OUT]

Reads ``DIR/images`` and ``DIR/videos`` (files + ``metadata.jsonl``) through ``mm1d.data.sources``, judges
every image and video with ``mm1d.evaluation.judge`` against the attributes in the metadata, and prints
``image_accuracy``, the per-attribute accuracies, ``video_motion_accuracy``, ``video_colour_accuracy`` and
``caption_parse_accuracy`` (the metadata captions parsed back). ``--jpeg-quality Q`` re-encodes every image
as JPEG at quality Q before judging. ``--out OUT`` also writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from mm1d.data.media import jpeg_roundtrip
from mm1d.data.sources import open_source
from mm1d.evaluation.judge import score_captions, score_images, score_videos
from mm1d.utils import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a split folder holding images/ and/or videos/")
    p.add_argument("--jpeg-quality", type=int, default=None, help="JPEG-compress images at this quality first")
    p.add_argument("--max-images", type=int, default=0, help="judge at most this many images (0: all)")
    p.add_argument("--max-videos", type=int, default=0, help="judge at most this many videos (0: all)")
    p.add_argument("--out", default=None, help="also write OUT/results.json")
    args = p.parse_args()

    root = Path(args.data)
    if not root.is_dir():
        p.error(f"--data {root} is not a directory")
    parts = {k: root / k for k in ("images", "videos") if (root / k / "metadata.jsonl").is_file()}
    if not parts:
        p.error(f"{root} has neither images/metadata.jsonl nor videos/metadata.jsonl")
    results: dict[str, float | int | str | None] = {"data": str(root), "jpeg_quality": args.jpeg_quality}
    texts, truths = [], []
    if "images" in parts:
        images, attrs = [], []
        for s in tqdm(open_source(parts["images"]), desc="images", file=sys.stderr):
            if args.max_images and len(images) >= args.max_images:
                break
            img = s.image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
            images.append(jpeg_roundtrip(img, args.jpeg_quality) if args.jpeg_quality else img)
            attrs.append({"kind": "image", "objects": s.metadata["objects"]})
            texts.append(s.text or "")
        truths += attrs
        results.update(score_images(images, attrs))
    if "videos" in parts:
        videos, attrs = [], []
        for s in tqdm(open_source(parts["videos"]), desc="videos", file=sys.stderr):
            if args.max_videos and len(videos) >= args.max_videos:
                break
            videos.append(s.video)  # (3, F, H, W) uint8
            attrs.append({"kind": "video", "objects": s.metadata["objects"]})
            texts.append(s.text or "")
        truths += attrs
        results.update(score_videos(videos, attrs))
    results["caption_parse_accuracy"] = score_captions(texts, truths)["caption_accuracy"]
    line = json.dumps(results)
    if args.out:
        atomic_write_text(Path(args.out) / "results.json", json.dumps(results, indent=2) + "\n")
    print(line)


if __name__ == "__main__":
    main()
