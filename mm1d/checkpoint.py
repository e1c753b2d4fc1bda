"""Release bundles of the full any-to-any model.

A release bundle is a directory that loads without DeepSpeed or Hydra::

    BUNDLE/
      model.safetensors, config.json     the transformer (``mm1d.model.bundle``), plus "vocab" and "pretrain"
      text/text.model                    the SentencePiece model
      image/                             the FlexTok bundle (when the model was trained with images)
      video/                             the VideoFlexTok bundle (when trained with videos)
      tokenizers.json                    ``asset:NAME`` references to shipped tokenizers (instead of image/, video/)
      generation.json                    the generation presets (the pretraining config's ``generation`` section)

It is written into a temporary sibling directory and renamed into place, so a crash never leaves a
half-written bundle. Training checkpoints (DeepSpeed format) live in ``mm1d.training.engine``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mm1d.config import PretrainConfig, VocabConfig, from_dict, to_dict
from mm1d.modality import Vocab
from mm1d.model.bundle import load_model_bundle, save_model_bundle
from mm1d.model.transformer import Transformer
from mm1d.tokenization.text import MODEL_FILENAME, text_model_path

REFS_FILE = "tokenizers.json"
GENERATION_FILE = "generation.json"  # the generation presets (mm1d.config.GenerationConfig)
ASSETS = Path(__file__).resolve().parent / "assets"


def resolve_asset(ref: str) -> Path:
    """``asset:NAME`` -> ``mm1d/assets/NAME`` (a tokenizer shipped inside the package); other strings are paths."""
    if ref.startswith("asset:"):
        path = ASSETS / ref.removeprefix("asset:")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"shipped asset {ref} not found at {path}; reinstall mm1d or run "
                                    "`make tokenizers` to recreate the tiny tokenizers")
        return path
    return Path(ref)


def _check_bundle_dir(path: str | Path, what: str, how: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{what} bundle not found: {p} has no config.json. {how}")
    return p


def save_release_bundle(out_dir: str | Path, weights: dict[str, torch.Tensor], cfg: PretrainConfig) -> Path:
    """Write the release bundle atomically (model + vocab + the tokenizer bundles it was trained with).

    Args:
        out_dir: the bundle directory to create (replaced if it exists).
        weights: full fp32 state dict of the ``Transformer``.
        cfg: the pretraining config (its ``model``, ``vocab`` and ``tokenizers`` sections are used).
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_model_bundle(weights, cfg.model, tmp, extra={"vocab_config": to_dict(cfg.vocab), "pretrain": to_dict(cfg)},
                          softmax_groups=Vocab.from_config(cfg.vocab).softmax_groups())
        if cfg.tokenizers.text:
            (tmp / "text").mkdir()
            shutil.copy2(text_model_path(cfg.tokenizers.text), tmp / "text" / MODEL_FILENAME)
        refs = {}
        for name in ("image", "video"):
            src = getattr(cfg.tokenizers, name)
            if not src:
                continue
            src_dir = _check_bundle_dir(resolve_asset(src), name, "Check tokenizers." + name).resolve()
            if src_dir.parent == ASSETS:  # shipped tokenizers are referenced, not copied (package size)
                refs[name] = f"asset:{src_dir.name}"
            else:
                shutil.copytree(src_dir, tmp / name)
        if refs:
            (tmp / REFS_FILE).write_text(json.dumps(refs, indent=2))
        (tmp / GENERATION_FILE).write_text(json.dumps(to_dict(cfg.generation), indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class ReleaseBundle:
    """What ``load_release_bundle`` returns: the model, the vocab, and the paths of the tokenizers."""

    model: Transformer
    vocab: Vocab
    path: Path
    config: dict[str, Any]

    @property
    def text_path(self) -> Path:
        return text_model_path(self.path / "text")

    @property
    def understanding_min_k(self) -> int:
        """The smallest visual budget the model was trained to caption from (0: any; older bundles: 0)."""
        seq = self.config.get("pretrain", {}).get("data", {}).get("sequence", {})
        return int(seq.get("understanding_min_k", 0) or 0)

    def tokenizer_dir(self, modality: str) -> Path | None:
        """The FlexTok ('image') or VideoFlexTok ('video') bundle: a copy inside, or a shipped asset."""
        p = self.path / modality
        if (p / "config.json").is_file():
            return p
        refs = self.path / REFS_FILE
        if refs.is_file():
            ref = json.loads(refs.read_text()).get(modality)
            if ref:
                return resolve_asset(ref)
        return None


def load_release_bundle(path: str | Path, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> ReleaseBundle:
    """Load a release bundle written by ``save_release_bundle`` (clear error when a file is missing)."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"no mm1d release bundle at {p} (config.json missing)")
    config = json.loads((p / "config.json").read_text())
    if "vocab_config" not in config:
        raise ValueError(f"{p} is a model bundle without a vocabulary; is it a tokenizer bundle?")
    vocab = Vocab.from_config(from_dict(VocabConfig, config["vocab_config"]))
    model = load_model_bundle(p, device=device, dtype=dtype)
    if model.vocab_size != vocab.size:
        raise ValueError(f"{p}: model vocab {model.vocab_size} != registry size {vocab.size}")
    return ReleaseBundle(model=model, vocab=vocab, path=p, config=config)
