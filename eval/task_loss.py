"""Eval loss per task and modality of release bundles, on the same val documents for every bundle.

    python eval/task_loss.py --config configs/mm_tiny.yaml --bundles B1 B2 ... [--batches 16] \
        [--tasks t2i,i2t,t2v,v2t] [--out FILE.json] "eval_data=[RUN/tokens/val]" [key=value ...]

The periodic eval loss of pretraining draws the configured task mix, so runs with different ``data.tasks`` or
loss weights cannot be compared by it. This scores each task alone (``mm1d.training.pretraining.task_losses``):
for example the image tokens of text-to-image and the caption tokens of image captioning.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mm1d.checkpoint import load_release_bundle
from mm1d.config import ConfigError, PretrainConfig, load_config
from mm1d.training.pretraining import task_losses


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="pretraining YAML (its data and eval_data sections are used)")
    p.add_argument("--bundles", nargs="+", required=True, help="release bundle directories")
    p.add_argument("--tasks", default="t2i,i2t,t2v,v2t")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. eval_data=[DIR]")
    args = p.parse_args(argv)
    # --bundles takes every following word: key=value words among them are overrides
    args.overrides += [b for b in args.bundles if "=" in b]
    args.bundles = [b for b in args.bundles if "=" not in b]
    try:
        cfg = load_config(args.config, args.overrides, PretrainConfig)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    tasks = tuple(t for t in args.tasks.split(",") if t)
    results = {}
    for path in args.bundles:
        rb = load_release_bundle(path, dtype=torch.float32)
        results[path] = res = task_losses(rb.model.eval(), rb.vocab, cfg, tasks, args.batches)
        print(path, " | ".join(f"{t}: " + " ".join(f"{m}={v:.4f}" for m, v in r.items()) for t, r in res.items()),
              flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
