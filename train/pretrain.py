"""Pretrain the any-to-any transformer.

    deepspeed --num_gpus 2 train/pretrain.py --config configs/mm_tiny.yaml [key=value ...]   # 2 CPU ranks
    deepspeed train/pretrain.py --config configs/mm_3b.yaml                                  # GPUs
    python train/pretrain.py --config configs/mm_tiny.yaml train.max_steps=50                # 1 process

Resumes from ``out_dir/checkpoints`` when it holds a checkpoint; ends by writing ``out_dir/bundle/``.
"""

from mm1d.config import PretrainConfig, parse_cli

if __name__ == "__main__":
    cfg = parse_cli(__doc__, PretrainConfig)
    from mm1d.training.pretraining import run_pretraining
    from mm1d.utils import close_distributed

    run_pretraining(cfg)
    close_distributed()
