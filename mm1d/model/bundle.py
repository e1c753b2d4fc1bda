"""Model release bundles: ``model.safetensors`` + ``config.json``, written atomically.

``config.json`` holds ``{"format": "mm1d-model", "version": 1, "model": <ModelConfig>, "vocab_size": V}``
(and ``"softmax_groups"`` for a ``grouped_softmax`` model) plus any extra keys the caller adds (the trainer
adds the vocabulary config and tokenizer paths). Tied embeddings are stored once (``lm_head.weight`` is left
out, as Hugging Face does).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mm1d.config import ModelConfig, from_dict, to_dict
from mm1d.model.transformer import Transformer, check_softmax_groups
from mm1d.utils import atomic_path, atomic_write_text

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BUNDLE_FORMAT = "mm1d-model"
BUNDLE_VERSION = 1


def save_model_bundle(
    model: Transformer | dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | Path,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    softmax_groups: Sequence[tuple[int, int]] | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` (each atomically; config last).

    Args:
        model: the model, or a full state dict (e.g. consolidated from a ZeRO-3 checkpoint).
        cfg: its shape.
        out_dir: bundle directory (created; other files in it are left alone).
        extra: more top-level keys for config.json (must not clash with the reserved ones).
        dtype: cast floating tensors to this dtype before writing (default: as they are).
        softmax_groups: the id groups of a ``grouped_softmax`` model (``Vocab.softmax_groups()``); taken from
            ``model`` when it is a ``Transformer``, required with a state dict.

    Returns:
        ``out_dir`` as a Path.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    if "model.embed_tokens.weight" not in state:
        raise ValueError("state dict has no 'model.embed_tokens.weight': not an mm1d Transformer")
    vocab_size = int(state["model.embed_tokens.weight"].shape[0])
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    tensors = {}
    for k, v in state.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.cpu().contiguous()
    if isinstance(model, Transformer):
        softmax_groups = model.softmax_groups
    if cfg.grouped_softmax and softmax_groups is None:
        raise ValueError("a grouped_softmax model bundle needs its softmax_groups (Vocab.softmax_groups())")
    reserved = {"format", "version", "model", "vocab_size", "softmax_groups"}
    clash = reserved & set(extra or {})
    if clash:
        raise ValueError(f"extra config keys {sorted(clash)} are reserved by the model bundle")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MODEL_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    config = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "model": to_dict(cfg), "vocab_size": vocab_size}
    if cfg.grouped_softmax:
        config["softmax_groups"] = [list(g) for g in check_softmax_groups(softmax_groups, vocab_size)]
    config.update(extra or {})
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2))
    return out


def read_bundle_config(bundle_dir: str | Path) -> tuple[ModelConfig, int, dict[str, Any]]:
    """Read a bundle's ``config.json``.

    Returns:
        ``(model_config, vocab_size, raw_config_dict)``.

    Raises:
        FileNotFoundError: no bundle there.
        ValueError: not an mm1d model bundle, or a malformed config.
    """
    path = Path(bundle_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model bundle at {bundle_dir}: {CONFIG_FILE} is missing")
    raw = json.loads(path.read_text())
    if raw.get("format") != BUNDLE_FORMAT or "model" not in raw or "vocab_size" not in raw:
        raise ValueError(f"{path} is not an mm1d model bundle config (needs format={BUNDLE_FORMAT!r}, "
                         "'model' and 'vocab_size')")
    cfg = from_dict(ModelConfig, raw["model"], prefix="model")
    return cfg, int(raw["vocab_size"]), raw


def check_state_dict(model: Transformer, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise a clear ValueError when ``state`` does not fit ``model`` (missing/unexpected keys, shapes).

    A missing ``lm_head.weight`` is accepted for a tied model.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} in the {source}, {expected[k]} in the model"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch " + "; ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else ""))
        if missing:
            parts.append(f"missing {missing[:4]}" + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}" + (" ..." if len(unexpected) > 4 else ""))
        raise ValueError(f"the {source} does not match this model shape (another model?): " + "; ".join(parts))


def load_model_bundle(
    bundle_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """Build the model a bundle describes and load its weights (no random init: built on meta).

    Args:
        bundle_dir: directory with ``config.json`` and ``model.safetensors``.
        device: where the weights go.
        dtype: cast floating weights to this dtype (default: as stored).

    Returns:
        The ``Transformer`` in eval mode.
    """
    from safetensors.torch import load_file

    cfg, vocab_size, raw = read_bundle_config(bundle_dir)
    if cfg.grouped_softmax and "softmax_groups" not in raw:
        raise ValueError(f"{bundle_dir}/{CONFIG_FILE}: model.grouped_softmax is set but 'softmax_groups' is missing")
    weights = Path(bundle_dir) / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"model bundle {bundle_dir} has no {MODEL_FILE}")
    state = load_file(str(weights), device=str(device))
    with torch.device("meta"):
        model = Transformer(cfg, vocab_size, raw.get("softmax_groups"))
    check_state_dict(model, state, source=f"bundle {bundle_dir}")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()
