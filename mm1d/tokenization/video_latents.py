"""Causal base latent spaces for VideoFlexTok, and the time-step arithmetic they share.

A video of ``F = 1 + 4m`` frames becomes ``T = 1 + m`` latent time steps: frame 0 is a step of its own
and every following group of 4 frames is one more step. Both backends are causal in time: latent step t
depends only on frames ``<= 4t``.

- :class:`TubeletLatent` (``pixels``): a step is 4 frames stacked along channels, ``C = 3 * 4`` at full
  resolution. Step 0 holds frame 0 repeated 4 times; decoding averages the copies.
- :class:`DiffusersVideoVAE` (``vae``): a frozen causal 3D VAE from diffusers, by default
  ``AutoencoderKLWan`` (4x in time, 8x in space), loaded from a local directory. Latents are
  standardized with the VAE's ``latents_mean`` / ``latents_std``; the posterior mean is used, so
  encoding is deterministic.

diffusers is imported only when a VAE is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "FRAMES_PER_STEP",
    "num_steps_for_frames",
    "num_frames_for_steps",
    "check_num_frames",
    "TubeletLatent",
    "DiffusersVideoVAE",
]

FRAMES_PER_STEP = 4  # frames per latent time step after the first (the causal VAE's temporal factor)


def num_steps_for_frames(num_frames: int) -> int:
    """Latent time steps of a ``1 + 4m`` frame video (``1 + m``); raises ValueError for other counts."""
    check_num_frames(num_frames)
    return 1 + (num_frames - 1) // FRAMES_PER_STEP


def num_frames_for_steps(num_steps: int) -> int:
    """Frames covered by ``num_steps`` latent time steps (``1 + 4 (T - 1)``)."""
    if num_steps < 1:
        raise ValueError(f"a video needs at least one time step, got {num_steps}")
    return 1 + FRAMES_PER_STEP * (num_steps - 1)


def check_num_frames(num_frames: int) -> None:
    """Raise a ValueError unless ``num_frames`` has the form ``1 + 4m`` (m >= 0)."""
    if num_frames < 1 or (num_frames - 1) % FRAMES_PER_STEP != 0:
        lo = 1 + FRAMES_PER_STEP * max(0, (num_frames - 1) // FRAMES_PER_STEP)
        raise ValueError(
            f"a video must have 1 + {FRAMES_PER_STEP}m frames (1, 5, 9, 13, 17, ...), got {num_frames}; "
            f"trim it to {lo} frames (read_video(..., round_to={FRAMES_PER_STEP}) does this)"
        )


class TubeletLatent(nn.Module):
    """Causal tubelets in pixel space: ``[B, 3, 1+4m, H, W]`` <-> ``[B, 12, 1+m, H, W]``.

    Channel layout of a step: ``c = frame_in_group * 3 + rgb``. No parameters.
    """

    channels = 3 * FRAMES_PER_STEP
    downsample = 1

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pack frames into steps.

        Args:
            video: float ``[B, 3, F, H, W]`` in [-1, 1], ``F = 1 + 4m``.

        Returns:
            float ``[B, 12, T, H, W]`` with ``T = 1 + m``.
        """
        b, c, f, h, w = video.shape
        check_num_frames(f)
        first = video[:, :, :1].expand(b, c, FRAMES_PER_STEP, h, w)  # (B, 3, 4, H, W)
        rest = video[:, :, 1:]  # (B, 3, 4m, H, W)
        groups = torch.cat([first, rest], dim=2)  # (B, 3, 4T, H, W)
        t = groups.shape[2] // FRAMES_PER_STEP
        groups = groups.reshape(b, c, t, FRAMES_PER_STEP, h, w)  # (B, 3, T, 4, H, W)
        return groups.permute(0, 3, 1, 2, 4, 5).reshape(b, FRAMES_PER_STEP * c, t, h, w)  # (B, 12, T, H, W)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Unpack steps into frames (step 0's four copies are averaged).

        Args:
            latent: float ``[B, 12, T, H, W]``.

        Returns:
            float ``[B, 3, 1 + 4(T-1), H, W]``, clamped to [-1, 1].
        """
        b, c4, t, h, w = latent.shape
        c = c4 // FRAMES_PER_STEP
        groups = latent.reshape(b, FRAMES_PER_STEP, c, t, h, w).permute(0, 2, 3, 1, 4, 5)  # (B, 3, T, 4, H, W)
        first = groups[:, :, 0].mean(dim=2, keepdim=True)  # (B, 3, 1, H, W)
        rest = groups[:, :, 1:].reshape(b, c, (t - 1) * FRAMES_PER_STEP, h, w)  # (B, 3, 4(T-1), H, W)
        return torch.cat([first, rest], dim=2).clamp(-1.0, 1.0)


class DiffusersVideoVAE(nn.Module):
    """A frozen causal 3D VAE from diffusers (default ``AutoencoderKLWan``), loaded from a local directory.

    Args:
        path: a directory written by ``save_pretrained`` of the diffusers class (``config.json`` and
            weights).
        class_name: the diffusers class to load, e.g. ``"AutoencoderKLWan"``.
        expected_channels: if given, the VAE's latent channel count must equal it.
    """

    def __init__(self, path: str | Path, class_name: str = "AutoencoderKLWan",
                 expected_channels: int | None = None) -> None:
        super().__init__()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"video VAE directory {str(path)!r} not found or has no config.json. Download a causal 3D "
                f"VAE (e.g. the 'vae' folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers, class AutoencoderKLWan) "
                f"to a local directory and set vae_path to it."
            )
        try:
            import diffusers
        except ImportError as e:  # pragma: no cover - diffusers is a declared dependency
            raise ImportError("the 'vae' latent needs diffusers: pip install diffusers") from e
        cls = getattr(diffusers, class_name, None)
        if cls is None:
            raise ValueError(f"diffusers has no class {class_name!r} (vae_class in the config)")
        vae = cls.from_pretrained(str(path))
        vae.requires_grad_(False).eval()
        # Kept outside the module registry: not in the owner's state_dict, never trained. _apply moves it.
        object.__setattr__(self, "vae", vae)
        self.path = str(path)
        cfg = vae.config
        down = list(getattr(cfg, "temperal_downsample", []) or [])
        temporal = getattr(cfg, "scale_factor_temporal", None) or 2 ** sum(bool(d) for d in down)
        spatial = getattr(cfg, "scale_factor_spatial", None) or 2 ** len(down)
        if temporal != FRAMES_PER_STEP:
            raise ValueError(f"the VAE at {path} compresses time by {temporal}, VideoFlexTok needs {FRAMES_PER_STEP}")
        self.channels = int(getattr(cfg, "z_dim", None) or cfg.latent_channels)
        if expected_channels is not None and self.channels != expected_channels:
            raise ValueError(
                f"the VAE at {path} has {self.channels} latent channels, the config says {expected_channels}"
            )
        self.downsample = int(spatial)
        mean = getattr(cfg, "latents_mean", None) or [0.0] * self.channels
        std = getattr(cfg, "latents_std", None) or [1.0] * self.channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> DiffusersVideoVAE:
        self.vae._apply(fn)
        return super()._apply(fn, recurse)

    def save(self, directory: str | Path) -> None:
        """Write the VAE to ``directory`` in diffusers' layout (used when saving a tokenizer bundle)."""
        self.vae.save_pretrained(str(directory), safe_serialization=True)

    def train(self, mode: bool = True) -> DiffusersVideoVAE:
        """The VAE stays in eval mode whatever the parent's mode."""
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode to standardized latents.

        Args:
            video: float ``[B, 3, F, H, W]`` in [-1, 1], ``F = 1 + 4m``, H and W divisible by the
                spatial factor.

        Returns:
            float ``[B, C, 1 + m, H / s, W / s]``.
        """
        check_num_frames(video.shape[2])
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(video.to(dtype)).latent_dist
        z = dist.mode() if hasattr(dist, "mode") else dist.mean
        return (z.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode standardized latents ``[B, C, T, h, w]`` to frames ``[B, 3, 1 + 4(T-1), H, W]`` in [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        z = (latent.float() * self.std + self.mean).to(dtype)
        return self.vae.decode(z).sample.float().clamp(-1.0, 1.0)
