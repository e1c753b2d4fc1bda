"""Parameter counts and FLOPs of a model config, built on the meta device (no memory, no init).

    python -m mm1d.model.summary --config configs/mm_3b.yaml [model.n_layers=24 ...]

Reads only the ``model:`` and ``vocab:`` sections of the YAML (the rest belongs to the trainer); the
vocabulary size comes from the modality registry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from mm1d.config import ConfigError, ModelConfig, VocabConfig, from_dict
from mm1d.modality import Vocab
from mm1d.model.transformer import Transformer

SECTIONS = ("model", "vocab")


def load_model_sections(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[ModelConfig, VocabConfig]:
    """Read the ``model`` and ``vocab`` sections of a YAML config, with ``model.x=...``/``vocab.x=...`` overrides.

    Uses OmegaConf when installed (interpolations resolve), plain YAML otherwise.

    Raises:
        ConfigError: missing file, missing ``model`` section, unknown key, bad override.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    except ImportError:
        import yaml

        data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{path}: no 'model:' section")
    sections: dict[str, dict[str, Any]] = {s: dict(data.get(s) or {}) for s in SECTIONS}
    import yaml

    for ov in overrides:
        key, sep, val = ov.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in SECTIONS:
            raise ConfigError(f"override {ov!r} must look like model.KEY=VALUE or vocab.KEY=VALUE")
        sections[section][name] = yaml.safe_load(val)
    return from_dict(ModelConfig, sections["model"], "model"), from_dict(VocabConfig, sections["vocab"], "vocab")


def build_meta(cfg: ModelConfig, vocab: Vocab) -> Transformer:
    """The model on the meta device: shapes only, no storage."""
    with torch.device("meta"):
        return Transformer(cfg, vocab.size, vocab.softmax_groups())


def train_flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) for MFU.

    Counts every matmul: 6 x (block matmul params + LM head), plus causal attention scores and
    values: 6 x n_layers x n_heads x head_dim x seq_len (half of the full 12 x ..., since a causal
    query sees on average half the row). Norms, activations and softmax are not counted.
    """
    hd = cfg.head_dim if cfg.head_dim is not None else cfg.d_model // cfg.n_heads
    attn = cfg.d_model * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    mlp = 3 * cfg.d_model * cfg.ffn_hidden
    matmul_params = cfg.n_layers * (attn + mlp) + cfg.d_model * vocab_size
    return 6.0 * matmul_params + 6.0 * cfg.n_layers * cfg.n_heads * hd * seq_len


def summarize(cfg: ModelConfig, vocab_cfg: VocabConfig) -> dict[str, Any]:
    """Counts for one config: embedding, lm_head, non-embedding, total, plus vocab size and FLOPs/token."""
    vocab = Vocab.from_config(vocab_cfg)
    vocab_size = vocab.size
    counts = build_meta(cfg, vocab).num_params()
    return {
        "vocab_size": vocab_size,
        **counts,
        "train_flops_per_token": train_flops_per_token(cfg, vocab_size, cfg.max_seq_len),
    }


def _fmt(n: float) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Parameter counts of a model config (built on the meta device).")
    parser.add_argument("--config", required=True, help="YAML with model: and vocab: sections")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("overrides", nargs="*", help="model.KEY=VALUE / vocab.KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg, vocab_cfg = load_model_sections(args.config, args.overrides)
        s = summarize(cfg, vocab_cfg)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"summary: {e}") from None
    if args.json:
        print(json.dumps({"config": args.config, **s}))
        return
    print(f"config          {args.config}")
    print(f"vocab size      {s['vocab_size']:,}")
    print(f"embedding       {s['embedding']:>15,}  ({_fmt(s['embedding'])})")
    print(f"lm_head         {s['lm_head']:>15,}  ({_fmt(s['lm_head'])}{', tied' if cfg.tie_embeddings else ''})")
    print(f"non-embedding   {s['non_embedding']:>15,}  ({_fmt(s['non_embedding'])})")
    print(f"total           {s['total']:>15,}  ({_fmt(s['total'])})")
    print(f"train FLOPs/tok {s['train_flops_per_token']:.3e}  (at seq {cfg.max_seq_len})")


if __name__ == "__main__":
    main()
