"""Training of the visual tokenizers (FlexTok for images, VideoFlexTok for videos) with the shared Trainer.

Both entry points (``tokenizers/train_flextok.py`` and ``tokenizers/train_videoflextok.py``) call
``run_tokenizer_training``; only the model class and the media kind differ. Data is ShapesWorld generated
on the fly (batch i of rank r is a pure function of the seed, so resuming needs only the batch index) or
any reader source (``mm1d.data.sources``), resized to the model's resolution.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mm1d.config import (
    TokenizerDataConfig,
    TrainConfig,
    TrainFlexTokConfig,
    TrainVideoFlexTokConfig,
    from_dict,
    to_dict,
)
from mm1d.data.shapes import make_batch
from mm1d.tokenization import tokenizer_class
from mm1d.tokenization.fsq import BATCH_NORMS
from mm1d.tokenization.video_io import to_uint8, video_grid, write_video
from mm1d.training.trainer import IndexedBatches, Trainer, TrainState, checkpoint_tag
from mm1d.utils import print0, rank, safe_torch_load, world_size


def budgets_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to and including ``n``."""
    out, k = [], 1
    while k < n:
        out.append(k)
        k *= 2
    return out + [n]


class SourceBatches:
    """Batches of pixels in [-1, 1] from a reader source, resumable by the count of samples consumed.

    Images become ``(B, 3, S, S)``; videos ``(B, 3, F, S, S)`` (videos with fewer than F frames are skipped).
    """

    def __init__(self, path: str, kind: str, batch_size: int, size: int, frames: int, max_corrupt: float) -> None:
        self.path, self.kind, self.bs, self.size, self.frames = path, kind, batch_size, size, frames
        self.max_corrupt = max_corrupt
        self.consumed = 0
        self._it = self._samples()

    def _samples(self):
        from mm1d.data.sources import open_source

        epoch = 0
        while True:
            n_seen = 0
            for i, sample in enumerate(open_source(self.path, max_corrupt_fraction=self.max_corrupt)):
                if i % world_size() != rank():
                    continue
                n_seen += 1
                x = self._convert(sample)
                if x is not None:
                    yield x
            if n_seen == 0:
                raise ValueError(f"data source {self.path} has no readable {self.kind} samples for rank {rank()}")
            epoch += 1

    def _convert(self, sample: Any) -> torch.Tensor | None:
        if self.kind == "image":
            if sample.image is None:
                return None
            x = sample.image.float().div(127.5).sub(1.0)[None]  # (1, 3, H, W)
            return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                 align_corners=False)[0]
        if sample.video is None:
            return None
        v = sample.video.permute(1, 0, 2, 3)  # (3, F, H, W) -> (F, 3, H, W) uint8
        if v.shape[0] < self.frames:
            return None
        v = v[: self.frames].float().div(127.5).sub(1.0)
        v = F.interpolate(v, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return v.permute(1, 0, 2, 3).contiguous()  # (3, F, S, S)

    def __iter__(self) -> SourceBatches:
        return self

    def __next__(self) -> torch.Tensor:
        batch = torch.stack([next(self._it) for _ in range(self.bs)])
        self.consumed += self.bs
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._it = self._samples()
        for _ in itertools.islice(self._it, int(state["consumed"])):
            pass
        self.consumed = int(state["consumed"])


def make_data(data: TokenizerDataConfig, train: TrainConfig, kind: str, size: int, frames: int, seed: int):
    """The DataSource for one rank (see module docstring)."""
    if data.source == "shapes":
        shapes = data.shapes
        bs, r, w = train.batch_size, rank(), world_size()
        return IndexedBatches(
            lambda i: make_batch(seed, (i * w + r) * bs, bs, "train", size=size, kind=kind, cfg=shapes,
                                 frames=frames if kind == "video" else None).pixels
        )
    if not Path(data.source).exists():
        raise FileNotFoundError(f"data.source not found: {data.source} (use 'shapes' or a dataset path)")
    return SourceBatches(data.source, kind, train.batch_size, size, frames, data.max_corrupt_fraction)


def save_recon_grid(model: nn.Module, originals: torch.Tensor, budgets: list[int], path: Path, steps: int,
                    guidance: float, seed: int) -> None:
    """Write a grid: the first row holds the originals, each next row the reconstruction at one k.

    Args:
        originals: ``(B, 3, H, W)`` images or ``(B, 3, F, H, W)`` videos in [-1, 1].
        path: ``.png`` for images; ``.gif`` for videos.
    """
    rows = [originals.cpu()]
    with torch.no_grad():
        for k in budgets:
            rec = model.autoencode(originals, k=k, steps=steps, guidance_scale=guidance, seed=seed)
            rows.append(rec.float().cpu().clamp(-1, 1))
    tiles = torch.cat(rows)  # (R*B, 3, ...)
    if originals.dim() == 4:
        tiles = tiles[:, :, None]  # images as 1-frame videos
    grid = video_grid(tiles, nrow=originals.shape[0])  # (3, F, H', W') uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    if originals.dim() == 4:
        from PIL import Image

        Image.fromarray(to_uint8(grid[:, 0]).permute(1, 2, 0).numpy()).save(path)
    else:
        write_video(grid, path)


def calibrate_for_release(model: nn.Module, cfg: Any, kind: str) -> int:
    """Recompute ``model``'s FSQ batch-norm statistics on ``cfg.data.calibrate_batches`` batches that the run
    does not train on (``quant_norm`` "batch" or "renorm" only, not for ``freeze_encoder`` or ``freeze_quantizer``
    runs). Returns the number of samples used (0: nothing to do)."""
    if (cfg.model.quant_norm not in BATCH_NORMS or cfg.data.calibrate_batches <= 0 or cfg.freeze_encoder
            or cfg.freeze_quantizer):
        return 0  # (a frozen quantizer keeps init_from's statistics: the ones the run trained with)
    frames = cfg.data.shapes.frames if kind == "video" else 1
    calib = make_data(cfg.data, cfg.train, kind, cfg.model.image_size, frames, cfg.seed + 2)
    return model.calibrate_quantizer(itertools.islice(iter(calib), cfg.data.calibrate_batches))


def load_run_checkpoint(run_dir: str | Path, kind: str, step: int | None = None) -> nn.Module:
    """A tokenizer from a training run's checkpoint (live weights), calibrated as a release would be.

    Args:
        run_dir: a tokenizer training ``out_dir`` (``config.json`` and ``checkpoints/``).
        kind: "image" or "video".
        step: the checkpoint step (default: the latest).

    Returns:
        the FlexTok / VideoFlexTok in eval mode.
    """
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    if not (run_dir / "config.json").is_file() or not ckpts.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a tokenizer training run (needs config.json and checkpoints/)")
    tag = checkpoint_tag(step) if step is not None else (ckpts / "latest").read_text().strip()
    if not (ckpts / tag).is_dir():
        have = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step"))
        raise FileNotFoundError(f"no checkpoint {tag} in {ckpts}; found {have}")
    if not (ckpts / tag / "state.pt").is_file():
        raise FileNotFoundError(f"{ckpts / tag} has no state.pt: it was written by the DeepSpeed backend; "
                                "convert it with zero_to_fp32 or evaluate the run's bundle")
    schema = TrainFlexTokConfig if kind == "image" else TrainVideoFlexTokConfig
    cfg = from_dict(schema, json.loads((run_dir / "config.json").read_text()))
    model = tokenizer_class(kind)(cfg.model)
    model.load_state_dict(safe_torch_load(ckpts / tag / "state.pt")["model"])
    calibrate_for_release(model, cfg, kind)
    return model.eval()


def init_from_bundle(model: nn.Module, ref: str, probe: torch.Tensor, frozen: bool) -> None:
    """Load a bundle's weights into ``model`` (built from the run's config), in place.

    Args:
        model: the FlexTok / VideoFlexTok to initialize.
        ref: a bundle directory or ``asset:NAME``.
        probe: a few images or videos in [-1, 1]; with ``frozen``, they must get the bundle's ids exactly.
        frozen: the run freezes the encoder (its ids are then promised to equal the bundle's).

    Raises:
        FileNotFoundError: the bundle does not exist.
        ValueError: its weights or its codes do not fit the run's model section.
    """
    from mm1d.checkpoint import resolve_asset

    source = type(model).from_pretrained(resolve_asset(ref))
    state = source.state_dict()
    # REPA heads only serve training: the bundle's is dropped unless the run has the same kind, else the run's
    # own (fresh) head is kept, so stage 2 can start from a REPA-trained stage 1 and the other way round
    own = model.state_dict()
    state = {k: v for k, v in state.items()
             if not k.startswith("repa_proj.") or (k in own and own[k].shape == v.shape)}
    state.update({k: v for k, v in own.items() if k.startswith("repa_proj.") and k not in state})
    widen = source.dec_final.out is None and model.dec_final.out is not None
    if widen:  # a linear output head grows into the run's MLP head (AdaLNFinal.widen_from)
        state = {k: v for k, v in state.items() if not k.startswith("dec_final.")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("dec_final.")})
    grown = sorted({int(k.split(".")[1]) for k in set(model.state_dict()) - set(state)
                    if k.startswith("dec_blocks.")})
    old_depth = source.cfg.dec_depth
    if grown and grown != list(range(old_depth, model.cfg.dec_depth)):
        grown = []  # not a pure extension of the decoder: let the strict load report it
    try:
        model.load_state_dict(state, strict=not grown)
    except RuntimeError as e:
        raise ValueError(f"init_from={ref}: its weights do not fit this run's model section ({e})") from e
    if grown:
        missing = {k for k in set(model.state_dict()) - set(state) if not k.startswith("dec_blocks.")}
        unexpected = set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(f"init_from={ref}: its weights do not fit this run's model section (missing "
                             f"{sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
        # adaLN-zero blocks start with zero gates, so the grown decoder computes the bundle's function
        print0(f"init_from={ref}: decoder grown from {old_depth} to {model.cfg.dec_depth} blocks (the new "
               "blocks start as identities)")
    if widen:
        try:
            model.dec_final.widen_from(source.dec_final)
        except ValueError as e:
            raise ValueError(f"init_from={ref}: {e} (model.head_mlp)") from e
        print0(f"init_from={ref}: linear output head widened to an MLP of {model.dec_final.linear.out_features} "
               "units (it starts as the bundle's head)")
    if frozen and not torch.equal(model.tokenize(probe), source.tokenize(probe)):
        raise ValueError(f"init_from={ref}: this run's model section gives different token ids than the bundle's "
                         "own config; with freeze_encoder the encoder fields and quant_norm must match it")


def run_tokenizer_training(cfg: Any, kind: str) -> TrainState:
    """Train a FlexTok (``kind="image"``) or VideoFlexTok (``kind="video"``) described by ``cfg``.

    Args:
        cfg: ``TrainFlexTokConfig`` or ``TrainVideoFlexTokConfig``.
        kind: "image" or "video".

    Returns:
        The final ``TrainState``. The release bundle is written to ``cfg.out_dir/bundle``.
    """
    Model = tokenizer_class(kind)
    frames = 1 if kind == "image" else cfg.data.shapes.frames
    torch.manual_seed(cfg.seed)
    model = Model(cfg.model)
    size = cfg.model.image_size
    val = make_batch(cfg.seed + 1, 0, cfg.data.val_samples, "val", size=size, kind=kind, cfg=cfg.data.shapes,
                     frames=frames if kind == "video" else None).pixels
    if cfg.freeze_encoder and not cfg.init_from:
        raise ValueError("freeze_encoder=true needs init_from (a bundle whose encoder the decoder is tuned to)")
    if cfg.freeze_quantizer and (not cfg.init_from or cfg.model.quant_norm not in BATCH_NORMS):
        raise ValueError("freeze_quantizer=true needs init_from (whose FSQ statistics it keeps) and quant_norm "
                         f"'batch' or 'renorm', got init_from={cfg.init_from!r}, quant_norm={cfg.model.quant_norm!r}")
    if cfg.init_from:
        init_from_bundle(model, cfg.init_from, val, cfg.freeze_encoder)
        print0(f"initialized from {cfg.init_from}")
    if cfg.freeze_encoder:
        frozen = model.freeze_encoder()
        print0(f"encoder frozen ({len(frozen)} tensors): only the decoder trains, on the bundle's codes")
    elif cfg.freeze_quantizer:
        model.freeze_quantizer()
        print0("FSQ statistics frozen: encoder and decoder train on batch-independent codes")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print0(f"{Model.__name__}: {n_params / 1e6:.2f}M trainable parameters")
    data = make_data(cfg.data, cfg.train, kind, size, frames, cfg.seed)
    budgets = budgets_up_to(cfg.model.num_registers)
    out_dir = Path(cfg.out_dir)

    def loss_fn(module: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = module.training_loss(batch)
        metrics["tokens"] = batch.shape[0]
        return loss, metrics

    def sample_fn(module: nn.Module, step: int) -> None:
        if rank() != 0:
            return
        ext = "png" if kind == "image" else "gif"
        device = next(module.parameters()).device
        save_recon_grid(module, val.to(device), budgets, out_dir / "samples" / f"step{step:07d}.{ext}",
                        cfg.samples.steps, cfg.samples.guidance_scale, cfg.seed)

    def bundle_fn(weights: dict[str, torch.Tensor], path: Path) -> None:
        fresh = Model(cfg.model)
        fresh.load_state_dict(weights)
        n = calibrate_for_release(fresh, cfg, kind)
        if n:
            print0(f"FSQ statistics recomputed on {n} samples with the released weights")
        fresh.save_pretrained(path)
        sample_fn(fresh, cfg.train.max_steps)

    trainer = Trainer(
        model,
        train=cfg.train,
        optim=cfg.optim,
        engine=cfg.engine,
        tracking=cfg.tracking,
        out_dir=out_dir,
        seed=cfg.seed,
        loss_fn=loss_fn,
        data=data,
        sample_fn=sample_fn,
        bundle_fn=bundle_fn,
        run_config=to_dict(cfg),
    )
    return trainer.fit()
