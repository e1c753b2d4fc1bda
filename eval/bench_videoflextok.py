"""VideoFlexTok throughput: tokenize and detokenize frames per second, and one decoder step against k.

    OMP_NUM_THREADS=2 python eval/bench_videoflextok.py --config configs/tokenizer/videoflextok_tiny.yaml
    python eval/bench_videoflextok.py --bundle mm1d/assets/videoflextok-shapes-tiny --frames 33 --out runs/bench
    python eval/bench_videoflextok.py --config configs/tokenizer/videoflextok_d18_d28.yaml \
        --set model.vae_path=/path/to/wan_vae --device cuda --dtype bf16 --batch 1

With ``--config`` the tokenizer has random weights (throughput does not depend on them). Inputs are random
videos in [-1, 1]. Each figure is the median of ``--repeats`` timed runs after one warm-up run. Prints
one JSON object; ``--out DIR`` also writes ``DIR/results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mm1d.config import TrainVideoFlexTokConfig, load_config  # noqa: E402
from mm1d.tokenization.videoflextok import VideoFlexTok  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any, device: torch.device, repeats: int) -> float:
    """Median wall time (s) of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="tokenizer training YAML (random weights)")
    src.add_argument("--bundle", help="a VideoFlexTok bundle directory")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. model.vae_path=DIR")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default: one chunk)")
    ap.add_argument("--steps", type=int, default=8, help="Euler steps per chunk")
    ap.add_argument("--guidance", type=float, default=1.0, help="CFG scale (> 1 doubles the decoder batch)")
    ap.add_argument("--k", type=str, default=None, help="tokens per step to decode, comma list (default: 1,N)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--out", default=None, help="write DIR/results.json")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if args.bundle:
        model = VideoFlexTok.from_pretrained(args.bundle)
    else:
        cfg = load_config(args.config, args.set, schema=TrainVideoFlexTokConfig)
        torch.manual_seed(0)
        model = VideoFlexTok(cfg.model)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()  # the VAE follows (FSQ and sampling stay fp32)
    cfg = model.cfg
    frames = args.frames or cfg.chunk_frames
    n = model.num_registers
    ks = [int(k) for k in args.k.split(",")] if args.k else sorted({1, n})
    g = torch.Generator().manual_seed(0)
    video = (torch.rand(args.batch, 3, frames, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch": args.batch,
        "frames": frames,
        "image_size": cfg.image_size,
        "latent": cfg.latent,
        "num_registers": n,
        "steps": args.steps,
        "guidance": args.guidance,
        "params": sum(p.numel() for p in model.parameters()),
    }
    with torch.no_grad():
        t_tok = timed(lambda: model.tokenize(video), device, args.repeats)
        results["tokenize_s"] = t_tok
        results["tokenize_fps"] = args.batch * frames / t_tok
        ids = model.tokenize(video)
        results["time_steps"] = ids.shape[1]
        for k in ks:
            t_det = timed(
                lambda k=k: model.detokenize(ids[:, :, :k], steps=args.steps, guidance_scale=args.guidance, seed=0),
                device,
                args.repeats,
            )
            results[f"detokenize_k{k}_s"] = t_det
            results[f"detokenize_k{k}_fps"] = args.batch * frames / t_det
        # one decoder forward on one chunk (the unit of detokenize cost), against k
        tc = min(ids.shape[1], model.max_steps)
        s = model.latent_size
        x = torch.randn(args.batch, cfg.latent_channels, tc, s, s, device=device)
        ts = torch.full((args.batch, tc), 0.5, device=device)
        null = torch.zeros(args.batch, dtype=torch.bool, device=device)
        prefix = torch.zeros(args.batch, tc, dtype=torch.bool, device=device)
        codes = model.fsq.indices_to_codes(ids[:, :tc].to(device)).to(device)
        for k in ks:
            keep = torch.full((args.batch, tc), k, device=device)
            fwd = lambda keep=keep: model.decoder_forward(x, ts, codes, keep, null, prefix)  # noqa: E731
            step = timed(fwd, device, args.repeats)
            results[f"decoder_step_k{k}_s"] = step
    print(json.dumps(results, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
