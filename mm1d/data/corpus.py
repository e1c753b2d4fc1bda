"""Sentence streams for training the text tokenizer: ShapesWorld captions, text files, or jsonl fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mm1d.config import TextCorpusConfig


def text_corpus(cfg: TextCorpusConfig, seed: int = 0) -> Iterator[str]:
    """Yield the corpus's sentences, in a fixed order.

    Args:
        cfg: ``source='shapes'`` (captions of ``shapes_images`` train images then ``shapes_videos`` train
            videos of the world with ``seed``), ``'files'`` (one sentence per non-empty line of each path)
            or ``'jsonl'`` (the ``text_key`` string of each JSON line).
        seed: ShapesWorld seed.

    Raises:
        FileNotFoundError: a listed path that does not exist. ValueError: no paths for files/jsonl, or a jsonl
        line without the key.
    """
    limit = cfg.max_sentences or None
    n = 0

    def take() -> bool:
        nonlocal n
        n += 1
        return limit is None or n <= limit

    if cfg.source == "shapes":
        from mm1d.data.shapes import ShapesWorld

        world = ShapesWorld(cfg.shapes, seed=seed)
        for i in range(cfg.shapes_images):
            cap = world.image("train", i)[2]
            if not take():
                return
            yield cap
        for i in range(cfg.shapes_videos):
            cap = world.video("train", i)[2]
            if not take():
                return
            yield cap
        return
    if not cfg.paths:
        raise ValueError(f"corpus.source={cfg.source!r} needs corpus.paths (a list of files)")
    for p in cfg.paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"text corpus file not found: {path}")
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if cfg.source == "jsonl":
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or not isinstance(obj.get(cfg.text_key), str):
                        raise ValueError(f"{path}:{lineno}: no string field {cfg.text_key!r}")
                    line = obj[cfg.text_key]
                if not take():
                    return
                yield line
