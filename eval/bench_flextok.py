"""FlexTok / VideoFlexTok throughput: tokenize and detokenize per second, and one decoder step against k.

    OMP_NUM_THREADS=2 python eval/bench_flextok.py --config configs/tokenizer/flextok_tiny.yaml
    OMP_NUM_THREADS=2 python eval/bench_flextok.py --config configs/tokenizer/videoflextok_tiny.yaml
    python eval/bench_flextok.py --bundle mm1d/assets/videoflextok-shapes-tiny --frames 33 --out runs/bench
    python eval/bench_flextok.py --config configs/tokenizer/flextok_d18_d28.yaml --random-vae \
        --device cuda --dtype bf16 --batch 8
    # the issue's reference point: d256 x 2 layers, a 16-channel f8 VAE at 256 px, batch 1 and 4
    OMP_NUM_THREADS=2 python eval/bench_flextok.py --config configs/tokenizer/flextok_d18_d28.yaml --random-vae \
        --set model.enc_dim=256 model.dec_dim=256 model.enc_depth=2 model.dec_depth=2 --steps 20 --batch 1

The kind (image or video) follows the config or bundle. With ``--config`` the tokenizer has random weights
(throughput does not depend on them); ``--random-vae`` builds a random diffusers VAE of the configured
latent channels in a temporary directory. Inputs are random images / videos in [-1, 1]. Each figure is the
median of ``--repeats`` timed runs after one warm-up run. Prints one JSON object; ``--out DIR`` also writes
``DIR/results.json``. Image rates are images/s; video rates are frames/s.
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

from mm1d.config import TrainFlexTokConfig, TrainVideoFlexTokConfig, load_config  # noqa: E402
from mm1d.tokenization.flextok import FlexTok  # noqa: E402
from mm1d.tokenization.videoflextok import VideoFlexTok  # noqa: E402


def is_video_config(path: str) -> bool:
    import yaml

    return "chunk_frames" in (yaml.safe_load(Path(path).read_text()).get("model") or {})


def random_vae(channels: int, video: bool, tmp: str) -> str:
    """Write a randomly initialised diffusers VAE with ``channels`` latent channels; return its directory."""
    if video:
        from diffusers import AutoencoderKLWan

        AutoencoderKLWan(z_dim=channels).save_pretrained(tmp)
    else:
        from diffusers import AutoencoderKL

        blocks = ("DownEncoderBlock2D",) * 4
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=channels, block_out_channels=(128, 256, 512, 512),
                      down_block_types=blocks, up_block_types=("UpDecoderBlock2D",) * 4,
                      layers_per_block=2).save_pretrained(tmp)
    return tmp


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


def report(results: dict[str, Any], out: str | None) -> dict[str, Any]:
    """Print ``results`` as JSON, also write them to ``out/results.json`` when ``out`` is given; return them."""
    print(json.dumps(results, indent=2))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="tokenizer training YAML (random weights)")
    src.add_argument("--bundle", help="a FlexTok or VideoFlexTok bundle directory")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. model.vae_path=DIR")
    ap.add_argument("--random-vae", action="store_true", help="use a random diffusers VAE (latent='vae' configs)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=None, help="frames per video (default: one chunk)")
    ap.add_argument("--steps", type=int, default=8, help="Euler steps per chunk (flow decoding)")
    ap.add_argument("--decode", choices=["default", "flow", "one_step"], default="default",
                    help="flow sampler, the one-step zero-noise pass, or the tokenizer's decode_mode")
    ap.add_argument("--guidance", type=float, default=1.0, help="CFG scale (> 1 doubles the decoder batch)")
    ap.add_argument("--k", type=str, default=None, help="tokens per step to decode, comma list (default: 1,N)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--out", default=None, help="write DIR/results.json")
    args = ap.parse_args(argv)

    import tempfile

    device = torch.device(args.device)
    if args.bundle:
        video = "chunk_frames" in json.loads((Path(args.bundle) / "config.json").read_text())["config"]
        model = (VideoFlexTok if video else FlexTok).from_pretrained(args.bundle)
    else:
        video = is_video_config(args.config)
        schema = TrainVideoFlexTokConfig if video else TrainFlexTokConfig
        overrides = list(args.set)
        if args.random_vae:
            ch = load_config(args.config, overrides, schema=schema).model.latent_channels
            overrides.append(f"model.vae_path={random_vae(ch, video, tempfile.mkdtemp(prefix='vae_'))}")
        cfg = load_config(args.config, overrides, schema=schema)
        torch.manual_seed(0)
        model = (VideoFlexTok if video else FlexTok)(cfg.model)
    if not video:
        return bench_images(model, args, device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()  # the VAE follows (FSQ and sampling stay fp32)
    cfg = model.cfg
    frames = args.frames or cfg.chunk_frames
    n = model.num_registers
    ks = [int(k) for k in args.k.split(",")] if args.k else sorted({1, n})
    g = torch.Generator().manual_seed(0)
    video = (torch.rand(args.batch, 3, frames, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device)
    mode = _mode(model, args)
    results: dict[str, Any] = {
        "kind": "video",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch": args.batch,
        "frames": frames,
        "image_size": cfg.image_size,
        "latent": cfg.latent,
        "num_registers": n,
        "decode": mode,
        "steps": 1 if mode == "one_step" else args.steps,
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
                lambda k=k: model.detokenize(ids[:, :, :k], steps=args.steps, guidance_scale=args.guidance, seed=0,
                                             zero_noise=mode == "one_step"),
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
    return report(results, args.out)


def _mode(model: FlexTok | VideoFlexTok, args: argparse.Namespace) -> str:
    """The decoding measured: ``--decode``, or the tokenizer's own ``decode_mode``."""
    return model.cfg.decode_mode if args.decode == "default" else args.decode


def bench_images(model: FlexTok, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The image half of ``main``: images/s for tokenize and detokenize, and one decoder step against k."""
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    cfg, n = model.cfg, model.num_registers
    mode = _mode(model, args)
    ks = [int(k) for k in args.k.split(",")] if args.k else sorted({1, 4, 16, n})
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(args.batch, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device)
    results: dict[str, Any] = {
        "kind": "image",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": args.dtype, "batch": args.batch,
        "image_size": cfg.image_size, "latent": cfg.latent, "num_registers": n, "decode": mode,
        "steps": 1 if mode == "one_step" else args.steps, "guidance": args.guidance,
        "params": sum(p.numel() for p in model.parameters()),
    }
    with torch.no_grad():
        t_tok = timed(lambda: model.tokenize(images), device, args.repeats)
        results.update(tokenize_s=t_tok, tokenize_img_per_s=args.batch / t_tok)
        ids = model.tokenize(images)
        for k in ks:
            t_det = timed(lambda k=k: model.detokenize(ids[:, :k], steps=args.steps, guidance_scale=args.guidance,
                                                       seed=0, zero_noise=mode == "one_step"),
                          device, args.repeats)
            results[f"detokenize_k{k}_s"] = t_det
            results[f"detokenize_k{k}_img_per_s"] = args.batch / t_det
        s = model.latent_size
        x = torch.randn(args.batch, cfg.latent_channels, s, s, device=device)
        ts = torch.full((args.batch,), 0.5, device=device)
        null = torch.zeros(args.batch, dtype=torch.bool, device=device)
        codes = model.fsq.indices_to_codes(ids.to(device)).to(device)
        for k in ks:
            keep = torch.full((args.batch,), k, device=device)
            results[f"decoder_step_k{k}_s"] = timed(lambda keep=keep: model.decoder_forward(x, ts, codes, keep, null),
                                                    device, args.repeats)
    return report(results, args.out)


if __name__ == "__main__":
    main()
