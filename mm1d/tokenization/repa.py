"""Frozen feature extractors for REPA (representation alignment of an early decoder layer).

A feature extractor is any callable ``images (B, 3, H, W) in [-1, 1] -> features``, where features are
either a token grid ``(B, T, F)`` with ``T`` a perfect square (row-major grid) or a map
``(B, F, h, w)``. :func:`teacher_grid` resizes them to the decoder's patch grid.

Specs understood by :func:`build_feature_extractor` (the ``repa_extractor`` config key):

- ``"random_conv"``: a frozen, seeded random conv net (for tests and tiny CPU runs);
- ``"shapes:<dir>"``: the ShapesWorld teacher of :mod:`mm1d.tokenization.shapes_teacher` (a small CNN trained
  on the world's labels; ``python -m mm1d.tokenization.shapes_teacher --out <dir>`` makes it);
- ``"hf:<dir>"``: a transformers vision backbone from a local directory (e.g. DINOv2); the last
  ``grid * grid`` tokens of ``last_hidden_state`` are the patch features;
- ``"package.module:factory"``: ``factory()`` returns the callable (an ``nn.Module`` is frozen).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FeatureFn = Callable[[torch.Tensor], torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomConvFeatures(nn.Module):
    """A frozen random two-layer conv net producing a ``(B, dim, H/4, W/4)`` feature map.

    Deterministic: the weights come from a fixed seed, so every run aligns to the same teacher.
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / math.sqrt(fan_in))
                conv.bias.zero_()
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``(B, 3, H, W)`` -> ``(B, dim, H/4, W/4)``."""
        return self.conv2(F.gelu(self.conv1(images)))


class HFBackbone(nn.Module):
    """A frozen transformers vision model (e.g. DINOv2) returning patch tokens ``(B, grid*grid, F)``.

    Args:
        path: local directory of the model.
        grid: patch grid side to request (the input is resized to ``grid * patch_size`` pixels).
    """

    def __init__(self, path: str, grid: int) -> None:
        super().__init__()
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"REPA feature extractor directory {path!r} not found or has no config.json. Download a "
                "vision backbone (e.g. facebook/dinov2-large) to a local folder and point repa_extractor at it."
            )
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(path)
        self.model.requires_grad_(False)
        self.model.eval()
        patch = getattr(self.model.config, "patch_size", 14)
        self.grid = grid
        self.size = grid * int(patch)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images ``(B, 3, H, W)`` in [-1, 1] -> ``(B, grid*grid, F)``."""
        x = F.interpolate((images + 1) / 2, size=(self.size, self.size), mode="bicubic", align_corners=False)
        x = (x - self.mean) / self.std
        hidden = self.model(pixel_values=x).last_hidden_state  # (B, prefix + grid^2, F)
        return hidden[:, -self.grid * self.grid :]


class TokenReadout(nn.Module):
    """Read a teacher-feature grid out of the kept register tokens (``repa_pass: tokens``).

    One learned query per patch position cross-attends to the registers that nested dropout kept, and an MLP
    maps the result to the teacher's width. Only the codes reach it, so aligning its output trains what the
    tokens carry, without taking capacity from the pixel decoder.

    Args:
        dim: register token width.
        num_queries: patch positions ``P`` (the teacher grid is resized to them).
        out_dim: teacher feature width ``F``.
        head_dim: attention head width (``dim`` must be a multiple).
    """

    def __init__(self, dim: int, num_queries: int, out_dim: int, head_dim: int) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"TokenReadout width {dim} is not a multiple of head_dim {head_dim}")
        self.heads = dim // head_dim
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, out_dim))

    def forward(self, registers: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """registers ``(B, N, D)``, kept bool ``(B, N)`` (at least one per row) -> features ``(B, P, F)``."""
        b, n, d = registers.shape
        h = self.heads
        k, v = self.kv(self.norm(registers)).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, H, N, hd)
        q = self.q(self.queries).view(1, -1, h, d // h).transpose(1, 2).expand(b, -1, -1, -1)  # (B, H, P, hd)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=kept[:, None, None, :])  # (B, H, P, hd)
        return self.out(o.transpose(1, 2).reshape(b, -1, d) + self.queries)


def build_feature_extractor(spec: str, dim: int, image_size: int) -> FeatureFn:
    """Build a frozen feature extractor from a config spec (see module docstring).

    Args:
        spec: ``"random_conv"``, ``"shapes:<dir>"``, ``"hf:<dir>"`` or ``"module:factory"``.
        dim: feature width for ``random_conv``.
        image_size: input resolution; ``hf:`` backbones use a ``image_size // 16`` patch grid.

    Raises:
        ValueError: for a malformed spec.
    """
    if spec == "random_conv":
        return RandomConvFeatures(dim)
    if spec.startswith("shapes:"):
        from mm1d.tokenization.shapes_teacher import load_shapes_teacher

        teacher = load_shapes_teacher(spec.removeprefix("shapes:"))
        if teacher.dim != dim:
            raise ValueError(f"ShapesWorld teacher {spec!r} gives {teacher.dim}-dim features, repa_dim is {dim}")
        return teacher
    if spec.startswith("hf:"):
        return HFBackbone(spec[3:], grid=max(1, image_size // 16))
    if ":" in spec:
        module_name, attr = spec.split(":", 1)
        factory = getattr(importlib.import_module(module_name), attr)
        fn = factory()
        if isinstance(fn, nn.Module):
            fn.requires_grad_(False)
            fn.eval()
        return fn
    raise ValueError(f"unknown REPA extractor spec {spec!r}; expected 'random_conv', 'shapes:<dir>', 'hf:<dir>' or "
                     "'module:factory'")


def teacher_grid(features: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize teacher features to the decoder's patch grid.

    Args:
        features: ``(B, T, F)`` with ``T`` a perfect square (row-major), or ``(B, F, h, w)``.
        grid_h, grid_w: target grid.

    Returns:
        float32 ``(B, grid_h * grid_w, F)``.
    """
    if features.dim() == 3:
        b, t, f = features.shape
        side = math.isqrt(t)
        if side * side != t:
            raise ValueError(f"teacher returned {t} tokens, which is not a square grid")
        features = features.transpose(1, 2).reshape(b, f, side, side)  # (B, F, s, s)
    elif features.dim() != 4:
        raise ValueError(f"teacher features must be (B, T, F) or (B, F, h, w), got {tuple(features.shape)}")
    features = features.float()
    if features.shape[-2:] != (grid_h, grid_w):
        features = F.interpolate(features, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    return features.flatten(2).transpose(1, 2)  # (B, grid_h * grid_w, F)
