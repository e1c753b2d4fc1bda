"""Train a VideoFlexTok video tokenizer (causal in time).

    python tokenizers/train_videoflextok.py --config configs/tokenizer/videoflextok_tiny.yaml [key=value ...]
    deepspeed --num_gpus 2 tokenizers/train_videoflextok.py --config configs/tokenizer/videoflextok_tiny.yaml

Trains on ShapesWorld videos by default; resumes from ``out_dir/checkpoints``; writes GIF grids of
reconstructions at k = 1, 2, 4, ..., N to ``out_dir/samples`` and the bundle to ``out_dir/bundle``.
"""

from mm1d.config import TrainVideoFlexTokConfig, parse_cli

if __name__ == "__main__":
    cfg = parse_cli(__doc__, TrainVideoFlexTokConfig)
    from mm1d.training.tokenizer_training import run_tokenizer_training
    from mm1d.utils import close_distributed

    run_tokenizer_training(cfg, "video")
    close_distributed()
