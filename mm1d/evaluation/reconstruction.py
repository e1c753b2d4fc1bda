"""Reconstruction quality of a FlexTok/VideoFlexTok tokenizer against its token budget.

For every budget k the first k tokens of each sample (per time step for video) are decoded with every
seed, and the reconstructions are compared with the originals:
- PSNR and SSIM (per frame for videos, plus a per-frame PSNR curve);
- ShapesWorld judge accuracy: all attributes and each one (images), motion and colour (videos);
- robustness: the same after replacing a share ``perturb`` of the k tokens by different random codes
  (each token independently, so the share holds in expectation at every k), in the spirit of pFID;
- rFID (images, ``inception``) or rFVD (videos, ``i3d``) against the originals.
Codebook usage per token position (distinct codes and perplexity over the evaluated set) comes from the
full token sequences and does not depend on k. Metrics are averaged over seeds; the spread over seeds is
reported as ``metrics_std``.

A tokenizer here is anything with ``tokenize(x, k=None)``, ``detokenize(ids, steps=, guidance_scale=,
apg=, seed=, zero_noise=)``, ``codebook_size`` and ``num_registers`` (FlexTok and VideoFlexTok).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from mm1d.config import ReconEvalConfig
from mm1d.evaluation.metrics import finite_mean, psnr, psnr_per_frame, ssim, ssim_video
from mm1d.tokenization import tokenizer_class


class Tokenizer(Protocol):
    codebook_size: int
    num_registers: int

    def tokenize(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor: ...

    def detokenize(self, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


# ---- data ------------------------------------------------------------------------------------------------
def load_split(data: str | Path, modality: str, limit: int = 0) -> tuple[torch.Tensor, list[dict[str, Any]] | None]:
    """Read a ShapesWorld split (or any folder with ``metadata.jsonl``) into memory.

    Args:
        data: a split folder holding ``images/`` or ``videos/``, or such a subfolder itself.
        modality: ``"image"`` or ``"video"``.
        limit: read at most this many samples (0: all).

    Returns:
        (pixels float32 in [-1, 1], ``(N, 3, H, W)`` or ``(N, 3, F, H, W)``; attribute dicts for the judge, or
        None when the metadata has no ``objects``).

    Raises:
        FileNotFoundError: when the folder or its metadata is missing (naming how to write a split).
    """
    from mm1d.data.sources import open_source

    root = Path(data)
    sub = root / ("images" if modality == "image" else "videos")
    folder = sub if (sub / "metadata.jsonl").is_file() else root
    if not (folder / "metadata.jsonl").is_file():
        raise FileNotFoundError(
            f"no {modality} split at {root} (expected {sub}/metadata.jsonl); write one with `python -m "
            f"mm1d.data.shapes --out {root} --split val --num-{modality}s 256`")
    pixels, attrs = [], []
    for sample in open_source(folder, kind="folder"):
        x = sample.image if modality == "image" else sample.video
        if x is None:
            continue
        pixels.append(x.float().div(127.5).sub(1.0))  # uint8 -> [-1, 1]
        objects = sample.metadata.get("objects")
        attrs.append({"kind": modality, "objects": objects} if objects is not None else None)
        if limit and len(pixels) >= limit:
            break
    if not pixels:
        raise ValueError(f"{folder} holds no readable {modality}s")
    shapes = {tuple(p.shape) for p in pixels}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: samples have different shapes {sorted(shapes)[:3]}; resize them first")
    judged = None if any(a is None for a in attrs) else attrs
    return torch.stack(pixels), judged


# ---- token statistics and perturbation -------------------------------------------------------------------
def perturb_tokens(ids: torch.Tensor, fraction: float, codebook_size: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each token, independently with probability ``fraction``, by a different uniform random code.

    Args:
        ids: long ``(B, k)`` or ``(B, T, k)``.

    Returns:
        long tensor of the same shape; unchanged where not replaced.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"perturb fraction must be in [0, 1], got {fraction}")
    if codebook_size < 2:
        raise ValueError(f"codebook_size must be >= 2 to perturb, got {codebook_size}")
    flip = torch.rand(ids.shape, generator=generator) < fraction
    offset = torch.randint(1, codebook_size, ids.shape, generator=generator)  # never 0: always a new code
    return torch.where(flip, (ids.cpu() + offset) % codebook_size, ids.cpu())


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, list[float]]:
    """Per token position: distinct codes used, that share of the codebook, and code perplexity.

    Args:
        ids: long ``(N, K)`` or ``(N, T, K)`` (time steps are pooled per position).

    Returns:
        ``{"distinct": [...K], "usage": [...K], "perplexity": [...K]}``; perplexity is ``exp(entropy)``
        of the empirical code distribution at that position (at most ``min(N, codebook_size)``).
    """
    flat = ids.reshape(-1, ids.shape[-1]).cpu()  # (N*T, K)
    distinct, usage, perplexity = [], [], []
    for j in range(flat.shape[1]):
        counts = torch.bincount(flat[:, j], minlength=codebook_size).double()
        p = counts[counts > 0] / counts.sum()
        distinct.append(float((counts > 0).sum()))
        usage.append(distinct[-1] / codebook_size)
        perplexity.append(float(torch.exp(-(p * p.log()).sum())))
    return {"distinct": distinct, "usage": usage, "perplexity": perplexity}


# ---- evaluation ---------------------------------------------------------------------------------------------
def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _finite_std(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.std()) if v.size else float("nan")


def _decode(tok: Tokenizer, ids: torch.Tensor, cfg: ReconEvalConfig, seeds: list[int]) -> torch.Tensor:
    kwargs: dict[str, Any] = {"seed": seeds, "zero_noise": cfg.zero_noise}
    if cfg.steps:
        kwargs["steps"] = cfg.steps
    if cfg.guidance_scale:
        kwargs["guidance_scale"] = cfg.guidance_scale
    if cfg.apg is not None:
        kwargs["apg"] = cfg.apg
    return tok.detokenize(ids, **kwargs).float().cpu().clamp(-1, 1)


def _quality(recon: torch.Tensor, ref: torch.Tensor, attrs: list[dict] | None, video: bool,
             prefix: str = "") -> dict[str, float]:
    """PSNR/SSIM/judge of one full set of reconstructions."""
    out: dict[str, float] = {}
    if video:
        out[f"{prefix}psnr"] = finite_mean(psnr_per_frame(recon, ref).flatten())
        out[f"{prefix}ssim"] = float(ssim_video(recon, ref).mean())
    else:
        out[f"{prefix}psnr"] = finite_mean(psnr(recon, ref))
        out[f"{prefix}ssim"] = float(ssim(recon, ref).mean())
    if attrs is not None:
        from mm1d.evaluation.judge import score_images, score_videos

        if video:
            j = score_videos(recon, attrs)
            names = {"all": "video_accuracy", "motion": "video_motion_accuracy", "colour": "video_colour_accuracy",
                     "shape": "video_shape_accuracy", "size": "video_size_accuracy",
                     "position": "video_position_accuracy"}
        else:
            j = score_images(recon, attrs)
            names = {"all": "image_accuracy", "count": "count_accuracy", "shape": "shape_accuracy",
                     "colour": "colour_accuracy", "size": "size_accuracy", "position": "position_accuracy"}
        for short, key in names.items():
            if key in j:
                out[f"{prefix}judge/{short}"] = float(j[key])
    return out


def evaluate_reconstruction(tok: Tokenizer, pixels: torch.Tensor, attrs: list[dict] | None,
                            cfg: ReconEvalConfig, image_features: Any = None,
                            video_features: Any = None) -> dict[str, Any]:
    """Run the sweep described in the module docstring.

    Args:
        tok: the tokenizer.
        pixels: float ``(N, 3, H, W)`` or ``(N, 3, F, H, W)`` in [-1, 1].
        attrs: ground-truth attributes per sample for the judge, or None to skip the judge.
        cfg: budgets, seeds, perturbation, decoder settings, batch size, grid size.
        image_features: an ``ImageFeatureExtractor`` for rFID (images), or None.
        video_features: a ``VideoFeatureExtractor`` for rFVD (videos), or None.

    Returns:
        ``{"metrics": {k: {...}}, "metrics_std": {k: {...}}, "psnr_per_frame": {k: [...]} (video),
        "codebook": {...}, "grids": {k: [originals, recon, perturbed recon]}, "num_samples": N}``.
    """
    video = pixels.dim() == 5
    n, budgets, seeds = pixels.shape[0], list(cfg.budgets), list(cfg.seeds)
    if not budgets or any(not 1 <= k <= tok.num_registers for k in budgets):
        raise ValueError(f"budgets must lie in [1, {tok.num_registers}] (the tokenizer's N), got {budgets}")
    if not seeds:
        raise ValueError("at least one seed is needed")
    slices = _batches(n, cfg.batch_size)
    passes = len(budgets) * len(seeds) * (2 if cfg.perturb > 0 else 1)
    bar = tqdm(total=len(slices) * (passes + 1), desc="reconstruction", disable=not cfg.progress, unit="batch")
    ids_parts = []
    for sl in slices:
        ids_parts.append(tok.tokenize(pixels[sl]).cpu())  # (b, N) or (b, T, N)
        bar.update(1)
    ids = torch.cat(ids_parts)
    ref_feats = None
    if image_features is not None and not video:
        ref_feats = image_features(pixels).double().numpy()
    if video_features is not None and video:
        ref_feats = video_features(pixels).double().numpy()
    extractor = image_features if not video else video_features
    g = min(cfg.grid_count, n)
    per_k: dict[int, dict[str, float]] = {}
    std_k: dict[int, dict[str, float]] = {}
    frames_k: dict[int, list[float]] = {}
    grids: dict[int, list[torch.Tensor]] = {}
    for k in budgets:
        ids_k = ids[..., :k]
        runs: list[dict[str, float]] = []
        frame_curves = []
        for s_i, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(10_007 * seed + k)
            noisy_ids = perturb_tokens(ids_k, cfg.perturb, tok.codebook_size, gen) if cfg.perturb > 0 else None
            recon_parts, noisy_parts = [], []
            for sl in slices:
                sample_seeds = [seed * 1_000_003 + i for i in range(sl.start, sl.stop)]
                recon_parts.append(_decode(tok, ids_k[sl], cfg, sample_seeds))
                bar.update(1)
                if noisy_ids is not None:
                    noisy_parts.append(_decode(tok, noisy_ids[sl], cfg, sample_seeds))
                    bar.update(1)
            recon = torch.cat(recon_parts)
            if recon.shape != pixels.shape:
                raise ValueError(f"the tokenizer decoded {tuple(recon.shape)} for inputs {tuple(pixels.shape)}")
            row = _quality(recon, pixels, attrs, video)
            if noisy_parts:
                noisy = torch.cat(noisy_parts)
                row.update(_quality(noisy, pixels, attrs, video, prefix="robust/"))
            if extractor is not None and ref_feats is not None and n >= 2:
                from mm1d.evaluation.fid import fid_from_features

                feats = extractor(recon).double().numpy()
                row["rfvd" if video else "rfid"] = fid_from_features(ref_feats, feats)
                if noisy_parts:
                    row["robust/rfvd" if video else "robust/rfid"] = fid_from_features(
                        ref_feats, extractor(noisy).double().numpy())
            if video:
                frame_curves.append(psnr_per_frame(recon, pixels))  # (N, F)
            runs.append(row)
            if s_i == 0:
                grids[k] = [pixels[:g], recon[:g]] + ([noisy[:g]] if noisy_parts else [])
        names = list(runs[0])
        per_k[k] = {m: finite_mean([r[m] for r in runs]) for m in names}
        std_k[k] = {m: _finite_std([r[m] for r in runs]) for m in names} if len(runs) > 1 else {}
        if video:
            curve = torch.stack(frame_curves).flatten(0, 1)  # (S*N, F)
            frames_k[k] = [finite_mean(curve[:, f]) for f in range(curve.shape[1])]
    bar.close()
    return {"metrics": per_k, "metrics_std": std_k, "psnr_per_frame": frames_k,
            "codebook": codebook_usage(ids, tok.codebook_size), "grids": grids, "num_samples": n}


# ---- the whole script ---------------------------------------------------------------------------------------
def load_tokenizer(path: str | Path, modality: str, device: str = "cpu") -> Any:
    """FlexTok (image) or VideoFlexTok (video) from a bundle directory, or from a training run's checkpoint
    as ``RUN_DIR@STEP`` (live weights, FSQ statistics recomputed as for a release)."""
    if "@" in str(path):
        from mm1d.training.tokenizer_training import load_run_checkpoint

        run, step = str(path).rsplit("@", 1)
        if not step.isdigit():
            raise ValueError(f"expected RUN_DIR@STEP with an integer step, got {str(path)!r}")
        return load_run_checkpoint(run, modality, int(step)).to(device)
    return tokenizer_class(modality).from_pretrained(path, device=device)


def run_reconstruction_eval(cfg: ReconEvalConfig, tok: Tokenizer | None = None) -> dict[str, Any]:
    """Load everything named in ``cfg``, run the sweep, and write ``cfg.out``: results.json, the
    quality-vs-k plot and one reconstruction grid per k (PNG for images, GIF for videos).

    Returns:
        The results dict written to ``results.json``.
    """
    from mm1d.evaluation.report import make_results, save_budget_plot, save_image_grid, save_video_grid, write_results

    if cfg.modality not in ("image", "video"):
        raise ValueError(f"modality must be 'image' or 'video', got {cfg.modality!r}")
    if cfg.batch_size < 1 or cfg.limit < 0:
        raise ValueError(f"batch_size must be >= 1 and limit >= 0, got {cfg.batch_size}, {cfg.limit}")
    video = cfg.modality == "video"
    if tok is None:
        tok = load_tokenizer(cfg.tokenizer, cfg.modality, cfg.device)
    pixels, attrs = load_split(cfg.data, cfg.modality, cfg.limit)
    size = getattr(getattr(tok, "cfg", None), "image_size", None)
    if size is not None and tuple(pixels.shape[-2:]) != (size, size):
        raise ValueError(f"the data is {pixels.shape[-2]}x{pixels.shape[-1]} but the tokenizer takes {size}x{size}; "
                         f"write the split with --size {size}")
    image_features = video_features = None
    if cfg.inception and not video:
        from mm1d.evaluation.fid import ImageFeatureExtractor

        path = None if cfg.inception == "default" else cfg.inception
        image_features = ImageFeatureExtractor.from_file(path, batch_size=cfg.batch_size, device=cfg.device)
    if cfg.i3d and video:
        from mm1d.evaluation.fid import VideoFeatureExtractor

        video_features = VideoFeatureExtractor.from_file(cfg.i3d, batch_size=cfg.batch_size, device=cfg.device)
    res = evaluate_reconstruction(tok, pixels, attrs, cfg, image_features, video_features)

    out = Path(cfg.out)
    samples: dict[int, list[str]] = {}
    for k, rows in res["grids"].items():
        rel = f"samples/recon_k{k}.{'gif' if video else 'png'}"
        if video:
            save_video_grid(rows, out / rel, fps=cfg.fps)
        else:
            save_image_grid(rows, out / rel)
        samples[k] = [rel]
    series: dict[str, Any] = {
        "codebook usage per position": {"x": list(range(1, len(res["codebook"]["usage"]) + 1)),
                                         "y": res["codebook"]["usage"], "xlabel": "position"},
        "code perplexity per position": {"x": list(range(1, len(res["codebook"]["perplexity"]) + 1)),
                                         "y": res["codebook"]["perplexity"], "xlabel": "position"},
    }
    if video:
        series["psnr per frame"] = {"x": list(range(pixels.shape[2])), "label": "k", "xlabel": "frame",
                                    "y": {str(k): v for k, v in res["psnr_per_frame"].items()}}
    settings = dataclasses.asdict(cfg)
    settings["tokenizer_info"] = {"num_registers": tok.num_registers, "codebook_size": tok.codebook_size,
                                  "class": type(tok).__name__}
    summary = {"num_samples": res["num_samples"], "judged": attrs is not None,
               "sample_shape": list(pixels.shape[1:]), "codebook_distinct": res["codebook"]["distinct"]}
    results = make_results(
        f"reconstruction-{cfg.modality}", settings, cfg.budgets, res["metrics"],
        title=f"{type(tok).__name__} reconstruction ({Path(cfg.tokenizer).name or 'tokenizer'} on "
              f"{Path(cfg.data).name})",
        budget_name="k per time step" if video else "k", metrics_std=res["metrics_std"], summary=summary,
        series=series, samples=samples)
    write_results(out, results)
    names = [m for m in ("psnr", "ssim", "judge/all", "judge/motion", "judge/colour", "rfid", "rfvd")
             if any(row.get(m) is not None for row in res["metrics"].values())]
    save_budget_plot(results, out / "quality_vs_k.png", names)
    return results
