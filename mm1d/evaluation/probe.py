"""What a visual tokenizer's tokens carry, separately from what its decoder draws.

An MLP probe reads the FSQ code values of the first k tokens (per time step for videos) of single-object
ShapesWorld samples and predicts each attribute of the object. Its held-out accuracy bounds what any model
that reads the tokens (a captioner, the decoder) could recover. Put beside the judge on reconstructions
(``mm1d.evaluation.reconstruction``), it tells a tokenizer whose tokens lack an attribute from one whose
decoder fails to draw it: at k = 32 the round-3 tiny FlexTok's tokens give shape 0.99 to the probe while its
reconstructions judge 0.87 (BENCHMARKS.md).

A tokenizer here is anything with ``tokenize(x, k)`` and an ``fsq`` with ``indices_to_codes`` (FlexTok,
VideoFlexTok).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mm1d.data.shapes import COLOURS, MOTIONS, POSITIONS, SHAPES, SIZES, make_batch

# the attributes probed per modality, and their classes
PROBE_CLASSES: dict[str, dict[str, tuple[str, ...]]] = {
    "image": {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS},
    "video": {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "motion": MOTIONS},
}


def single_object_samples(seed: int, n: int, split: str, kind: str, size: int,
                          frames: int | None = None, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The single-object samples among ShapesWorld samples ``0 .. n-1`` of a split, with attribute labels.

    Args:
        seed: world seed.
        n: samples drawn (images with two objects are dropped, so fewer come back; videos have one object).
        split: 'train', 'val' or 'holdout'.
        kind: 'image' or 'video'.
        size: image side.
        frames: frames per video.
        chunk: samples rendered at a time.

    Returns:
        (pixels float ``(M, 3, H, W)`` or ``(M, 3, F, H, W)`` in [-1, 1], labels long ``(M, A)``: the class
        index of each attribute in ``PROBE_CLASSES[kind]`` order).
    """
    classes = PROBE_CLASSES[kind]
    xs, ys = [], []
    for start in range(0, n, chunk):
        b = make_batch(seed, start, min(chunk, n - start), split, size=size, kind=kind, frames=frames)
        keep = [i for i, a in enumerate(b.attrs) if len(a["objects"]) == 1]
        xs.append(b.pixels[keep])
        ys += [[opts.index(b.attrs[i]["objects"][0][name]) for name, opts in classes.items()] for i in keep]
    if not ys:
        raise ValueError(f"no single-object {kind} samples among {n} of split {split!r}")
    return torch.cat(xs), torch.tensor(ys, dtype=torch.long)


@torch.no_grad()
def token_features(tok: Any, pixels: torch.Tensor, k: int, batch_size: int = 256) -> torch.Tensor:
    """FSQ code values of the first ``k`` tokens, flattened.

    Args:
        tok: the tokenizer.
        pixels: ``(M, 3, H, W)`` images or ``(M, 3, F, H, W)`` videos in [-1, 1].
        k: tokens (per time step for videos).

    Returns:
        float ``(M, k * D)`` for images, ``(M, T * k * D)`` for videos (D: the FSQ dimension).
    """
    out = []
    for i in range(0, pixels.shape[0], batch_size):
        ids = tok.tokenize(pixels[i : i + batch_size], k)  # (b, k) or (b, T, k)
        out.append(tok.fsq.indices_to_codes(ids).float().flatten(1).cpu())
    return torch.cat(out)


def train_probe(x: torch.Tensor, y: torch.Tensor, num_classes: list[int], hidden: int = 512, epochs: int = 30,
                batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Fit a two-hidden-layer MLP with one softmax head per attribute.

    Args:
        x: float ``(M, F)`` features.
        y: long ``(M, A)`` labels.
        num_classes: classes of each of the A attributes.

    Returns:
        the probe (eval mode); its output ``(M, sum(num_classes))`` splits into one logit block per attribute.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                        nn.Linear(hidden, sum(num_classes)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((x.shape[0] + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            logits = net(x[idx]).split(num_classes, dim=1)
            loss = sum(nn.functional.cross_entropy(lg, y[idx, a]) for a, lg in enumerate(logits))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def probe_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str],
                   num_classes: list[int]) -> dict[str, float]:
    """Per-attribute accuracy of a probe on ``x (M, F)`` / ``y (M, A)``, plus ``all`` (every attribute right)."""
    logits = net(x).split(num_classes, dim=1)
    right = torch.stack([lg.argmax(1) == y[:, a] for a, lg in enumerate(logits)], dim=1)  # (M, A)
    out = {name: float(right[:, a].float().mean()) for a, name in enumerate(names)}
    out["all"] = float(right.all(1).float().mean())
    return out


def run_probe(tok: Any, kind: str, budgets: list[int], num_train: int = 24000, num_val: int = 2048,
              seed: int = 0, epochs: int = 30, hidden: int = 512, frames: int | None = None,
              progress: bool = True, lr: float = 1e-3, score_split: str = "val") -> dict[str, Any]:
    """Probe a tokenizer at each budget: train on ShapesWorld train samples, score on ``score_split`` samples.

    Args:
        tok: FlexTok (``kind="image"``) or VideoFlexTok (``kind="video"``).
        budgets: the k values.
        num_train / num_val: samples drawn per split (images keep their single-object share, about half).
        frames: frames per video (default: the tokenizer's ``chunk_frames``).
        lr: the probe's peak learning rate (one-cycle schedule).
        score_split: ``"val"`` (the train split's colour+shape pairs) or ``"holdout"`` (the pairs the train split
            never draws: can a reader of seen pairs read the tokens of an unseen pair?).

    Returns:
        ``{"budgets": [...], "metrics": {str(k): {attr: acc, ..., "all": acc}}, "num_train", "num_val"}``.
    """
    if kind not in PROBE_CLASSES:
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    if score_split not in ("val", "holdout"):
        raise ValueError(f"score_split must be 'val' or 'holdout', got {score_split!r}")
    for k in budgets:
        if not 1 <= k <= tok.num_registers:
            raise ValueError(f"budget {k} is outside [1, {tok.num_registers}] for this tokenizer")
    size = tok.cfg.image_size
    if kind == "video" and frames is None:
        frames = tok.cfg.chunk_frames
    xtr, ytr = single_object_samples(seed + 7, num_train, "train", kind, size, frames)
    xva, yva = single_object_samples(seed + 123, num_val, score_split, kind, size, frames)
    names = list(PROBE_CLASSES[kind])
    num_classes = [len(v) for v in PROBE_CLASSES[kind].values()]
    metrics = {}
    for k in tqdm(budgets, desc="probe", disable=not progress):
        net = train_probe(token_features(tok, xtr, k), ytr, num_classes, hidden=hidden, epochs=epochs, lr=lr,
                          seed=seed)
        metrics[str(k)] = probe_accuracy(net, token_features(tok, xva, k), yva, names, num_classes)
    return {"budgets": list(budgets), "metrics": metrics, "num_train": len(ytr), "num_val": len(yva),
            "attributes": names}
