"""Train a FlexTok image tokenizer.

    python tokenizers/train_flextok.py --config configs/tokenizer/flextok_tiny.yaml [key=value ...]
    deepspeed --num_gpus 2 tokenizers/train_flextok.py --config configs/tokenizer/flextok_tiny.yaml

Trains on ShapesWorld by default (``data.source=shapes``) or on any dataset path; resumes from
``out_dir/checkpoints``; writes reconstruction grids to ``out_dir/samples`` and the bundle to ``out_dir/bundle``.
"""

from mm1d.config import TrainFlexTokConfig, parse_cli

if __name__ == "__main__":
    cfg = parse_cli(__doc__, TrainFlexTokConfig)
    from mm1d.training.tokenizer_training import run_tokenizer_training
    from mm1d.utils import close_distributed

    run_tokenizer_training(cfg, "image")
    close_distributed()
