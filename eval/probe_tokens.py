"""What the tokens of a FlexTok or VideoFlexTok bundle carry: an MLP probe on the first k tokens.

    python eval/probe_tokens.py --tokenizer BUNDLE --budgets 1,2,4,8,16,32 --out DIR
        [--modality image|video] [--num-train 24000] [--num-val 2048] [--epochs 30] [--seed 0]
        [--score-split val|holdout]

BUNDLE may also be RUN_DIR@STEP (a training run's checkpoint, as in eval_reconstruction.py). The probe trains
on single-object ShapesWorld train samples rendered on the fly and is scored on val samples (or, with
``--score-split holdout``, on the colour+shape pairs the train split never draws): per-attribute
accuracy (shape, colour, size, and position for images or motion for videos) and ``all``. Compare it with the
judge on reconstructions (eval_reconstruction.py): where the probe is right and the reconstruction wrong,
the decoder is what fails, not the tokens.

Writes DIR/results.json (the layout of mm1d/evaluation/report.py) and DIR/probe_vs_k.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mm1d.evaluation.probe import run_probe
from mm1d.evaluation.reconstruction import load_tokenizer
from mm1d.evaluation.report import make_results, save_budget_plot, write_results
from mm1d.utils import comma_ints


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="bundle directory, or RUN_DIR@STEP")
    p.add_argument("--out", required=True, help="output folder (results.json, probe_vs_k.png)")
    p.add_argument("--modality", choices=("image", "video"), default="image")
    p.add_argument("--budgets", type=comma_ints, default=[1, 2, 4, 8, 16, 32], help="comma-separated k values")
    p.add_argument("--num-train", type=int, default=24000,
                   help="train samples drawn (images: about half have one object)")
    p.add_argument("--num-val", type=int, default=2048, help="scored samples drawn")
    p.add_argument("--score-split", choices=("val", "holdout"), default="val",
                   help="score on val samples, or on held-out colour+shape pairs the probe never trained on")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=512, help="probe MLP width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    try:
        if a.num_train < 1 or a.num_val < 1 or a.epochs < 1:
            raise ValueError("--num-train, --num-val and --epochs must be >= 1")
        tok = load_tokenizer(a.tokenizer, a.modality)
        out = run_probe(tok, a.modality, a.budgets, a.num_train, a.num_val, a.seed, a.epochs, a.hidden,
                        progress=not a.no_progress, score_split=a.score_split)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"probe_tokens.py: error: {e}\n")
    settings = {**vars(a), "num_train_kept": out["num_train"], "num_val_kept": out["num_val"]}
    budget_name = "k" if a.modality == "image" else "k per time step"
    results = make_results(f"probe-{a.modality}", settings, out["budgets"],
                           {int(k): {f"probe/{n}": v for n, v in m.items()} for k, m in out["metrics"].items()},
                           title=f"token probe ({a.modality})", budget_name=budget_name)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    write_results(a.out, results)
    save_budget_plot(results, f"{a.out}/probe_vs_k.png")
    last = str(out["budgets"][-1])
    print(json.dumps({"out": a.out, "k": int(last), **out["metrics"][last]}))


if __name__ == "__main__":
    main()
