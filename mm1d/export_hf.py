"""Export an mm1d model bundle as a Hugging Face ``LlamaForCausalLM`` directory.

    python -m mm1d.export_hf --bundle runs/x/bundle --out exported/ [--dtype bfloat16]

The parameter names already match Llama's, and RoPE uses Llama's rotate-half layout, so the weights are
copied as they are. The output directory holds ``config.json`` (LlamaConfig fields) and
``model.safetensors``; ``transformers.LlamaForCausalLM.from_pretrained(out)`` loads it. Models trained
with QK-norm cannot be exported: Llama has no such layer. A ``grouped_softmax`` model exports with the same
logits; its ``config.json`` then lists ``mm1d_softmax_groups``, the id ranges to normalize them over (a
softmax over the whole vocabulary is not the distribution it was trained for).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from mm1d.config import ModelConfig
from mm1d.model.bundle import MODEL_FILE, read_bundle_config
from mm1d.utils import atomic_path, atomic_write_text

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llama_config(
    cfg: ModelConfig, vocab_size: int, dtype: str = "float32", vocab: dict | None = None
) -> dict[str, Any]:
    """The ``config.json`` of an equivalent ``LlamaForCausalLM``.

    Args:
        cfg: mm1d model shape (must not use QK-norm).
        vocab_size: number of ids.
        dtype: name of the stored weight dtype.
        vocab: optional VocabConfig dict from the bundle, used for bos/eos/pad ids.

    Raises:
        ValueError: for a QK-norm model.
    """
    if cfg.qk_norm:
        raise ValueError(
            "cannot export a model trained with qk_norm=True to LlamaForCausalLM: Llama has no QK-norm layers, "
            "so its outputs would differ. Export is only possible for qk_norm=False models."
        )
    head_dim = cfg.head_dim if cfg.head_dim is not None else cfg.d_model // cfg.n_heads
    out: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if vocab is not None:
        from mm1d.config import VocabConfig, from_dict
        from mm1d.modality import Vocab

        v = Vocab.from_config(from_dict(VocabConfig, vocab, prefix="vocab"))
        out.update(bos_token_id=v.special("<bos>"), eos_token_id=v.special("<eos>"), pad_token_id=v.pad_id)
    return out


def export_hf(bundle: str | Path, out_dir: str | Path, dtype: str | None = None) -> Path:
    """Write a ``LlamaForCausalLM`` directory from an mm1d bundle.

    Args:
        bundle: mm1d model bundle directory.
        out_dir: output directory (created).
        dtype: ``float32``, ``bfloat16`` or ``float16``; default keeps the stored dtype.

    Returns:
        ``out_dir`` as a Path.
    """
    from safetensors.torch import load_file, save_file

    cfg, vocab_size, raw = read_bundle_config(bundle)
    weights = Path(bundle) / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"model bundle {bundle} has no {MODEL_FILE}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(DTYPES)}")
    vocab = raw.get("vocab") if isinstance(raw.get("vocab"), dict) else None
    # Refuses QK-norm before any weight is read.
    hf_cfg = llama_config(cfg, vocab_size, dtype or "float32", vocab)
    if cfg.grouped_softmax:
        hf_cfg["mm1d_softmax_groups"] = raw["softmax_groups"]
    state = load_file(str(weights))
    if dtype is None:
        dtype = next(k for k, v in DTYPES.items() if v == state["model.embed_tokens.weight"].dtype)
        hf_cfg["torch_dtype"] = hf_cfg["dtype"] = dtype
    tensors = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors:
        raise ValueError(f"bundle {bundle} is untied but has no lm_head.weight")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out / "config.json", json.dumps(hf_cfg, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export an mm1d model bundle to a Hugging Face Llama directory.")
    parser.add_argument("--bundle", required=True, help="mm1d model bundle directory (config.json + model.safetensors)")
    parser.add_argument("--out", required=True, help="output directory for LlamaForCausalLM.from_pretrained")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weight dtype (default: as stored)")
    args = parser.parse_args(argv)
    try:
        out = export_hf(args.bundle, args.out, args.dtype)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"export_hf: {e}") from None
    print(f"wrote {out} (load with transformers.LlamaForCausalLM.from_pretrained)")


if __name__ == "__main__":
    main()
