"""Loader throughput: packed tokens per second on one core.

    python eval/bench_loader.py --out runs/bench_loader [--shards DIR] [--seq-len 512] [--batch-size 8]

Without ``--shards`` it first writes synthetic shards shaped like the tiny ShapesWorld setup (captions of
~12 ids, images of N=32 tokens, videos of 5 time steps x 32 tokens, first-frame conditions) into
``OUT/shards``. Writes ``OUT/results.json`` with tokens/s (non-padding and row tokens) and documents/s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from mm1d.config import LoaderConfig, VocabConfig
from mm1d.data.loader import PackedLoader
from mm1d.data.shards import write_shard
from mm1d.modality import Vocab
from mm1d.sequence import StoredSample


def synthetic_shards(out: Path, n: int, per_shard: int, n_img: int, n_vid: int, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for s in range(0, n, per_shard):
        samples = []
        for i in range(s, min(n, s + per_shard)):
            video = i % 2 == 1
            samples.append(StoredSample(
                text=rng.integers(0, 512, size=int(rng.integers(6, 18))).astype(np.uint16),
                image=None if video else rng.integers(0, 1000, size=n_img).astype(np.uint16),
                video=rng.integers(0, 1000, size=(steps, n_vid)).astype(np.uint16) if video else None,
                cond=rng.integers(0, 1000, size=n_img).astype(np.uint16) if video else None,
                key=f"{i:06d}",
            ))
        write_shard(out, s // per_shard, samples, meta={"synthetic": True})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--shards", default=None, help="existing shard directory (default: synthetic)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--max-budget", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shard_dir = Path(args.shards) if args.shards else out / "shards"
    if args.shards is None and not any(shard_dir.glob("shard_*.json")):
        synthetic_shards(shard_dir, args.samples, 1000, args.max_budget, args.max_budget, 5, seed=0)
    vocab = Vocab.from_config(VocabConfig(text_size=512, image_codebook=1000, video_codebook=1000,
                                          max_budget=args.max_budget, max_time_steps=16))
    cfg = LoaderConfig(shards=[str(shard_dir)], seq_len=args.seq_len, batch_size=args.batch_size)
    loader = PackedLoader(cfg, vocab, rank=0, world_size=1)
    next(loader)  # warm-up (permutations, page cache)
    docs0 = loader.stats["docs"]
    t0, cpu0 = time.perf_counter(), time.process_time()
    real = 0
    for _ in range(args.batches):
        real += next(loader).num_tokens
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = args.batches * args.batch_size * args.seq_len
    results = {
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "tokens_per_s": round(real / wall),  # non-padding tokens, wall clock
        "tokens_per_cpu_s": round(real / cpu),  # non-padding tokens per second of this process's CPU time
        "row_tokens_per_s": round(rows / wall),
        "packing_efficiency": round(real / rows, 4),
        "docs_per_s": round((loader.stats["docs"] - docs0) / wall),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
