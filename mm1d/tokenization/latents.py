"""Base latent spaces for the tokenizers: raw pixels, or a frozen diffusers ``AutoencoderKL``.

Both backends expose the same interface:

- ``channels`` / ``downsample``: latent channels and spatial reduction factor;
- ``encode(images (B, 3, H, W) in [-1, 1]) -> latents (B, C, H/f, W/f)``;
- ``decode(latents) -> images (B, 3, H, W)`` (not clamped).

The VAE is frozen (no gradients, always in eval mode) and is *not* part of the owning module's
``state_dict``: a tokenizer bundle stores its own weights and a copy of the VAE directory beside them.
diffusers is imported only when a VAE is actually loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


class PixelLatent(nn.Module):
    """Identity latent space: the image itself (3 channels, no downsampling)."""

    channels = 3
    downsample = 1

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images ``(B, 3, H, W)`` -> the same tensor."""
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents ``(B, 3, H, W)`` -> the same tensor."""
        return latents


def load_autoencoder_kl(path: str | Path) -> Any:
    """Load a diffusers ``AutoencoderKL`` from a local directory (``config.json`` + weights).

    Raises:
        FileNotFoundError: if the directory or its ``config.json`` is missing.
        ImportError: if diffusers is not installed.
    """
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"VAE directory {str(p)!r} not found or has no config.json. Download a diffusers AutoencoderKL "
            "(e.g. the 16-channel FlexTok VAE, EPFL-VILAB/flextok_vae_c16) to a local folder and set vae_path."
        )
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the 'vae' latent needs diffusers: pip install 'mm1d[vae]' (or diffusers)") from e
    return AutoencoderKL.from_pretrained(str(p))


class VAELatent(nn.Module):
    """A frozen diffusers ``AutoencoderKL``, with its scaling (and shift) factor applied.

    ``encode`` returns ``(z - shift_factor) * scaling_factor`` and ``decode`` inverts it.

    Args:
        path: local directory of the VAE (``save_pretrained`` layout).
        sample_posterior: sample the posterior in ``encode`` while the owner is in training mode
            (the posterior mode is always used in eval mode, so tokenization is deterministic).
    """

    def __init__(self, path: str | Path, sample_posterior: bool = False) -> None:
        super().__init__()
        vae = load_autoencoder_kl(path)
        vae.requires_grad_(False)
        vae.eval()
        # Kept outside the module registry: not in state_dict, never trained. ``_apply`` moves it.
        object.__setattr__(self, "vae", vae)
        self.path = str(path)
        self.sample_posterior = sample_posterior
        cfg = vae.config
        self.channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(cfg.shift_factor) if getattr(cfg, "shift_factor", None) is not None else 0.0

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> VAELatent:
        self.vae._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> VAELatent:
        super().train(mode)
        self.vae.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images ``(B, 3, H, W)`` in [-1, 1] -> scaled latents ``(B, C, H/f, W/f)`` (float32)."""
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(images.to(dtype)).latent_dist
        z = dist.sample(generator) if (self.training and self.sample_posterior) else dist.mode()
        return ((z - self.shift_factor) * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents ``(B, C, h, w)`` -> images ``(B, 3, h f, w f)`` (float32, not clamped)."""
        dtype = next(self.vae.parameters()).dtype
        z = latents.to(dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.float()

    def save(self, directory: str | Path) -> None:
        """Write the VAE to ``directory`` in diffusers' layout (used when saving a tokenizer bundle)."""
        self.vae.save_pretrained(str(directory), safe_serialization=True)


def build_latent(kind: str, vae_path: str | None = None, sample_posterior: bool = False) -> nn.Module:
    """Build the latent backend named ``kind`` (``"pixels"`` or ``"vae"``).

    Raises:
        ValueError: unknown kind, or ``"vae"`` without a path.
    """
    if kind == "pixels":
        return PixelLatent()
    if kind == "vae":
        if not vae_path:
            raise ValueError("latent='vae' needs vae_path: a local directory holding a diffusers AutoencoderKL")
        return VAELatent(vae_path, sample_posterior)
    raise ValueError(f"unknown latent kind {kind!r}; expected 'pixels' or 'vae'")
