"""VideoFlexTok: videos <-> ``[T, k]`` ordered tokens per latent time step, causal in time.

A chunk of ``1 + 4m`` frames is ``T = 1 + m`` latent time steps (frame 0 alone, then groups of 4), from a
causal base latent (pixel tubelets or a causal 3D VAE, see :mod:`mm1d.tokenization.video_latents`).

- Encoder: a transformer over the time-interleaved sequence ``[patches_0 ; regs_0 ; patches_1 ; regs_1
  ; ...]`` with one learned register set per time step. Time is block causal: a token of step t sees
  nothing of steps > t. Within a step, patches see patches (of that step and earlier ones) and register
  i sees those patches and registers 0..i of its own step. With ``registers_see_past`` (default) it also
  sees registers 0..i of earlier steps, never registers > i, so the prefix property below still holds.
  Hence the ids of step t depend only on frames <= 4t, and ``tokenize(x, k) == tokenize(x)[:, :, :k]``.
- FSQ per register gives ids ``[B, T, N]``.
- Nested dropout (training): one keep_k per video applied to every step (optionally step 0 draws its
  own, ``first_step_dropout``); registers past k become a learned mask token.
- Decoder: a rectified-flow transformer over ``[noised patches_t ; registers_t]`` blocks, time-block
  causal (full attention inside a step), with adaLN-zero conditioning per time step (its noise level and
  optionally a register summary) and a learned null condition for CFG.
- Prefix conditioning: in training the first p steps of some videos stay clean (noise level 0), their
  registers are masked (``mask_prefix_registers``), and they are excluded from the loss. In sampling the
  clean prefix latents are written back after every Euler step.
- Long videos: tokenized in chunks of ``chunk_frames`` overlapping by one frame (the shared frame's step
  is kept once), chunks of equal length batched together; decoded chunk by chunk, the last decoded frame
  of a chunk re-encoded into the base latent as the clean prefix of the next.

Video files: :func:`read_video` (decord, frame sampling at a chosen fps) and :func:`write_video` (mp4 or
GIF) are re-exported from :mod:`mm1d.tokenization.video_io`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mm1d.config import VideoFlexTokConfig
from mm1d.tokenization.flextok import sample_keep_k
from mm1d.tokenization.flow import add_noise, sample_timesteps, velocity_target
from mm1d.tokenization.video_io import read_video, write_video
from mm1d.tokenization.video_latents import FRAMES_PER_STEP, num_frames_for_steps
from mm1d.tokenization.videoflextok_core import VideoFlexTokCore, chunk_spans

__all__ = ["VideoFlexTok", "parameter_report", "chunk_spans", "read_video", "write_video"]

BUNDLE_FORMAT = "mm1d.videoflextok"


def _step_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per time step: ``(B, C, T, h, w)`` pairs -> ``(B, T)``."""
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 3, 4))


class VideoFlexTok(VideoFlexTokCore):
    """The VideoFlexTok tokenizer (see the module docstring); build from a :class:`VideoFlexTokConfig`.

    Args:
        cfg: the configuration.
        load_latent: build the latent backend (False: transformer parts only, e.g. to count parameters
            on the meta device without a VAE on disk).
    """

    BUNDLE_FORMAT = BUNDLE_FORMAT

    # ---- public API ---------------------------------------------------------------------------------
    @torch.no_grad()
    def tokenize(self, video: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Video -> token ids, chunk by chunk; only the first ``k`` registers of each step are computed.

        Args:
            video: float ``[B, 3, F, H, W]`` in [-1, 1], ``F = 1 + 4m`` (any m), ``H = W = image_size``.
            k: tokens per step (default N); ``tokenize(x, k) == tokenize(x)[:, :, :k]``.

        Returns:
            long ``[B, T, k or N]`` with ``T = 1 + m``, in ``[0, codebook_size)``, on the model's device.
        """
        self.check_video(video)
        k = self.num_registers if k is None else k
        self._check_k(k)
        latent = self._require_latent()
        video = video.to(self.dec_patch.weight.device)
        b = video.shape[0]
        spans = chunk_spans(video.shape[2], self.cfg.chunk_frames)
        by_len: dict[int, list[int]] = {}
        for j, (s, e) in enumerate(spans):
            by_len.setdefault(e - s, []).append(j)
        out: list[torch.Tensor | None] = [None] * len(spans)
        with self._eval_mode():
            for idx in by_len.values():  # chunks of equal length run as one batch
                batch = torch.cat([video[:, :, spans[j][0] : spans[j][1]] for j in idx])  # (n*B, 3, f, H, W)
                ids = self.quantize(latent.encode(batch), k)[1]  # (n*B, Tc, k)
                for i, j in enumerate(idx):
                    out[j] = ids[i * b : (i + 1) * b]
        parts = [out[0]] + [o[:, 1:] for o in out[1:]]  # the shared frame's step is kept once
        return torch.cat(parts, dim=1)

    def _prepare_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """ids ``(B, T, k)`` -> (padded long ``(B, T, N)`` on CPU, k)."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 3:
            raise ValueError(f"ids must be a [B, T, k] tensor, got {getattr(ids, 'shape', type(ids))}")
        b, t, k = ids.shape
        if b < 1 or t < 1:
            raise ValueError(f"ids must have at least one sample and one time step, got shape {tuple(ids.shape)}")
        self._check_k(k)
        self.fsq.check_ids(ids)
        padded = torch.zeros(b, t, self.num_registers, dtype=torch.long)
        padded[..., :k] = ids.cpu()
        return padded, k

    @torch.no_grad()
    def detokenize(
        self,
        ids: torch.Tensor,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | Sequence[int] | None = None,
        apg: bool | None = None,
        cond_frames: torch.Tensor | None = None,
        zero_noise: bool | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Token ids -> video, chunk by chunk (k is read from the ids).

        Each sample's noise comes from its own generator (seeded once, drawn chunk after chunk), so a
        sample decodes identically alone or in any batch.

        Args:
            ids: long ``[B, T, k]``.
            steps: Euler steps per chunk (default ``cfg.decode_steps``).
            guidance_scale: CFG scale (default ``cfg.guidance_scale``; 1 disables guidance).
            seed: int (sample i uses ``seed + i``), a list of per-sample seeds, or None (random).
            apg: APG instead of plain CFG (default ``cfg.apg``).
            cond_frames: optional float ``[B, 3, 1 + 4(p-1), H, W]`` in [-1, 1]: clean conditioning frames
                for the first ``p`` steps (video continuation); ``p`` must be below the first chunk's steps.
            zero_noise: one deterministic pass from a zero input per chunk (the one-step decoder trained by
                ``aux_recon_mode="zero_noise"``; ``steps`` and ``seed`` are then unused). None: the
                config's ``decode_mode``.
            progress: show progress bars.

        Returns:
            float32 ``[B, 3, 1 + 4(T-1), H, W]`` in [-1, 1].
        """
        padded, k = self._prepare_ids(ids)
        zero_noise = self.cfg.decode_mode == "one_step" if zero_noise is None else zero_noise
        if zero_noise:
            steps = 1
        b, t_total, _ = padded.shape
        latent = self._require_latent()
        device = self.dec_patch.weight.device
        gens = [torch.Generator().manual_seed(s) for s in self._seeds(seed, b)]
        spans = chunk_spans(num_frames_for_steps(t_total), self.cfg.chunk_frames)
        c, s = self.cfg.latent_channels, self.latent_size
        pieces: list[torch.Tensor] = []
        with self._eval_mode():
            for j, (f0, f1) in enumerate(spans):
                s0, s1 = f0 // FRAMES_PER_STEP, (f1 - 1) // FRAMES_PER_STEP + 1
                chunk_ids = padded[:, s0:s1].clone()  # (B, Tc, N)
                prefix_lat = None
                if j == 0 and cond_frames is not None:
                    self.check_video(cond_frames)
                    prefix_lat = latent.encode(cond_frames.to(device)).float()  # (B, C, p, h, w)
                elif j > 0:
                    last = pieces[-1][:, :, -1:]  # (B, 3, 1, H, W): the last decoded frame
                    prefix_lat = latent.encode(last.to(device)).float()  # (B, C, 1, h, w)
                    if not self.cfg.mask_prefix_registers:
                        chunk_ids[:, :1, :k] = self.tokenize(last, k).cpu()
                if prefix_lat is not None and prefix_lat.shape[0] != b:
                    raise ValueError(f"cond_frames has {prefix_lat.shape[0]} videos for {b} id rows")
                tc = s1 - s0
                if zero_noise:
                    noise = torch.zeros(b, c, tc, s, s)
                else:
                    noise = torch.stack([torch.randn((c, tc, s, s), generator=g) for g in gens])
                codes = self.fsq.indices_to_codes(chunk_ids.to(device))  # (B, Tc, N, D_fsq)
                keep = torch.full((b, tc), k, dtype=torch.long, device=device)
                lat = self.sample_latents(
                    codes, keep, noise.to(device), prefix_lat, steps, guidance_scale, apg, progress
                )  # (B, C, Tc, h, w)
                frames = latent.decode(lat).clamp(-1, 1)  # (B, 3, 1 + 4(Tc-1), H, W)
                pieces.append(frames if j == 0 else frames[:, :, 1:])
        return torch.cat(pieces, dim=2)

    @torch.no_grad()
    def autoencode(self, video: torch.Tensor, k: int | None = None, **decode_kwargs: Any) -> torch.Tensor:
        """``detokenize(tokenize(video, k), **decode_kwargs)``: ``[B, 3, F, H, W] -> [B, 3, F, H, W]``."""
        return self.detokenize(self.tokenize(video, k), **decode_kwargs)

    # ---- training -----------------------------------------------------------------------------------
    def draw_prefix(self, b: int, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Clean prefix steps for a training batch: bool ``(B, T)``, True on steps ``< p`` of each video.

        With probability ``prefix_prob`` a video gets ``p ~ U{1..min(max_prefix_steps, T-1)}``, else p = 0.
        """
        prefix = torch.zeros(b, t, dtype=torch.bool)
        if t < 2 or self.cfg.prefix_prob <= 0:
            return prefix
        cpu = generator if generator is not None and generator.device.type == "cpu" else None
        has = torch.rand(b, generator=cpu) < self.cfg.prefix_prob  # (B,)
        p = torch.randint(1, min(self.cfg.max_prefix_steps, t - 1) + 1, (b,), generator=cpu)  # (B,)
        return (torch.arange(t)[None] < p[:, None]) & has[:, None]

    def training_loss(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One evaluation of the training objective on a batch of single-chunk videos.

        Args:
            video: float ``[B, 3, F, H, W]`` in [-1, 1] with ``F = 1 + 4m <= chunk_frames``.
            generator: optional RNG for every random draw (keep_k, prefix, noise, t, dropouts), for exact
                reproducibility and resume.

        Returns:
            (scalar loss, metrics): ``loss`` = ``rf_weight`` * RF velocity MSE over the non-prefix steps
            + ``aux_recon_weight`` * reconstruction MSE over the same steps. Metrics (floats): ``loss``,
            ``rf`` (if rf_weight > 0), ``aux`` (if enabled), ``codes_used``, ``keep_k`` (mean),
            ``prefix_steps`` (mean p).
        """
        cfg = self.cfg
        self.check_video(video)
        if video.shape[2] > cfg.chunk_frames:
            raise ValueError(f"training videos must have at most chunk_frames={cfg.chunk_frames} frames, "
                             f"got {video.shape[2]}")
        device = self.dec_patch.weight.device
        rdev = self._rand_device(generator, device)
        cpu_gen = generator if generator is not None and generator.device.type == "cpu" else None
        b, n = video.shape[0], self.num_registers
        x0 = self._require_latent().encode(video.to(device)).float()  # (B, C, T, h, w)
        t = x0.shape[2]
        codes, ids = self.quantize(x0)  # (B, T, N, D_fsq), (B, T, N)
        if cfg.perturb_prob > 0:
            hit = torch.rand(b, generator=generator, device=rdev) < cfg.perturb_prob  # (B,)
            swap = torch.rand(b, t, n, generator=generator, device=rdev) < cfg.perturb_fraction  # (B, T, N)
            swap = (swap & hit[:, None, None]).to(device)
            rand_ids = self.fsq.random_ids((b, t, n), generator, device)
            rand_codes = self.fsq.indices_to_codes(rand_ids).to(codes.dtype)
            codes = torch.where(swap[..., None], rand_codes, codes)
        keep = sample_keep_k(b, n, cfg.nested_dropout, cpu_gen)[:, None].repeat(1, t)  # (B, T)
        if cfg.first_step_dropout != "same":
            keep[:, 0] = sample_keep_k(b, n, cfg.first_step_dropout, cpu_gen)
        keep = keep.to(device)
        prefix = self.draw_prefix(b, t, generator).to(device)  # (B, T)
        null = (torch.rand(b, generator=generator, device=rdev) < cfg.cond_dropout).to(device)
        noise = torch.randn(x0.shape, generator=generator, device=rdev).to(device)
        ts = sample_timesteps(b, cfg.timestep_sampling, generator, device, cfg.ln_mean, cfg.ln_std)  # (B,)
        t_step = torch.where(prefix, torch.zeros_like(ts)[:, None], ts[:, None])  # (B, T): 0 on the prefix
        # noise every (sample, step) at its own level; prefix steps (level 0) stay exactly clean
        def flat(z: torch.Tensor) -> torch.Tensor:
            return z.permute(0, 2, 1, 3, 4).reshape(b * t, z.shape[1], *z.shape[3:])  # (B*T, C, h, w)

        x_t = add_noise(flat(x0), flat(noise), t_step.reshape(b * t))  # (B*T, C, h, w)
        x_t = x_t.view(b, t, *x_t.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C, T, h, w)
        weight = (~prefix).float()  # (B, T): the prefix is excluded from the loss
        denom = weight.sum().clamp_min(1.0)
        loss = torch.zeros((), device=device)
        metrics: dict[str, float] = {}
        if cfg.rf_weight > 0:  # the draws above happen either way, so the RNG stream does not depend on it
            v = self.decoder_forward(x_t, t_step, codes, keep, null, prefix)  # (B, C, T, h, w)
            rf = (_step_mse(v, velocity_target(x0, noise)) * weight).sum() / denom
            loss = loss + cfg.rf_weight * rf
            metrics["rf"] = float(rf.detach())
        if cfg.aux_recon_weight > 0:
            if cfg.aux_recon_mode == "x0":
                x0_hat = x_t - t_step[:, None, :, None, None] * v
            else:  # one deterministic pass at level 1 from a zero input (the prefix stays clean)
                x_in = torch.where(prefix[:, None, :, None, None], x0, torch.zeros_like(x0))
                ones = torch.where(prefix, torch.zeros_like(t_step), torch.ones_like(t_step))
                x0_hat = x_in - self.decoder_forward(x_in, ones, codes, keep, torch.zeros_like(null), prefix)
            aux = (_step_mse(x0_hat, x0) * weight).sum() / denom
            loss = loss + cfg.aux_recon_weight * aux
            metrics["aux"] = float(aux.detach())
        metrics["loss"] = float(loss.detach())
        metrics["codes_used"] = float(torch.unique(ids).numel())
        metrics["keep_k"] = float(keep.float().mean())
        metrics["prefix_steps"] = float(prefix.float().sum(1).mean())
        return loss, metrics


def parameter_report(cfg: VideoFlexTokConfig) -> dict[str, int]:
    """Count parameters of a config without allocating memory (built on the meta device, no VAE).

    Returns:
        counts: ``encoder``, ``decoder``, ``decoder_adaln`` (modulation layers), ``total`` and
        ``total_without_adaln``.
    """
    with torch.device("meta"):
        model = VideoFlexTok(cfg, load_latent=False)
    counts = {"encoder": 0, "decoder": 0, "decoder_adaln": 0}
    for name, prm in model.named_parameters():
        if name.startswith("enc_"):
            counts["encoder"] += prm.numel()
        else:
            counts["decoder"] += prm.numel()
            if ".modulation." in name:
                counts["decoder_adaln"] += prm.numel()
    counts["total"] = counts["encoder"] + counts["decoder"]
    counts["total_without_adaln"] = counts["total"] - counts["decoder_adaln"]
    return counts
