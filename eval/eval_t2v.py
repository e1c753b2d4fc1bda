"""Zero-shot text-to-video against the token budget: ShapesBench motion and colour accuracy, FVD, CLIPSIM.

    python eval/eval_t2v.py --model BUNDLE --out DIR [--benchmark shapes|prompts] [--budgets 1,2,4,auto]
        [--num N] [--num-samples S] [--splits val] [--frames F] [--seed S] [--cfg-scale C] [--temperature T]
        [--top-k K] [--top-p P] [--decoder-steps N] [--prompts FILE] [--i3d PATH] [--reference DIR]
        [--clip DIR] [--no-ceiling]

ShapesBench (default: --splits val, the seen combinations; val,holdout adds the held-out ones): the captions of N
ShapesWorld videos are generated at every budget (tokens per time step) and judged analytically; the headline
is the share of videos with motion and colour right, beside per-attribute accuracy and the tokenizer ceiling
(the judge on VideoFlexTok's reconstructions of the true videos from the same tokens). 'auto' lets the model
choose the budget.

--i3d PATH (StyleGAN-V's i3d_torchscript.pt) gives FVD against --reference DIR (a folder of videos; on
ShapesBench the true renders by default); --clip DIR gives CLIPSIM (frame-averaged CLIP score).

Outputs in --out: results.json, quality_vs_budget.png, samples/t2v_k{k}.gif (rows: truth, model, ceiling).
"""

from __future__ import annotations

import mm1d
from mm1d.evaluation.zeroshot_cli import main_for


def main(argv: list[str] | None = None) -> None:
    main_for("t2v", __doc__, argv, mm1d.load, "eval_t2v.py")


if __name__ == "__main__":
    main()
