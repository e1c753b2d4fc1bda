"""Zero-shot captioning of images or videos against the understanding budget: judge accuracy, CIDEr, BLEU.

    python eval/eval_caption.py --model BUNDLE --out DIR [--modality image|video] [--benchmark shapes|folder]
        [--budgets 1,2,4,auto] [--num N] [--splits val,holdout] [--frames F] [--temperature T]
        [--max-new-tokens M] [--rerank R] [--refine R] [--auto-psnr DB] [--inputs DIR --references FILE]
        [--tokenization python|ptb]

The budget is how many tokens of each input (per time step for videos) the model sees. 'auto' uses the
adaptive rule of pretokenization: the smallest k in 1, 2, 4, ..., N whose reconstruction reaches --auto-psnr.

ShapesBench (default): N ShapesWorld val (seen combinations) and holdout (held-out) images or videos are
captioned; captions are parsed back into attributes and judged (images: every attribute right and each one;
videos: motion, colour and shape right, and each one). CIDEr-D and BLEU-1..4 use the sample's caption plus
four template rewordings as references. The tokenizer ceiling is the judge on the reconstructions of the
inputs from the same k tokens.

--benchmark folder captions every image (or video) under --inputs DIR that has references in --references FILE
(COCO format, e.g. captions_val2014.json; matched by file name or image id). Captions are tokenized in
Python (PTB rules, no Java) unless --tokenization ptb (Stanford's Java tokenizer through pycocoevalcap); the
choice is recorded in results.json.

Outputs in --out: results.json, quality_vs_budget.png, samples/caption_k{k}.png (inputs, what k tokens of
them show, generated and true captions) and captions/k{k}.jsonl (every caption).
"""

from __future__ import annotations

import mm1d
from mm1d.evaluation.zeroshot_cli import main_for


def main(argv: list[str] | None = None) -> None:
    main_for("caption", __doc__, argv, mm1d.load, "eval_caption.py")


if __name__ == "__main__":
    main()
