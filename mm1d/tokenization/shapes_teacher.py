"""A ShapesWorld feature extractor for REPA: a small CNN trained on the world's own labels.

FlexTok aligns an early decoder layer with DINOv2 features. ShapesWorld has no such backbone, and nothing can
be downloaded, so mm1d trains its own in a few minutes: a four-layer CNN whose stride-8 feature map
(``(B, dim, H/8, W/8)``, the 4 x 4 patch grid of the tiny FlexTok) feeds a linear head that names, for each of
the five ShapesWorld positions, the shape there (or none), its colour and its size. Its features therefore
carry what the judge reads (shape, colour, size, place) and ignore what a pixel loss also pays for (a pixel
of jitter, anti-aliasing).

    python -m mm1d.tokenization.shapes_teacher --out runs/shapes_teacher     # about 3 minutes on 2 cores

and then ``model.repa_extractor: shapes:runs/shapes_teacher`` (``repa_dim`` = the teacher's ``dim``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm1d.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, make_batch
from mm1d.utils import atomic_path, atomic_write_text

WEIGHTS_FILE = "model.safetensors"
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
_SLOT = 1 + len(SHAPES) + len(COLOUR_NAMES) + len(SIZES)  # logits per position: shape-or-none, colour, size


class ShapesTeacher(nn.Module):
    """Four 3x3 convolutions (strides 1, 2, 2, 2; widths dim/4 ... dim) and a per-position attribute head.

    Args:
        dim: width of the feature map that REPA aligns to.
        image_size: input side; the map is ``ceil(image_size / 8)`` per side.
    """

    def __init__(self, dim: int = 128, image_size: int = 32) -> None:
        super().__init__()
        self.dim = dim
        if dim % 4:
            raise ValueError(f"ShapesTeacher dim must be a multiple of 4, got {dim}")
        w = dim // 4  # widths w, 2w, 3w, 4w = dim
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 3 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(3 * w, dim, 3, stride=2, padding=1),
        )
        grid = math.ceil(image_size / 8)  # three stride-2 convolutions with padding 1
        self.head = nn.Linear(dim * grid * grid, len(POSITIONS) * _SLOT)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``(B, 3, H, W)`` in [-1, 1] -> features ``(B, dim, H/8, W/8)``."""
        return self.body(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images ``(B, 3, H, W)`` -> ``(B, len(POSITIONS), 1 + shapes + colours + sizes)`` logits."""
        h = F.gelu(self.body(images)).flatten(1)
        return self.head(h).view(images.shape[0], len(POSITIONS), _SLOT)


def slot_labels(attrs: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ShapesWorld attrs -> per-position targets, each ``(B, len(POSITIONS))``.

    Returns:
        (shape, colour, size): shape is 0 for an empty position and 1 + the ``SHAPES`` index otherwise;
        colour and size are -100 (ignored by cross-entropy) where the position is empty.
    """
    b, p = len(attrs), len(POSITIONS)
    shape = torch.zeros(b, p, dtype=torch.long)
    colour = torch.full((b, p), -100, dtype=torch.long)
    size = torch.full((b, p), -100, dtype=torch.long)
    for i, a in enumerate(attrs):
        for obj in a["objects"]:
            j = POSITIONS.index(obj["position"])
            shape[i, j] = 1 + SHAPES.index(obj["shape"])
            colour[i, j] = COLOUR_NAMES.index(obj["colour"])
            size[i, j] = SIZES.index(obj["size"])
    return shape, colour, size


def teacher_loss(model: ShapesTeacher, images: torch.Tensor,
                 attrs: list[dict[str, Any]]) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the three per-position heads, and the share of images whose every slot is right.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1]; attrs: their ShapesWorld attrs.
    """
    logits = model.logits(images)  # (B, P, S)
    shape, colour, size = slot_labels(attrs)
    a, c = 1 + len(SHAPES), 1 + len(SHAPES) + len(COLOUR_NAMES)
    parts = ((logits[..., :a], shape), (logits[..., a:c], colour), (logits[..., c:], size))
    loss = sum(F.cross_entropy(lg.flatten(0, 1), y.flatten()) for lg, y in parts)
    with torch.no_grad():
        ok = parts[0][0].argmax(-1) == shape
        filled = shape > 0
        ok &= ~filled | ((parts[1][0].argmax(-1) == colour) & (parts[2][0].argmax(-1) == size))
    return loss, float(ok.all(1).float().mean())


def train_shapes_teacher(out: str | Path, steps: int = 1500, batch_size: int = 128, dim: int = 128,
                         size: int = 32, lr: float = 2e-3, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Train the teacher on ShapesWorld train images and write ``model.safetensors`` + ``config.json``.

    Returns:
        ``{"train_loss", "val_accuracy"}`` (val: 512 val-split images, every slot right).
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    torch.manual_seed(seed)
    model = ShapesTeacher(dim, size)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc="shapes teacher", disable=not progress)
    loss = torch.zeros(())
    for step in bar:
        b = make_batch(seed + 1000, step * batch_size, batch_size, "train", size=size)
        loss, acc = teacher_loss(model, b.pixels, b.attrs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{acc:.2f}")
    model.eval()
    val = make_batch(seed + 2000, 0, 512, "val", size=size)
    with torch.no_grad():
        _, val_acc = teacher_loss(model, val.pixels, val.attrs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    metrics = {"train_loss": float(loss.detach()), "val_accuracy": val_acc}
    atomic_write_text(out / "config.json", json.dumps({"dim": dim, "image_size": size, "steps": steps, **metrics},
                                                     indent=2))
    return metrics


def load_shapes_teacher(path: str | Path) -> ShapesTeacher:
    """A trained teacher from the directory ``path``, frozen and in eval mode.

    Raises:
        FileNotFoundError: ``path`` lacks ``config.json`` or the weights, with the command that makes them.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"ShapesWorld REPA teacher not found at {path} (needs config.json and {WEIGHTS_FILE}); "
                                f"train it with `python -m mm1d.tokenization.shapes_teacher --out {path}`")
    cfg = json.loads((path / "config.json").read_text())
    model = ShapesTeacher(int(cfg["dim"]), int(cfg["image_size"]))
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    model.requires_grad_(False)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the ShapesWorld REPA teacher (see the module docstring).")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="image side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = train_shapes_teacher(args.out, args.steps, args.batch_size, args.dim, args.size, seed=args.seed)
    print(json.dumps({"out": args.out, **metrics}))


if __name__ == "__main__":
    main()
