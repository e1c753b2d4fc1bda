"""What FlexTok and VideoFlexTok share: config checks, layers, weight init, common properties, and bundles.

A tokenizer bundle is a directory holding

- ``config.json``: ``{"format": <BUNDLE_FORMAT>, "version": 1, "config": <the model config as a dict>}``;
- ``model.safetensors``: the state dict (its metadata repeats the format string);
- ``vae/``: the VAE, only for ``latent="vae"`` (``config.vae_path`` is then the relative path ``"vae"``).

:class:`RegisterTokenizer` is the base class of :class:`mm1d.tokenization.flextok.FlexTok` and
:class:`mm1d.tokenization.videoflextok_core.VideoFlexTokCore`; each sets the class attributes that name
its bundle format and config dataclass.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn

from mm1d.config import from_dict, to_dict
from mm1d.tokenization.blocks import AdaLNBlock, AdaLNFinal, Block, PatchStem, TimestepEmbedder
from mm1d.tokenization.fsq import BATCH_NORMS, FSQ
from mm1d.utils import atomic_path, atomic_write_text

__all__ = ["RegisterTokenizer", "WEIGHTS_FILE", "CONFIG_FILE", "BUNDLE_VERSION"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BUNDLE_VERSION = 1


class RegisterTokenizer(nn.Module):
    """Base of the register tokenizers (an encoder with learned registers, FSQ, a flow decoder).

    A subclass sets, in its ``__init__``, ``cfg`` (its config dataclass) and ``latent`` (the latent backend or
    None), calls :meth:`_build_layers`, adds its own buffers and modules, then calls :meth:`_init_weights`.

    Class attributes:
        NAME: the tokenizer's name in error messages (``"FlexTok"``).
        MEDIA: what it encodes, in error messages (``"images"``).
        CONFIG_CLASS: the config dataclass stored in bundles.
        BUNDLE_FORMAT: the ``format`` string of its bundles (``"mm1d.flextok"``).
    """

    NAME: ClassVar[str]
    MEDIA: ClassVar[str]
    CONFIG_CLASS: ClassVar[type]
    BUNDLE_FORMAT: ClassVar[str]

    # parameters that belong to the encoder side (the learned registers, the encoder and the quantizer):
    # what freeze_encoder() freezes, so the token ids stay those of the weights it started from
    ENCODER_PREFIXES: ClassVar[tuple[str, ...]] = ("enc_", "fsq.")

    cfg: Any
    latent: nn.Module | None
    encoder_frozen: bool
    quantizer_frozen: bool

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def _need(cls, ok: bool, msg: str) -> None:
        """Raise ``ValueError("invalid <NAME> config: <msg>")`` unless ``ok``."""
        if not ok:
            raise ValueError(f"invalid {cls.NAME} config: {msg}")

    @classmethod
    def _validate_shared(cls, cfg: Any) -> None:
        """Check the config fields both tokenizers share (ValueError naming the problem)."""
        need = cls._need
        need(cfg.image_size % cfg.latent_downsample == 0, "image_size must be divisible by latent_downsample")
        need((cfg.image_size // cfg.latent_downsample) % cfg.patch_size == 0, "latent size % patch_size != 0")
        need(cfg.num_registers >= 1, "num_registers must be >= 1")
        for name in ("enc_dim", "dec_dim"):
            need(getattr(cfg, name) % cfg.head_dim == 0, f"{name} must be a multiple of head_dim")
            need(getattr(cfg, name) % 4 == 0, f"{name} must be a multiple of 4 (sin-cos position embeddings)")
        need(cfg.enc_depth >= 1 and cfg.dec_depth >= 1, "enc_depth and dec_depth must be >= 1")
        need(0.0 <= cfg.cond_dropout < 1.0, "cond_dropout must be in [0, 1)")
        need(0.0 <= cfg.perturb_prob <= 1.0 and 0.0 <= cfg.perturb_fraction <= 1.0, "perturb_* in [0, 1]")
        need(cfg.rf_weight >= 0.0 and cfg.aux_recon_weight >= 0.0, "rf_weight and aux_recon_weight must be >= 0")
        if cfg.rf_weight == 0:
            need(cfg.aux_recon_weight > 0 and cfg.aux_recon_mode == "zero_noise",
                 "rf_weight=0 trains only the one-step decoder: it needs aux_recon_weight > 0 and "
                 "aux_recon_mode='zero_noise'")
            need(getattr(cfg, "repa_weight", 0.0) == 0 or getattr(cfg, "repa_pass", "flow") != "flow",
                 "REPA on the flow pass needs rf_weight > 0 (or repa_pass='one_step' or 'tokens')")

    def _build_layers(self, cfg: Any, register_sets: tuple[int, ...]) -> None:
        """Build FSQ, the encoder and the decoder (modules in a fixed order: weight init draws in that order).

        Args:
            cfg: the config.
            register_sets: leading shape of the learned registers and register positions: ``()`` for one
                set (images), ``(Tm,)`` for one set per time step (videos).
        """
        n = cfg.num_registers
        patch_dim = cfg.latent_channels * cfg.patch_size**2
        de, dd = cfg.enc_dim, cfg.dec_dim
        self.encoder_frozen = False
        self.quantizer_frozen = False
        self.fsq = FSQ(cfg.fsq_levels, norm=cfg.quant_norm, num_positions=n, renorm_warmup=cfg.quant_renorm_warmup)
        # encoder
        self.enc_patch = PatchStem(patch_dim, de, cfg.patch_mlp)
        self.enc_registers = nn.Parameter(torch.empty(*register_sets, n, de))
        self.enc_blocks = nn.ModuleList(
            [Block(de, de // cfg.head_dim, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.enc_depth)]
        )
        self.enc_out = nn.Linear(de, self.fsq.dim)
        # decoder
        groups = 2 if cfg.register_modulation else 1
        self.dec_patch = PatchStem(patch_dim, dd, cfg.patch_mlp)
        self.dec_reg_in = nn.Linear(self.fsq.dim, dd)
        self.dec_reg_pos = nn.Parameter(torch.empty(*register_sets, n, dd))
        self.mask_token = nn.Parameter(torch.empty(dd))
        self.null_cond = nn.Parameter(torch.empty(dd))
        self.t_embed = TimestepEmbedder(dd)
        self.summary = (
            nn.Sequential(nn.Linear(dd, dd), nn.SiLU(), nn.Linear(dd, dd)) if cfg.register_summary else None
        )
        self.dec_blocks = nn.ModuleList(
            [
                AdaLNBlock(dd, dd // cfg.head_dim, cfg.mlp_ratio, cfg.qk_norm, num_groups=groups)
                for _ in range(cfg.dec_depth)
            ]
        )
        head = cfg.patch_mlp if cfg.head_mlp is None else cfg.head_mlp
        self.dec_final = AdaLNFinal(dd, patch_dim, num_groups=groups, hidden=head)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.weight.device.type != "meta":
                if m.weight.abs().sum() == 0:  # keep the adaLN-zero / zero-head initializations
                    continue
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for prm in (self.enc_registers, self.dec_reg_pos, self.mask_token, self.null_cond):
            nn.init.trunc_normal_(prm, std=0.02)
        if self.summary is not None:
            nn.init.zeros_(self.summary[-1].weight)
            nn.init.zeros_(self.summary[-1].bias)

    def compile_blocks(self, device: torch.device | str | None = None, **compile_kwargs: Any) -> None:
        """``torch.compile`` every encoder and decoder block in place (what ``engine.compile: true`` does).

        The training step calls ``training_loss``, not ``forward``, so compiling the module as a whole would
        compile nothing that training runs. Parameter names do not change, so checkpoints and bundles stay
        interchangeable with eager runs.

        Args:
            device: unused (the blocks call SDPA on every device); the engine passes it to every model.
            compile_kwargs: passed to ``torch.compile`` (for example ``backend="eager"`` in tests).
        """
        del device
        for blk in [*self.enc_blocks, *self.dec_blocks]:
            blk.compile(**compile_kwargs)

    # ---- decoder fine-tuning on fixed codes -----------------------------------------------------------
    def freeze_encoder(self) -> list[str]:
        """Freeze the encoder and the quantizer, so that training updates only the decoder.

        The quantizer then stays in eval mode even in ``train()``: every image gets its released
        (deterministic) codes, and the FSQ statistics no longer move. Token ids of the frozen model are
        exactly those of the weights it started from, so data pretokenized with them stays valid. With
        ``quant_norm="batch"`` this also removes the batch dependence of the training codes.

        Returns:
            the names of the parameters frozen.
        """
        frozen = []
        for name, p in self.named_parameters():
            if name.startswith(self.ENCODER_PREFIXES):
                p.requires_grad_(False)
                frozen.append(name)
        self.encoder_frozen = True
        self.freeze_quantizer()
        return frozen

    def freeze_quantizer(self) -> None:
        """Hold the FSQ normalization statistics fixed: the quantizer stays in eval mode even in ``train()``.

        The encoder may still train. Its training codes are then what ``tokenize`` gives for the current
        weights, and they do not depend on the rest of the batch, unlike ``quant_norm="batch"`` in training
        mode, where about half of a trained tiny tokenizer's ids change with the batch (BENCHMARKS.md).
        """
        self.quantizer_frozen = True
        self.fsq.eval()

    def train(self, mode: bool = True) -> Self:
        """``nn.Module.train``, except that a frozen quantizer stays in eval mode."""
        super().train(mode)
        if self.quantizer_frozen:
            self.fsq.eval()
        return self

    @property
    def codebook_size(self) -> int:
        """Number of distinct token ids."""
        return self.fsq.codebook_size

    @property
    def num_registers(self) -> int:
        """N, the maximum number of tokens per image (FlexTok) or per video time step (VideoFlexTok)."""
        return self.cfg.num_registers

    # ---- checks and small helpers -------------------------------------------------------------------
    def _require_latent(self) -> nn.Module:
        if self.latent is None:
            raise RuntimeError(
                f"this {self.NAME} was built with load_latent=False; it cannot encode or decode {self.MEDIA}"
            )
        return self.latent

    def _check_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_registers:
            raise ValueError(f"k must be an integer in [1, {self.num_registers}], got {k!r}")

    @torch.no_grad()
    def calibrate_quantizer(self, batches: Iterable[torch.Tensor]) -> int:
        """Recompute the FSQ running statistics exactly with the current weights (``quant_norm`` "batch" or
        "renorm").

        Run it on the weights being released (the EMA copy, when there is one): their encoder differs
        from the one the running averages followed during training.

        Args:
            batches: images ``(B, 3, H, W)`` or videos ``(B, 3, F, H, W)`` in [-1, 1] (one chunk long).

        Returns:
            the number of samples used.
        """
        if self.fsq.norm not in BATCH_NORMS:
            raise ValueError(f"calibrate_quantizer() applies to quant_norm 'batch' or 'renorm', not {self.fsq.norm!r}")
        latent = self._require_latent()
        device = self.enc_patch.weight.device
        zs, count = [], 0
        with self._eval_mode():
            for x in batches:
                z = self.encode_registers(latent.encode(x.to(device)))  # (B, N, D) or (B, T, N, D)
                zs.append(z.reshape(-1, *z.shape[-2:]).float().cpu())  # video steps share the statistics
                count += x.shape[0]
        if not zs:
            raise ValueError("calibrate_quantizer() needs at least one batch")
        z = torch.cat(zs)
        self.fsq.calibrate(z.to(self.fsq.running_mean.device))
        return count

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @staticmethod
    def _seeds(seed: int | Sequence[int] | None, b: int) -> list[int]:
        """Per-sample decoder seeds: random (None), ``seed + i`` (int), or the given list of length ``b``."""
        if seed is None:
            return torch.randint(0, 2**62, (b,)).tolist()
        if isinstance(seed, int):
            return [seed + i for i in range(b)]
        seeds = [int(s) for s in seed]
        if len(seeds) != b:
            raise ValueError(f"got {len(seeds)} seeds for {b} samples")
        return seeds

    @staticmethod
    def _rand_device(generator: torch.Generator | None, device: torch.device) -> torch.device | str:
        """Where random draws happen: the generator's device, else the model's."""
        return generator.device if generator is not None else device

    # ---- bundles ------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` (and ``vae/`` for a VAE latent) atomically.

        Args:
            directory: created if missing; existing files are replaced atomically.
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        cfg = copy.deepcopy(self.cfg)
        if cfg.latent == "vae":
            self._require_latent().save(out / "vae")
            cfg.vae_path = "vae"
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(out / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": self.BUNDLE_FORMAT})
        meta = {"format": self.BUNDLE_FORMAT, "version": BUNDLE_VERSION, "config": to_dict(cfg)}
        atomic_write_text(out / CONFIG_FILE, json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", vae_path: str | None = None
    ) -> Self:
        """Load a bundle written by :meth:`save_pretrained` (in eval mode).

        Args:
            directory: the bundle directory.
            device: where to put the model.
            vae_path: override the VAE directory stored in the bundle (a relative path there is resolved
                against the bundle).

        Raises:
            FileNotFoundError: naming the missing directory or file.
            ValueError: if the bundle is not a bundle of this tokenizer or its weights do not match its config.
        """
        from safetensors.torch import load_file

        d = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{cls.NAME} bundle {str(d)!r} is missing {name}")
        meta = json.loads((d / CONFIG_FILE).read_text())
        if meta.get("format") != cls.BUNDLE_FORMAT:
            raise ValueError(f"{d / CONFIG_FILE} is not a {cls.NAME} bundle (format={meta.get('format')!r})")
        cfg = from_dict(cls.CONFIG_CLASS, meta["config"])
        if vae_path is not None:
            cfg.vae_path = vae_path
        elif cfg.latent == "vae" and cfg.vae_path and not Path(cfg.vae_path).is_absolute():
            cfg.vae_path = str(d / cfg.vae_path)
        model = cls(cfg)
        missing, unexpected = model.load_state_dict(load_file(str(d / WEIGHTS_FILE)), strict=False)
        if missing or unexpected:
            raise ValueError(f"bundle weights do not match its config: missing {missing}, unexpected {unexpected}")
        return model.to(device).eval()
