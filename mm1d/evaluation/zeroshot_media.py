"""Pictures of the zero-shot sweeps (see ``mm1d.evaluation.zeroshot``): the quality-vs-budget plot with the
tokenizer ceiling and the ``auto`` point, captioned sample sheets, and GenEval's folder layout.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

CEILING = "ceiling/"  # metric prefix of the tokenizer's own reconstructions
UNBOUNDED = ("fid", "fvd", "clip_score", "clipsim", "cider")  # metrics not in [0, 1]


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """float ``(3, H, W)`` in [-1, 1] -> uint8 ``(H, W, 3)``."""
    return x.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ---- quality against budget --------------------------------------------------------------------------------
def plot_sweep(results: Mapping[str, Any], names: Sequence[str], path: str | Path, columns: int = 3) -> Path:
    """Write a PNG: one panel per metric in ``names``, quality against budget (log2 axis).

    Each panel draws the model (solid), the tokenizer ceiling ``ceiling/<name>`` (dashed) when measured,
    the ``auto`` budget as a star at its mean chosen budget (hollow star: the ceiling there), and the
    target from ``summary["targets"]`` as a dotted line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mm1d.utils import atomic_path

    names = list(names)
    if not names:
        raise ValueError("no metrics to plot")
    cols = min(columns, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.0 * cols, 3.1 * rows), dpi=100)
    FigureCanvasAgg(fig)
    budgets, metrics = results["budgets"], results["metrics"]
    auto = results.get("summary", {}).get("auto", {})
    targets = results.get("summary", {}).get("targets", {})
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for metric, style, label in ((name, "-o", "model"), (CEILING + name, "--s", "tokenizer ceiling")):
            pts = [(b, metrics.get(str(b), {}).get(metric)) for b in budgets]
            pts = [(b, v) for b, v in pts if v is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color="C0" if metric == name else "C1", label=label, markersize=4)
        group = name.split("/")[0] + "/" if "/" in name else ""
        x_auto = auto.get(f"{group}mean_budget", auto.get("mean_budget"))
        for metric, face, label in ((name, "C2", "auto (model)"), (CEILING + name, "none", "auto (ceiling)")):
            if x_auto is not None and auto.get(metric) is not None:
                ax.plot([x_auto], [auto[metric]], "*", markersize=12, markerfacecolor=face, markeredgecolor="C2",
                        linestyle="none", label=label)
        if not name.endswith(UNBOUNDED):  # accuracies share one scale
            ax.set_ylim(-0.03, 1.03)
        if targets.get(name) is not None:
            ax.axhline(targets[name], linestyle=":", color="C3", label="target")
        ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(str(results.get("budget_name", "k")), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


# ---- captioned sample sheets -------------------------------------------------------------------------------
def caption_sheet(visuals: Sequence[torch.Tensor], texts: Sequence[Sequence[str]], path: str | Path,
                  cell: int = 96, columns: int = 4, wrap: int = 30) -> Path:
    """Write a PNG sheet: each cell shows a picture and lines of text under it.

    Args:
        visuals: per cell a float ``(3, H, W)`` in [-1, 1], or ``(3, F, H, W)`` (first, middle and last
            frames are shown side by side), or ``(R, 3, H, W)`` (R pictures side by side).
        texts: per cell the lines to print (wrapped at ``wrap`` characters).
        cell: height of a picture in pixels (nearest-neighbour scaling keeps tiny images crisp).
    """
    from PIL import Image, ImageDraw, ImageFont

    from mm1d.utils import atomic_path

    if len(visuals) != len(texts) or not visuals:
        raise ValueError(f"caption_sheet needs one text list per picture, got {len(visuals)} and {len(texts)}")
    strips = []
    for v in visuals:
        if v.dim() == 4 and v.shape[0] == 3:  # (3, F, H, W): three frames
            f = v.shape[1]
            parts = [v[:, j] for j in sorted({0, f // 2, f - 1})]
        elif v.dim() == 4:
            parts = list(v)
        else:
            parts = [v]
        tiles = [Image.fromarray(to_uint8_hwc(p)).resize((cell, cell), Image.NEAREST) for p in parts]
        strip = Image.new("RGB", (cell * len(tiles) + 2 * (len(tiles) - 1), cell), (255, 255, 255))
        for j, t in enumerate(tiles):
            strip.paste(t, (j * (cell + 2), 0))
        strips.append(strip)
    font = ImageFont.load_default()
    lines = [[w for t in cell_text for w in (textwrap.wrap(t, wrap) or [""])] for cell_text in texts]
    line_h = 12
    width = max(max(s.size[0] for s in strips), 6 * wrap + 8) + 8
    height = cell + 6 + line_h * max(len(ls) for ls in lines) + 8
    cols = min(columns, len(strips))
    rows = math.ceil(len(strips) / cols)
    sheet = Image.new("RGB", (cols * width, rows * height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (strip, ls) in enumerate(zip(strips, lines)):
        r, c = divmod(i, cols)
        x0, y0 = c * width + 4, r * height + 4
        sheet.paste(strip, (x0, y0))
        for j, line in enumerate(ls):
            draw.text((x0, y0 + cell + 4 + j * line_h), line, fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


# ---- GenEval ------------------------------------------------------------------------------------------------
def write_geneval(root: str | Path, records: Sequence[Mapping[str, Any]], images: torch.Tensor,
                  num_samples: int, first_index: int = 0) -> Path:
    """Write GenEval's layout: ``root/<index:05d>/metadata.jsonl`` (the prompt's record as one JSON line) and
    ``root/<index:05d>/samples/<i:04d>.png`` for its ``num_samples`` images.

    Args:
        records: one metadata record per prompt (GenEval's ``evaluation_metadata.jsonl`` lines are kept as is).
        images: float ``(P * num_samples, 3, H, W)`` in [-1, 1], prompt-major.
        first_index: index of ``records[0]`` (batches of a longer prompt list).
    """
    from PIL import Image

    from mm1d.utils import atomic_path, atomic_write_text

    if images.shape[0] != len(records) * num_samples:
        raise ValueError(f"{images.shape[0]} images for {len(records)} prompts x {num_samples} samples")
    root = Path(root)
    for p, record in enumerate(records):
        folder = root / f"{first_index + p:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "metadata.jsonl", json.dumps(dict(record)) + "\n")
        for s in range(num_samples):
            with atomic_path(folder / "samples" / f"{s:04d}.png") as tmp:
                Image.fromarray(to_uint8_hwc(images[p * num_samples + s])).save(tmp, format="PNG")
    return root
