"""Train the SentencePiece text tokenizer.

    python tokenizers/train_text.py --config configs/tokenizer/text_tiny.yaml [key=value ...]

Reads ShapesWorld captions by default (``corpus.source=shapes``), or text files (``corpus.source=files
corpus.paths=[a.txt]``) or a jsonl field (``corpus.source=jsonl corpus.text_key=caption``), and writes
``out_dir/bundle/text.model``. ``train.max_steps`` is accepted like every entry point but unused.
"""

import json
from pathlib import Path

from mm1d.config import TrainTextConfig, parse_cli, to_dict
from mm1d.data.corpus import text_corpus
from mm1d.tokenization.text import TextTokenizer
from mm1d.utils import atomic_write_text, print0

if __name__ == "__main__":
    cfg = parse_cli(__doc__, TrainTextConfig)
    tok = TextTokenizer.train(text_corpus(cfg.corpus, cfg.seed), cfg.text)
    path = tok.save_pretrained(Path(cfg.out_dir) / "bundle")
    atomic_write_text(Path(cfg.out_dir) / "text_config.json", json.dumps(to_dict(cfg), indent=2))
    example = next(text_corpus(cfg.corpus, cfg.seed))
    ids = tok.encode(example)
    print0(f"text tokenizer: {tok.vocab_size} pieces -> {path}")
    print0(f"example: {example!r} -> {len(ids)} ids {ids}")
