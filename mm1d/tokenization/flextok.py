"""FlexTok: images <-> ordered 1D sequences of 1..N discrete tokens (Bachmann et al., 2025).

- Encoder: a transformer over ``[latent patches ; N registers]`` with the "causal_last" mask (patches see
  patches; register i sees all patches and registers 0..i), so the first k tokens never depend on how
  many registers run. A linear head maps each register to the FSQ dimension; FSQ gives the ids.
- Nested dropout (training): per sample, registers at positions >= keep_k are replaced by one learned
  mask token; this orders the tokens coarse to fine.
- Decoder: a rectified-flow transformer over ``[noised latent patches ; registers]`` with adaLN-zero
  timestep conditioning (separate modulation for the two sub-sequences), predicting the velocity
  ``noise - x0``. A learned null condition replaces all registers with probability ``cond_dropout`` (CFG).
- Optional: REPA, latent perturbation, an auxiliary direct-reconstruction loss, and a pooled register
  summary added to the timestep embedding (a stronger register path).

All tensors are batch first; attention is plain SDPA (no compilation, any batch size, CPU or GPU).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm1d.config import FlexTokConfig
from mm1d.tokenization.blocks import (
    causal_last_mask,
    layer_norm_fp32,
    patchify,
    sincos_2d,
    unpatchify,
)
from mm1d.tokenization.bundle import RegisterTokenizer
from mm1d.tokenization.flow import (
    APGConfig,
    add_noise,
    contrast_weights,
    euler_sample,
    guided_velocity,
    sample_timesteps,
    velocity_from_x0,
    weighted_mse,
)
from mm1d.tokenization.latents import build_latent
from mm1d.tokenization.repa import FeatureFn, TokenReadout, build_feature_extractor, teacher_grid

BUNDLE_FORMAT = "mm1d.flextok"


def sample_keep_k(
    batch: int, num_registers: int, mode: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw the nested-dropout keep counts.

    Args:
        batch: B.
        num_registers: N.
        mode: ``"uniform"`` (k ~ U{1..N}), ``"pow2"`` (k uniform over {1, 2, 4, ..., N}; N is included
            even if it is not a power of two), ``"uniform_pow2"`` (a uniform k rounded up to the next power
            of two, capped at N) or ``"none"`` (k = N).
        generator: optional CPU RNG.

    Returns:
        long ``(B,)`` in ``[1, N]`` (on CPU).
    """
    if mode == "none":
        return torch.full((batch,), num_registers, dtype=torch.long)
    if mode == "uniform":
        return torch.randint(1, num_registers + 1, (batch,), generator=generator)
    if mode == "pow2":
        choices = [2**i for i in range(int(math.log2(num_registers)) + 1)]
        if choices[-1] != num_registers:
            choices.append(num_registers)
        idx = torch.randint(0, len(choices), (batch,), generator=generator)
        return torch.tensor(choices, dtype=torch.long)[idx]
    if mode == "uniform_pow2":
        u = torch.randint(1, num_registers + 1, (batch,), generator=generator)
        k = 2 ** torch.ceil(torch.log2(u.double())).long()
        return k.clamp(max=num_registers)
    raise ValueError(f"unknown nested dropout mode {mode!r}; expected pow2, uniform, uniform_pow2 or none")


def nested_dropout_mask(keep_k: torch.Tensor, num_registers: int) -> torch.Tensor:
    """bool ``(B, N)``: True at the register positions ``>= keep_k`` (those replaced by the mask token)."""
    return torch.arange(num_registers, device=keep_k.device)[None, :] >= keep_k[:, None]


class FlexTok(RegisterTokenizer):
    """The FlexTok tokenizer. See the module docstring; build from a :class:`FlexTokConfig`.

    Args:
        cfg: the configuration.
        load_latent: build the latent backend (False: only the transformer parts, e.g. to count
            parameters on the meta device without a VAE on disk).
    """

    NAME = "FlexTok"
    MEDIA = "images"
    CONFIG_CLASS = FlexTokConfig
    BUNDLE_FORMAT = BUNDLE_FORMAT

    def __init__(self, cfg: FlexTokConfig, load_latent: bool = True) -> None:
        super().__init__()
        self._validate_config(cfg)
        self.cfg = copy.deepcopy(cfg)
        self.latent = build_latent(cfg.latent, cfg.vae_path, cfg.vae_sample_posterior) if load_latent else None
        if self.latent is not None and (
            self.latent.channels != cfg.latent_channels or self.latent.downsample != cfg.latent_downsample
        ):
            raise ValueError(
                f"latent backend has {self.latent.channels} channels and downsample {self.latent.downsample}, "
                f"but the config says latent_channels={cfg.latent_channels}, "
                f"latent_downsample={cfg.latent_downsample}"
            )
        self.latent_size = cfg.image_size // cfg.latent_downsample
        self.grid = self.latent_size // cfg.patch_size
        self.num_patches = self.grid * self.grid
        n, p, dd = cfg.num_registers, self.num_patches, cfg.dec_dim
        self._build_layers(cfg, ())
        self.register_buffer("enc_pos", sincos_2d(self.grid, self.grid, cfg.enc_dim), persistent=False)
        self.register_buffer("dec_pos", sincos_2d(self.grid, self.grid, dd), persistent=False)
        self.register_buffer(
            "groups", torch.cat([torch.zeros(p, dtype=torch.long), torch.ones(n, dtype=torch.long)]), persistent=False
        )
        self.repa_proj: nn.Module | None = None
        if cfg.repa_weight > 0 and cfg.repa_pass == "tokens":
            self.repa_proj = TokenReadout(dd, p, cfg.repa_dim, cfg.head_dim)
        elif cfg.repa_weight > 0:
            self.repa_proj = nn.Sequential(nn.Linear(dd, 2 * dd), nn.SiLU(), nn.Linear(2 * dd, cfg.repa_dim))
        self._teacher: FeatureFn | None = None
        self._init_weights()

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def _validate_config(cls, cfg: FlexTokConfig) -> None:
        cls._validate_shared(cfg)
        if cfg.repa_weight > 0:
            cls._need(cfg.repa_dim > 0, "repa_weight > 0 needs repa_dim (teacher feature width)")
            cls._need(cfg.repa_pass == "tokens" or 0 <= cfg.repa_layer < cfg.dec_depth,
                      "repa_layer must index a decoder block")  # the tokens pass reads no decoder block
            if cfg.repa_pass == "one_step":
                cls._need(cfg.aux_recon_weight > 0 and cfg.aux_recon_mode == "zero_noise",
                          "repa_pass='one_step' aligns the zero-input pass: it needs aux_recon_weight > 0 and "
                          "aux_recon_mode='zero_noise'")
        if cfg.latent == "pixels":
            cls._need(
                cfg.latent_channels == 3 and cfg.latent_downsample == 1, "pixels latent: 3 channels, downsample 1"
            )

    def set_repa_teacher(self, fn: FeatureFn | None) -> None:
        """Use ``fn`` (frozen, not saved) as the REPA feature extractor instead of the configured spec."""
        # a plain attribute, not a submodule: the teacher must stay out of state_dict, checkpoints and bundles
        object.__setattr__(self, "_teacher", fn)

    # ---- checks -------------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
        s = self.cfg.image_size
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB), got {images.shape[1]}")
        if tuple(images.shape[2:]) != (s, s):
            raise ValueError(f"images must be {s}x{s} for this tokenizer, got {images.shape[2]}x{images.shape[3]}")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")

    # ---- encoder ------------------------------------------------------------------------------------
    def encode_registers(self, latents: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Run the encoder with only the first ``k`` registers.

        Args:
            latents: ``(B, C, h, w)`` base latents.
            k: registers to compute (default N).

        Returns:
            float ``(B, k, D_fsq)`` pre-quantization register outputs.
        """
        k = self.num_registers if k is None else k
        dtype = self.enc_patch.weight.dtype
        patches = patchify(latents.to(dtype), self.cfg.patch_size)  # (B, P, C p p)
        b = patches.shape[0]
        x = self.enc_patch(patches) + self.enc_pos.to(dtype)  # (B, P, De)
        regs = self.enc_registers[:k].to(dtype).expand(b, -1, -1)  # (B, k, De)
        x = torch.cat([x, regs], dim=1)  # (B, P + k, De)
        mask = causal_last_mask(self.num_patches, k, device=x.device)
        for blk in self.enc_blocks:
            x = blk(x, mask)
        return self.enc_out(layer_norm_fp32(x[:, self.num_patches :]))

    def quantize(self, latents: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder + FSQ: latents ``(B, C, h, w)`` -> (codes float ``(B, k, D_fsq)``, ids long ``(B, k)``)."""
        return self.fsq(self.encode_registers(latents, k))

    # ---- decoder ------------------------------------------------------------------------------------
    def register_inputs(self, codes: torch.Tensor, keep_k: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """Decoder register tokens: project codes, add positions, nested dropout, null condition.

        Args:
            codes: float ``(B, N, D_fsq)``.
            keep_k: long ``(B,)``; positions ``>= keep_k`` get the mask token.
            null: bool ``(B,)``; those rows are replaced entirely by the null condition.

        Returns:
            ``(B, N, Dd)``.
        """
        dtype = self.dec_reg_in.weight.dtype
        reg = self.dec_reg_in(codes.to(dtype)) + self.dec_reg_pos.to(dtype)  # (B, N, Dd)
        dropped = nested_dropout_mask(keep_k.to(reg.device), self.num_registers)  # (B, N)
        reg = torch.where(dropped[..., None], self.mask_token.to(dtype), reg)
        return torch.where(null.to(reg.device)[:, None, None], self.null_cond.to(dtype), reg)

    def decoder_forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        codes: torch.Tensor,
        keep_k: torch.Tensor,
        null: torch.Tensor,
        return_repa: bool = False,
        compact: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predict the velocity.

        The registers past the longest kept prefix are identical in every row (the mask token, or the null
        condition), and attention has no positional term, so they stay identical through every block. With
        ``compact`` they are run as one token whose attention logit gets ``+log(copies)``: the same output for
        far fewer tokens at small k (inference; training keeps the plain path).

        Args:
            x_t: noised latents ``(B, C, h, w)``.
            t: noise levels ``(B,)`` in [0, 1].
            codes: float ``(B, N, D_fsq)`` quantized codes (positions >= keep_k are ignored).
            keep_k: long ``(B,)`` tokens kept per sample.
            null: bool ``(B,)`` rows decoded without condition.
            return_repa: also return the patch tokens after block ``repa_layer``.
            compact: run the identical trailing registers as one weighted token (see above).

        Returns:
            (velocity float32 ``(B, C, h, w)`` (from the predicted clean latents when
            ``prediction="x0"``), REPA features ``(B, P, Dd)`` or None).
        """
        cfg = self.cfg
        dtype = self.dec_patch.weight.dtype
        reg = self.register_inputs(codes, keep_k, null)  # (B, N, Dd)
        x = self.dec_patch(patchify(x_t.to(dtype), cfg.patch_size)) + self.dec_pos.to(dtype)  # (B, P, Dd)
        cond = self.t_embed(t.to(x.device))  # (B, Dd)
        if self.summary is not None:
            kept = (~nested_dropout_mask(keep_k.to(reg.device), self.num_registers)).to(dtype)  # (B, N)
            pooled = (reg * kept[..., None]).sum(1) / kept.sum(1, keepdim=True).clamp_min(1.0)  # (B, Dd)
            cond = cond + self.summary(pooled)
        groups, bias = self.groups, None
        copies = self.num_registers - int(keep_k.max())  # registers past every row's prefix
        if compact and copies > 1:
            reg = reg[:, : self.num_registers - copies + 1]  # (B, kmax + 1, Dd): the last stands for all copies
            groups = self.groups[: self.num_patches + reg.shape[1]]
            bias = torch.zeros(len(groups), dtype=dtype, device=x.device)
            bias[-1] = math.log(copies)
            bias = bias.expand(len(groups), len(groups))  # (L, L): the same key bias for every query
        h = torch.cat([x, reg], dim=1)  # (B, P + N, Dd), or (B, P + kmax + 1, Dd) compacted
        feats = None
        for i, blk in enumerate(self.dec_blocks):
            h = blk(h, cond, groups, bias)
            if return_repa and i == cfg.repa_layer:
                feats = h[:, : self.num_patches]
        out = self.dec_final(h[:, : self.num_patches], cond, self.groups[: self.num_patches])  # (B, P, C p p)
        v = unpatchify(out.float(), cfg.patch_size, cfg.latent_channels, self.latent_size, self.latent_size)
        if cfg.prediction == "x0":
            v = velocity_from_x0(x_t.float(), v, t.to(v.device))
        return v, feats

    # ---- public API ---------------------------------------------------------------------------------
    @torch.no_grad()
    def tokenize(self, images: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Images -> token ids; only the first ``k`` registers are computed.

        Args:
            images: float ``(B, 3, H, W)`` in [-1, 1], ``H = W = cfg.image_size``.
            k: number of tokens (default N); ``tokenize(x, k) == tokenize(x)[:, :k]``.

        Returns:
            long ``(B, k or N)`` in ``[0, codebook_size)``.
        """
        self._check_images(images)
        k = self.num_registers if k is None else k
        self._check_k(k)
        with self._eval_mode():
            latents = self._require_latent().encode(images.to(self.enc_patch.weight.device))
            return self.quantize(latents, k)[1]

    def _prepare_ids(self, ids: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids ``(B, k)`` or ragged list of ``(k_i,)`` -> (padded long ``(B, N)``, keep_k long ``(B,)``)."""
        n = self.num_registers
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 2:
                raise ValueError(f"ids must be (B, k) or a list of 1D tensors, got shape {tuple(ids.shape)}")
            rows = list(ids)
        else:
            rows = [torch.as_tensor(r) for r in ids]
            rows = [r[0] if r.dim() == 2 and r.shape[0] == 1 else r for r in rows]  # accept (1, k) rows
            if not rows:
                raise ValueError("ids is an empty list")
        padded = torch.zeros(len(rows), n, dtype=torch.long)
        keep = torch.zeros(len(rows), dtype=torch.long)
        for i, r in enumerate(rows):
            if r.dim() != 1:
                raise ValueError(f"ids[{i}] must be 1D, got shape {tuple(r.shape)}")
            if not 1 <= r.numel() <= n:
                raise ValueError(f"ids[{i}] has {r.numel()} tokens; this tokenizer decodes 1 to {n} tokens")
            self.fsq.check_ids(r)
            padded[i, : r.numel()] = r.cpu()
            keep[i] = r.numel()
        return padded, keep

    @torch.no_grad()
    def detokenize(
        self,
        ids: torch.Tensor | Sequence[torch.Tensor],
        steps: int | None = None,
        guidance_scale: float | None = None,
        apg: bool | None = None,
        seed: int | Sequence[int] | None = None,
        zero_noise: bool | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Token ids -> images, by Euler integration of the flow decoder (or its one-step mode).

        All samples are decoded in one batch (ragged prefixes are padded and masked), and each sample's
        noise comes from its own seed, so a sample decodes identically alone or in any batch.

        Args:
            ids: long ``(B, k)``, or a list of B 1D tensors of lengths ``k_i`` (ragged prefixes).
            steps: Euler steps (default ``cfg.decode_steps``).
            guidance_scale: CFG scale (default ``cfg.guidance_scale``; 1 disables guidance).
            apg: use APG instead of plain CFG (default ``cfg.apg``).
            seed: int (sample i uses ``seed + i``), a list of per-sample seeds, or None (random).
            zero_noise: one deterministic pass from a zero input (the one-step decoder trained by
                ``aux_recon_mode="zero_noise"``; ``steps`` and ``seed`` are then unused). None: the
                config's ``decode_mode``.
            progress: show a progress bar over the steps.

        Returns:
            float32 ``(B, 3, H, W)`` in [-1, 1].
        """
        cfg = self.cfg
        padded, keep = self._prepare_ids(ids)
        b = padded.shape[0]
        zero_noise = cfg.decode_mode == "one_step" if zero_noise is None else zero_noise
        steps = 1 if zero_noise else cfg.decode_steps if steps is None else steps
        scale = cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        use_apg = cfg.apg if apg is None else apg
        seeds = self._seeds(seed, b)
        latent = self._require_latent()
        device = self.dec_patch.weight.device
        shape = (cfg.latent_channels, self.latent_size, self.latent_size)
        if zero_noise:
            x1 = torch.zeros(b, *shape)
        else:
            x1 = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        x1 = x1.to(device)
        codes = self.fsq.indices_to_codes(padded.to(device))  # (B, N, D_fsq)
        keep = keep.to(device)

        def model_fn(x: torch.Tensor, t: torch.Tensor, with_uncond: bool) -> torch.Tensor:
            if not with_uncond:
                return self.decoder_forward(x, t, codes, keep, torch.zeros(b, dtype=torch.bool, device=device),
                                            compact=True)[0]
            null = torch.arange(2 * b, device=device) >= b  # rows B..2B-1 are unconditional
            return self.decoder_forward(x, t, codes.repeat(2, 1, 1), keep.repeat(2), null, compact=True)[0]

        with self._eval_mode():
            velocity = guided_velocity(model_fn, scale, APGConfig() if use_apg else None)
            latents = euler_sample(velocity, x1, steps, progress=progress)
            return latent.decode(latents).clamp(-1, 1)

    @torch.no_grad()
    def autoencode(self, images: torch.Tensor, k: int | None = None, **decode_kwargs: Any) -> torch.Tensor:
        """``detokenize(tokenize(images, k), **decode_kwargs)``: ``(B, 3, H, W) -> (B, 3, H, W)``."""
        return self.detokenize(self.tokenize(images, k), **decode_kwargs)

    # ---- training -----------------------------------------------------------------------------------
    def _teacher_fn(self) -> FeatureFn:
        if self._teacher is None:
            if not self.cfg.repa_extractor:
                raise ValueError("repa_weight > 0 needs repa_extractor in the config or set_repa_teacher()")
            self.set_repa_teacher(build_feature_extractor(self.cfg.repa_extractor, self.cfg.repa_dim,
                                                          self.cfg.image_size))
        return self._teacher

    def training_loss(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One training objective evaluation.

        Args:
            images: float ``(B, 3, H, W)`` in [-1, 1].
            generator: optional CPU RNG for every random draw (keep_k, noise, t, dropouts), for exact
                reproducibility and resume.

        Returns:
            (scalar loss, metrics): ``loss`` = ``rf_weight`` * RF velocity MSE + ``repa_weight`` *
            (1 - cosine) + ``aux_recon_weight`` * reconstruction MSE. Metrics hold floats: ``loss``, ``rf``
            (when rf_weight > 0), ``repa``, ``aux``, ``codes_used`` (distinct ids in the batch), ``keep_k``
            (mean).
        """
        cfg = self.cfg
        self._check_images(images)
        device = self.dec_patch.weight.device
        rdev = self._rand_device(generator, device)
        b, n = images.shape[0], self.num_registers
        images = images.to(device)
        x0 = self._require_latent().encode(images, generator).float()  # (B, C, h, w)
        codes, ids = self.quantize(x0)  # (B, N, D_fsq), (B, N)
        if cfg.perturb_prob > 0:
            hit = torch.rand(b, generator=generator, device=rdev) < cfg.perturb_prob  # (B,)
            swap = torch.rand(b, n, generator=generator, device=rdev) < cfg.perturb_fraction  # (B, N)
            swap = (swap & hit[:, None]).to(device)
            rand_codes = self.fsq.indices_to_codes(self.fsq.random_ids((b, n), generator, device)).to(codes.dtype)
            codes = torch.where(swap[..., None], rand_codes, codes)
        cpu_gen = generator if generator is not None and generator.device.type == "cpu" else None
        keep = sample_keep_k(b, n, cfg.nested_dropout, cpu_gen).to(device)
        null = (torch.rand(b, generator=generator, device=rdev) < cfg.cond_dropout).to(device)
        noise = torch.randn(x0.shape, generator=generator, device=rdev).to(device)
        t = sample_timesteps(b, cfg.timestep_sampling, generator, device, cfg.ln_mean, cfg.ln_std)
        x_t = add_noise(x0, noise, t)
        weights = contrast_weights(x0, cfg.recon_contrast_weight) if cfg.recon_contrast_weight > 0 else None
        loss = torch.zeros((), device=device)
        metrics: dict[str, float] = {}
        feats = None
        if cfg.rf_weight > 0:  # the draws above happen either way, so the RNG stream does not depend on it
            flow_repa = self.repa_proj is not None and cfg.repa_pass == "flow"
            v, feats = self.decoder_forward(x_t, t, codes, keep, null, return_repa=flow_repa)
            rf = weighted_mse(v, noise - x0, weights)
            loss = loss + cfg.rf_weight * rf
            metrics["rf"] = float(rf.detach())
        if cfg.aux_recon_weight > 0:
            if cfg.aux_recon_mode == "x0":
                x0_hat = x_t - t[:, None, None, None] * v
            else:  # one deterministic pass at t=1 from a zero input: x0 = 0 - 1 * v
                ones = torch.ones(b, device=device)
                step_repa = self.repa_proj is not None and cfg.repa_pass == "one_step"
                v0, f0 = self.decoder_forward(
                    torch.zeros_like(x0), ones, codes, keep, torch.zeros_like(null), return_repa=step_repa
                )
                feats = f0 if step_repa else feats
                x0_hat = -v0
            aux = weighted_mse(x0_hat, x0, weights)
            loss = loss + cfg.aux_recon_weight * aux
            metrics["aux"] = float(aux.detach())
        if self.repa_proj is not None:
            teacher = self._teacher_fn()
            if isinstance(teacher, nn.Module):
                teacher.to(device)
            with torch.no_grad():
                target = teacher_grid(teacher(images), self.grid, self.grid)  # (B, P, F)
            if target.shape[-1] != cfg.repa_dim:
                raise ValueError(f"REPA teacher gives {target.shape[-1]}-dim features, config says {cfg.repa_dim}")
            if cfg.repa_pass == "tokens":  # the kept registers alone, never the null condition
                reg = self.register_inputs(codes, keep, torch.zeros_like(null))  # (B, N, Dd)
                pred = self.repa_proj(reg, ~nested_dropout_mask(keep, n)).float()  # (B, P, F)
            else:
                pred = self.repa_proj(feats).float()  # (B, P, F)
            cos = F.cosine_similarity(pred, target.to(pred.device), dim=-1).mean()
            loss = loss + cfg.repa_weight * (1 - cos)
            metrics["repa"] = float((1 - cos).detach())
        metrics["loss"] = float(loss.detach())
        metrics["codes_used"] = float(torch.unique(ids).numel())
        metrics["keep_k"] = float(keep.float().mean())
        return loss, metrics


def parameter_report(cfg: FlexTokConfig) -> dict[str, int]:
    """Count parameters of a config without allocating memory (built on the meta device, no VAE).

    Returns:
        counts: ``encoder``, ``decoder``, ``decoder_adaln`` (modulation layers), ``other`` (FSQ and
        REPA), ``total`` and ``total_without_adaln``.
    """
    with torch.device("meta"):
        model = FlexTok(cfg, load_latent=False)
    counts = {"encoder": 0, "decoder": 0, "decoder_adaln": 0, "other": 0}
    for name, prm in model.named_parameters():
        if name.startswith("enc_"):
            counts["encoder"] += prm.numel()
        elif name.startswith("repa_"):
            counts["other"] += prm.numel()
        else:
            counts["decoder"] += prm.numel()
            if ".modulation." in name:
                counts["decoder_adaln"] += prm.numel()
    counts["total"] = counts["encoder"] + counts["decoder"] + counts["other"]
    counts["total_without_adaln"] = counts["total"] - counts["decoder_adaln"]
    return counts
