"""CLIP score (image-text) and CLIPSIM (video-text), with a CLIP model loaded from a local directory.

The directory is a Hugging Face CLIP checkpoint: ``config.json`` + weights (``transformers.CLIPModel``)
and its tokenizer files; ``preprocessor_config.json`` is read for the normalisation mean and std when
present (OpenAI's values otherwise). No CLIP weights ship offline: download e.g.
``openai/clip-vit-base-patch32`` (MSR-VTT CLIPSIM) or ``openai/clip-vit-large-patch14`` with
``huggingface-cli download <repo> --local-dir DIR`` and pass ``DIR``.

Score: ``100 * max(cos(image_embed, text_embed), 0)`` per pair, the convention of T2I papers and
torchmetrics' CLIPScore. CLIPSIM averages that score over a video's frames.

Image preprocessing follows CLIP's processor: the shorter side is resized to the model's image size
(bicubic, antialiased), the centre is cropped square, and channels are normalised with mean and std.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_HELP = ("CLIP score needs a local Hugging Face CLIP directory (config.json, weights, tokenizer files), e.g. "
             "`huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR`; pass --clip DIR.")


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose pooler is projected (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class CLIPScorer:
    """CLIP score of (image, caption) pairs and CLIPSIM of (video, caption) pairs.

    Args:
        model_dir: a local CLIP checkpoint directory.
        device: where the model runs.
        batch_size: pairs (or frames) per forward pass.
        image_range: range of the pixels passed in (default ``(-1, 1)``).

    Raises:
        FileNotFoundError: when the directory or its config is missing (naming what to download).
    """

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", batch_size: int = 32,
                 image_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        from transformers import AutoTokenizer, CLIPModel

        root = Path(model_dir)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"CLIP model not found: {root} has no config.json. {CLIP_HELP}")
        self.model = CLIPModel.from_pretrained(str(root), local_files_only=True).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        mean, std = OPENAI_MEAN, OPENAI_STD
        pre = root / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.device, self.batch_size, self.image_range = torch.device(device), batch_size, tuple(image_range)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``image_range`` -> normalised ``(B, 3, S, S)``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        lo, hi = self.image_range
        x = ((images.float() - lo) / (hi - lo)).clamp(0, 1)
        h, w = x.shape[-2:]
        s = self.image_size
        nh, nw = (s, max(s, round(w * s / h))) if h <= w else (max(s, round(h * s / w)), s)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (nh - s) // 2, (nw - s) // 2
        x = x[..., top:top + s, left:left + s]  # (B, 3, S, S)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``(B, E)``."""
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            px = self.preprocess(images[i:i + self.batch_size]).to(self.device)
            out.append(F.normalize(_features(self.model.get_image_features(pixel_values=px)).float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(B, E)`` (texts truncated to the model's context)."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            feats = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            out.append(F.normalize(_features(feats).float(), dim=-1).cpu())
        return torch.cat(out)

    def image_text_scores(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """CLIP score of each (image, text) pair: float32 ``(B,)`` in [0, 100]."""
        if images.shape[0] != len(texts):
            raise ValueError(f"got {images.shape[0]} images for {len(texts)} texts")
        cos = (self.image_embeddings(images) * self.text_embeddings(texts)).sum(-1)
        return 100.0 * cos.clamp(min=0)

    def video_text_scores(self, videos: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """CLIPSIM of each (video ``(B, 3, F, H, W)``, text) pair: the frame-averaged CLIP score, ``(B,)``."""
        if videos.dim() != 5 or videos.shape[0] != len(texts):
            raise ValueError(f"videos must be (B, 3, F, H, W) with B = len(texts), got {tuple(videos.shape)} "
                             f"and {len(texts)} texts")
        b, c, f, h, w = videos.shape
        frames = videos.transpose(1, 2).reshape(b * f, c, h, w)  # (B*F, 3, H, W)
        img = self.image_embeddings(frames).view(b, f, -1)  # (B, F, E)
        txt = self.text_embeddings(texts).unsqueeze(1)  # (B, 1, E)
        return (100.0 * (img * txt).sum(-1).clamp(min=0)).mean(1)


def _byte_symbols() -> list[str]:
    """The 256 byte-level BPE symbols (printable bytes stand for themselves, the rest are shifted past 255)."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, shift = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + shift))
            shift += 1
    return out


def write_random_clip(directory: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny random CLIP checkpoint with a byte-level tokenizer (for tests and smoke runs).

    The tokenizer has every byte symbol, with and without the word-end marker, plus a few merges, so it
    encodes any text offline. Returns the directory.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = [("r", "e"), ("re", "d</w>"), ("a", "r"), ("c", "i"), ("l", "e</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(str(root))
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64, bos_token_id=bos, eos_token_id=eos,
                pad_token_id=eos)
    vision = dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(str(root))
    return root
