"""Pretokenize a data source into token shards for pretraining.

    python tokenizers/pretokenize.py --config configs/tokenizer/pretokenize_tiny.yaml [key=value ...]
    deepspeed --num_gpus 4 tokenizers/pretokenize.py --config ... source=/data/webdataset/{000..099}.tar

Runs the frozen text (SentencePiece), image (FlexTok) and video (VideoFlexTok) tokenizers named by
``tokenizers.text/.image/.video`` over ``source`` (``shapes`` for ShapesWorld in memory, or an image
folder, webdataset tars, a Hugging Face dataset saved to disk, or mp4 files) and writes
``out_dir/shard_NNNNN.{bin,json}``. Each rank writes a disjoint set of shards; finished shards are skipped
on a re-run. ``train.max_steps`` is accepted like every entry point but unused.
"""

from mm1d.config import PretokenizeConfig, parse_cli

if __name__ == "__main__":
    cfg = parse_cli(__doc__, PretokenizeConfig)
    from mm1d.data.pretokenize import run_pretokenize

    run_pretokenize(cfg)
