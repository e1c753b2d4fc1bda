"""VideoFlexTok model core: configuration checks, sequence layout and masks, encoder, decoder, sampler.

The public tokenizer (chunked ``tokenize`` / ``detokenize``, training loss, bundles) is
:class:`mm1d.tokenization.videoflextok.VideoFlexTok`, built on :class:`VideoFlexTokCore`; the module
docstring there describes the method.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from mm1d.config import VideoFlexTokConfig
from mm1d.tokenization.blocks import (
    build_attention_mask,
    layer_norm_fp32,
    patchify,
    sincos_1d,
    sincos_2d,
    unpatchify,
)
from mm1d.tokenization.bundle import RegisterTokenizer
from mm1d.tokenization.flextok import nested_dropout_mask
from mm1d.tokenization.flow import APGConfig, euler_sample, guided_velocity, velocity_from_x0
from mm1d.tokenization.video_latents import (
    FRAMES_PER_STEP,
    DiffusersVideoVAE,
    TubeletLatent,
    check_num_frames,
    num_steps_for_frames,
)

__all__ = ["VideoFlexTokCore", "chunk_spans"]


def chunk_spans(num_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """Frame ranges ``[start, end)`` of the chunks of a ``1 + 4m`` frame video, overlapping by one frame.

    Every chunk but the last has ``chunk_frames`` frames; the last has ``1 + 4r`` frames (r >= 1). A video
    no longer than one chunk is one span.
    """
    check_num_frames(num_frames)
    check_num_frames(chunk_frames)
    if num_frames <= chunk_frames:
        return [(0, num_frames)]
    if chunk_frames < 1 + FRAMES_PER_STEP:
        raise ValueError(f"chunk_frames must be at least {1 + FRAMES_PER_STEP} to split long videos")
    stride = chunk_frames - 1
    spans, start = [], 0
    while start < num_frames - 1:
        spans.append((start, min(start + chunk_frames, num_frames)))
        start += stride
    return spans


class VideoFlexTokCore(RegisterTokenizer):
    """Modules and forward passes of VideoFlexTok; build from a :class:`VideoFlexTokConfig`.

    Args:
        cfg: the configuration.
        load_latent: build the latent backend (False: transformer parts only, e.g. to count parameters
            on the meta device without a VAE on disk).
    """

    NAME = "VideoFlexTok"
    MEDIA = "videos"
    CONFIG_CLASS = VideoFlexTokConfig

    def __init__(self, cfg: VideoFlexTokConfig, load_latent: bool = True) -> None:
        super().__init__()
        self._validate_config(cfg)
        self.cfg = copy.deepcopy(cfg)
        self.latent = self._build_latent(cfg) if load_latent else None
        self.max_steps = num_steps_for_frames(cfg.chunk_frames)
        self.latent_size = cfg.image_size // cfg.latent_downsample
        self.grid = self.latent_size // cfg.patch_size
        self.num_patches = self.grid * self.grid
        self._build_layers(cfg, (self.max_steps,))  # one register set per time step
        self.register_buffer("enc_pos", self._patch_positions(cfg.enc_dim), persistent=False)  # (Tm, P, De)
        self.register_buffer("dec_pos", self._patch_positions(cfg.dec_dim), persistent=False)  # (Tm, P, Dd)
        self._init_weights()

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def _validate_config(cls, cfg: VideoFlexTokConfig) -> None:
        need = cls._need
        need(
            cfg.chunk_frames >= 1 and (cfg.chunk_frames - 1) % FRAMES_PER_STEP == 0,
            f"chunk_frames must be 1 + {FRAMES_PER_STEP}m, got {cfg.chunk_frames}",
        )
        cls._validate_shared(cfg)
        need(0.0 <= cfg.prefix_prob <= 1.0 and cfg.max_prefix_steps >= 1, "prefix_prob in [0,1], max_prefix_steps >= 1")
        if cfg.latent == "pixels":
            need(
                cfg.latent_channels == 3 * FRAMES_PER_STEP and cfg.latent_downsample == 1,
                f"pixels latent: latent_channels={3 * FRAMES_PER_STEP}, latent_downsample=1",
            )

    @staticmethod
    def _build_latent(cfg: VideoFlexTokConfig) -> nn.Module:
        if cfg.latent == "pixels":
            return TubeletLatent()
        if cfg.latent == "vae":
            if not cfg.vae_path:
                raise ValueError("latent='vae' needs vae_path: a local directory holding a diffusers video VAE")
            vae = DiffusersVideoVAE(cfg.vae_path, cfg.vae_class, expected_channels=cfg.latent_channels)
            if vae.downsample != cfg.latent_downsample:
                raise ValueError(
                    f"the VAE at {cfg.vae_path} downsamples space by {vae.downsample}, the config says "
                    f"latent_downsample={cfg.latent_downsample}"
                )
            return vae
        raise ValueError(f"unknown latent kind {cfg.latent!r}; expected 'pixels' or 'vae'")

    def _patch_positions(self, dim: int) -> torch.Tensor:
        """Fixed position code of every patch: 2D sin-cos (space) + 1D sin-cos (time): ``(Tm, P, dim)``."""
        space = sincos_2d(self.grid, self.grid, dim)  # (P, dim)
        time = sincos_1d(torch.arange(self.max_steps), dim)  # (Tm, dim)
        return space[None] + time[:, None]

    # ---- checks -------------------------------------------------------------------------------------
    def check_video(self, video: torch.Tensor) -> None:
        """Raise a ValueError naming the problem unless ``video`` is ``[B, 3, 1+4m, S, S]`` in [-1, 1]."""
        if not isinstance(video, torch.Tensor) or video.dim() != 5:
            raise ValueError(f"video must be a [B, 3, F, H, W] tensor, got {getattr(video, 'shape', type(video))}")
        if video.shape[1] != 3:
            raise ValueError(f"video must have 3 channels (RGB) in dim 1, got {video.shape[1]}")
        check_num_frames(video.shape[2])
        s = self.cfg.image_size
        if tuple(video.shape[3:]) != (s, s):
            raise ValueError(f"frames must be {s}x{s} for this tokenizer, got {video.shape[3]}x{video.shape[4]}")
        if not video.dtype.is_floating_point:
            raise ValueError(f"video must be float in [-1, 1], got dtype {video.dtype} (use video_io.to_float)")
        lo, hi = float(video.min()), float(video.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"video must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")

    # ---- sequence layout ----------------------------------------------------------------------------
    def _layout(self, steps: int, regs: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Per-token roles of the interleaved sequence ``[patches_t ; regs_t]`` for t < steps.

        Returns:
            ``(time, is_register, order)``, each ``(steps * (P + regs),)``.
        """
        p = self.num_patches
        block = p + regs
        time = torch.arange(steps, device=device).repeat_interleave(block)
        within = torch.arange(block, device=device).repeat(steps)
        is_reg = within >= p
        order = torch.clamp(within - p, min=0)
        return time, is_reg, order

    def encoder_mask(self, steps: int, regs: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool ``(L, L)`` encoder mask over ``steps`` blocks of ``[P patches ; regs registers]``."""
        time, is_reg, order = self._layout(steps, regs, torch.device(device))
        mask = build_attention_mask(
            time, is_reg, order, time_mode="causal", register_mode="causal", registers_see_past_registers=False
        )
        if self.cfg.registers_see_past:
            # register i may also read registers 0..i of earlier steps: nested in i, causal in time
            past = is_reg[:, None] & is_reg[None, :] & (time[None, :] < time[:, None])
            mask = mask | (past & (order[None, :] <= order[:, None]))
        return mask

    def decoder_mask(self, steps: int, device: torch.device | str = "cpu", regs: int | None = None) -> torch.Tensor:
        """bool ``(L, L)`` decoder mask: every token sees all tokens of its own and earlier steps (``regs``
        registers per step, default N)."""
        regs = self.num_registers if regs is None else regs
        time, is_reg, order = self._layout(steps, regs, torch.device(device))
        return build_attention_mask(
            time, is_reg, order, time_mode="causal", register_mode="full", patches_see_registers=True
        )

    def _patch_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, h, w)`` -> ``(B, T, P, C p p)``."""
        b, c, t, h, w = latents.shape
        frames = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (B*T, C, h, w)
        return patchify(frames, self.cfg.patch_size).view(b, t, self.num_patches, -1)

    # ---- encoder ------------------------------------------------------------------------------------
    def encode_registers(self, latents: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Run the encoder with the first ``k`` registers of every step.

        Args:
            latents: ``(B, C, T, h, w)`` base latents, ``T <= max_steps``.
            k: registers per step (default N).

        Returns:
            float ``(B, T, k, D_fsq)`` pre-quantization register outputs.
        """
        k = self.num_registers if k is None else k
        b, _, t = latents.shape[:3]
        if t > self.max_steps:
            raise ValueError(f"{t} time steps exceed this tokenizer's chunk of {self.max_steps}; use tokenize()")
        dtype = self.enc_patch.weight.dtype
        p = self.num_patches
        x = self.enc_patch(self._patch_tokens(latents.to(dtype))) + self.enc_pos[:t].to(dtype)  # (B, T, P, De)
        regs = self.enc_registers[:t, :k].to(dtype).expand(b, -1, -1, -1)  # (B, T, k, De)
        h = torch.cat([x, regs], dim=2).reshape(b, t * (p + k), -1)  # (B, T*(P+k), De)
        mask = self.encoder_mask(t, k, h.device)
        for blk in self.enc_blocks:
            h = blk(h, mask)
        reg_out = h.view(b, t, p + k, -1)[:, :, p:]  # (B, T, k, De)
        return self.enc_out(layer_norm_fp32(reg_out))

    def quantize(self, latents: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder + FSQ: ``(B, C, T, h, w)`` -> (codes float ``(B, T, k, D_fsq)``, ids long ``(B, T, k)``)."""
        z = self.encode_registers(latents, k)
        b, t, kk, dq = z.shape
        codes, ids = self.fsq(z.reshape(b * t, kk, dq))  # FSQ statistics per register position
        return codes.view(b, t, kk, dq), ids.view(b, t, kk)

    # ---- decoder ------------------------------------------------------------------------------------
    def register_inputs(
        self, codes: torch.Tensor, keep_k: torch.Tensor, null: torch.Tensor, prefix: torch.Tensor
    ) -> torch.Tensor:
        """Decoder register tokens: project codes, add positions, nested dropout, prefix mask, null condition.

        Args:
            codes: float ``(B, T, N, D_fsq)``.
            keep_k: long ``(B, T)`` tokens kept per step; later positions get the mask token.
            null: bool ``(B,)`` rows whose registers are all replaced by the null condition.
            prefix: bool ``(B, T)`` clean prefix steps (their registers are masked when configured).

        Returns:
            ``(B, T, N, Dd)``.
        """
        b, t, n, _ = codes.shape
        dtype = self.dec_reg_in.weight.dtype
        reg = self.dec_reg_in(codes.to(dtype)) + self.dec_reg_pos[:t].to(dtype)  # (B, T, N, Dd)
        dropped = nested_dropout_mask(keep_k.reshape(b * t).to(reg.device), n).view(b, t, n)  # (B, T, N)
        if self.cfg.mask_prefix_registers:
            dropped = dropped | prefix.to(reg.device)[:, :, None]
        reg = torch.where(dropped[..., None], self.mask_token.to(dtype), reg)
        return torch.where(null.to(reg.device)[:, None, None, None], self.null_cond.to(dtype), reg)

    def decoder_forward(
        self,
        x_t: torch.Tensor,
        t_step: torch.Tensor,
        codes: torch.Tensor,
        keep_k: torch.Tensor,
        null: torch.Tensor,
        prefix: torch.Tensor,
        compact: bool = False,
    ) -> torch.Tensor:
        """Predict the velocity of every latent step.

        Within a step, the registers past the longest kept prefix are identical in every row (the mask token
        or the null condition, with the step's conditioning) and see the same keys, so they stay identical
        through every block. With ``compact`` each step runs them as one token whose attention logit gets
        ``+log(copies)``: the same output for far fewer tokens at small k (inference only).

        Args:
            x_t: noised latents ``(B, C, T, h, w)`` (prefix steps clean).
            t_step: noise level per step ``(B, T)`` in [0, 1] (0 on prefix steps).
            codes: float ``(B, T, N, D_fsq)`` quantized codes.
            keep_k: long ``(B, T)`` tokens kept per step.
            null: bool ``(B,)`` rows decoded without condition.
            prefix: bool ``(B, T)`` clean prefix steps.
            compact: run each step's identical trailing registers as one weighted token (see above).

        Returns:
            velocity float32 ``(B, C, T, h, w)`` (from the predicted clean latents when ``prediction="x0"``).
        """
        cfg = self.cfg
        b, c, t, hh, ww = x_t.shape
        p, n = self.num_patches, self.num_registers
        dtype = self.dec_patch.weight.dtype
        reg = self.register_inputs(codes, keep_k, null, prefix)  # (B, T, N, Dd)
        x = self.dec_patch(self._patch_tokens(x_t.to(dtype))) + self.dec_pos[:t].to(dtype)  # (B, T, P, Dd)
        cond = self.t_embed(t_step.reshape(b * t).to(x.device)).view(b, t, -1)  # (B, T, Dd)
        if self.summary is not None:
            kept = (~nested_dropout_mask(keep_k.reshape(b * t).to(x.device), n)).view(b, t, n, 1).to(dtype)
            pooled = (reg * kept).sum(2) / kept.sum(2).clamp_min(1.0)  # (B, T, Dd)
            cond = cond + self.summary(pooled)
        copies = n - int(keep_k.max())  # registers past every row's prefix, in every step
        compacted = compact and copies > 1
        if compacted:
            n = n - copies + 1
            reg = reg[:, :, :n]  # (B, T, kmax + 1, Dd): the last of each step stands for all its copies
        time, is_reg, order = self._layout(t, n, x.device)
        mask = self.decoder_mask(t, x.device, regs=n)
        if compacted:
            bias = torch.where(is_reg & (order == n - 1), math.log(copies), 0.0)  # (L,): a bias per key
            mask = torch.where(mask, bias[None, :], float("-inf")).to(dtype)
        h = torch.cat([x, reg], dim=2).reshape(b, t * (p + n), -1)  # (B, T*(P+N), Dd)
        groups = is_reg.long() if cfg.register_modulation else None
        for blk in self.dec_blocks:
            h = blk(h, cond, groups, mask, cond_index=time)
        patches = h.view(b, t, p + n, -1)[:, :, :p].reshape(b, t * p, -1)  # (B, T*P, Dd)
        patch_time = torch.arange(t, device=h.device).repeat_interleave(p)
        patch_groups = torch.zeros_like(patch_time) if groups is not None else None
        out = self.dec_final(patches, cond, patch_groups, cond_index=patch_time).float()  # (B, T*P, C p p)
        frames = unpatchify(out.view(b * t, p, -1), cfg.patch_size, c, hh, ww)  # (B*T, C, h, w)
        out = frames.view(b, t, c, hh, ww).permute(0, 2, 1, 3, 4)  # (B, C, T, h, w)
        if cfg.prediction == "x0":
            out = velocity_from_x0(x_t.float(), out, t_step.to(out.device).float()[:, None, :, None, None])
        return out

    # ---- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(
        self,
        codes: torch.Tensor,
        keep_k: torch.Tensor,
        noise: torch.Tensor,
        prefix_latents: torch.Tensor | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        apg: bool | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Euler-integrate the decoder for one chunk, keeping the clean prefix latents fixed.

        Args:
            codes: float ``(B, T, N, D_fsq)`` quantized codes.
            keep_k: long ``(B, T)`` tokens kept per step.
            noise: starting noise ``(B, C, T, h, w)`` (zeros for the deterministic zero-noise mode).
            prefix_latents: optional clean latents ``(B, C, p, h, w)`` of the first ``p < T`` steps; they
                are written into the state before the first and after every Euler step.
            steps, guidance_scale, apg: sampler settings (defaults from the config).
            progress: show a progress bar.

        Returns:
            float32 latents ``(B, C, T, h, w)``; ``[:, :, :p]`` equals ``prefix_latents`` exactly.
        """
        cfg = self.cfg
        steps = cfg.decode_steps if steps is None else steps
        scale = cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        use_apg = cfg.apg if apg is None else apg
        b, _, t = noise.shape[:3]
        p = 0 if prefix_latents is None else prefix_latents.shape[2]
        if p >= t:
            raise ValueError(f"a prefix of {p} steps leaves nothing to decode in a chunk of {t} steps")
        device = noise.device
        prefix = (torch.arange(t, device=device) < p)[None].expand(b, t)  # (B, T)
        clean = None if prefix_latents is None else prefix_latents.to(device=device, dtype=noise.dtype)

        def write_back(x: torch.Tensor) -> torch.Tensor:
            return x if clean is None else torch.cat([clean, x[:, :, p:]], dim=2)

        def model_fn(x: torch.Tensor, tt: torch.Tensor, with_uncond: bool) -> torch.Tensor:
            m = x.shape[0]
            pm = prefix[:1].expand(m, t)
            t_step = torch.where(pm, torch.zeros_like(tt)[:, None], tt[:, None])  # (M, T)
            null = torch.arange(m, device=device) >= b  # rows B..2B-1 (only with_uncond) are unconditional
            rep = m // b
            v = self.decoder_forward(x, t_step, codes.repeat(rep, 1, 1, 1), keep_k.repeat(rep, 1), null, pm,
                                     compact=True)
            return v * (~pm)[:, None, :, None, None]  # prefix steps do not move (and do not enter APG norms)

        with self._eval_mode():
            velocity = guided_velocity(model_fn, scale, APGConfig() if use_apg else None)
            return euler_sample(velocity, write_back(noise), steps, progress=progress, post_step=write_back)
