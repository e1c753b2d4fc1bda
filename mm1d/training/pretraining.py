"""Pretraining of the any-to-any transformer: loss, eval loss, vocab checks and the run itself.

``train/pretrain.py`` parses the config and calls ``run_pretraining``; everything else lives here so that
tests can drive a run in-process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm1d.checkpoint import resolve_asset, save_release_bundle
from mm1d.config import LoaderConfig, PretrainConfig, to_dict
from mm1d.data.packing import PackedBatch
from mm1d.modality import Vocab
from mm1d.model.code_factors import attach_code_factors, digit_matrix, fold_code_factors, has_code_factors
from mm1d.model.transformer import Transformer
from mm1d.tokenization.text import text_model_path
from mm1d.training.trainer import Trainer, TrainState
from mm1d.utils import print0, rank, world_size


def _tokenizer_config(cfg: PretrainConfig, name: str) -> dict[str, Any] | None:
    """The model config of the ``image`` / ``video`` tokenizer bundle (None when none is configured)."""
    path = getattr(cfg.tokenizers, name)
    if not path:
        return None
    conf = resolve_asset(path) / "config.json"
    if not conf.is_file():
        script = "train_flextok.py" if name == "image" else "train_videoflextok.py"
        raise FileNotFoundError(
            f"{name} tokenizer bundle not found: {conf} is missing. Use the shipped one under mm1d/assets/ "
            f"or train one with `python tokenizers/{script} --config configs/tokenizer/...`"
        )
    meta = json.loads(conf.read_text())
    return meta.get("config", meta)


def code_digits(cfg: PretrainConfig, vocab: Vocab) -> torch.Tensor:
    """The ``(V, S)`` digit matrix of ``cfg.code_factors``, from the FSQ levels of the tokenizer bundles.

    Raises:
        ValueError: no visual tokenizer is configured, or a bundle does not record its FSQ levels.
    """
    levels = {}
    for name in ("image", "video"):
        model = _tokenizer_config(cfg, name)
        if model is None:
            continue
        if not model.get("fsq_levels"):
            raise ValueError(f"code_factors: the {name} tokenizer bundle {getattr(cfg.tokenizers, name)} "
                             "records no fsq_levels")
        levels[name] = model["fsq_levels"]
    if not levels:
        raise ValueError("code_factors needs the FSQ levels of an image or video tokenizer: set "
                         "tokenizers.image and/or tokenizers.video")
    return digit_matrix(vocab, levels)


def check_tokenizers(cfg: PretrainConfig, vocab: Vocab) -> None:
    """Check that the configured tokenizer bundles exist and fit the vocabulary.

    Raises:
        FileNotFoundError: a configured bundle is missing (the message says how to create it).
        ValueError: a tokenizer does not fit the registry (codebook size, budget or text size).
    """
    if cfg.tokenizers.text:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(text_model_path(cfg.tokenizers.text)))
        if sp.get_piece_size() > vocab.text_size:
            raise ValueError(f"text tokenizer has {sp.get_piece_size()} pieces > vocab.text_size {vocab.text_size}")
    for name, codebook in (("image", vocab.image_codebook), ("video", vocab.video_codebook)):
        model = _tokenizer_config(cfg, name)
        if model is None:
            continue
        levels = model.get("fsq_levels")
        if levels is not None:
            size = int(torch.tensor(levels).prod())
            if size != codebook:
                raise ValueError(f"{name} tokenizer codebook {size} != vocab.{name}_codebook {codebook}")
        n = model.get("num_registers")
        if n is not None and n > vocab.max_budget:
            raise ValueError(f"{name} tokenizer has {n} registers > vocab.max_budget {vocab.max_budget}")


def lm_loss(model: nn.Module, batch: PackedBatch, z_loss: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted next-token loss of a packed batch, with per-modality logging and optional z-loss.

    Args:
        model: a ``Transformer`` (or a DeepSpeed engine wrapping one).
        batch: ``PackedBatch`` of (B, L) tensors.
        z_loss: weight of ``mean(logsumexp(logits)^2)`` over non-ignored tokens.

    Returns:
        (scalar loss, metrics with per-modality losses and the token count).
    """
    ce, lse = model(batch.input_ids, positions=batch.positions, doc_ids=batch.doc_ids, targets=batch.targets)
    loss = batch.loss(ce)
    metrics: dict[str, float] = {f"loss_{k}": v for k, v in batch.modality_losses(ce.detach()).items()}
    if z_loss > 0:
        valid = batch.targets != -100
        z = (lse.pow(2) * valid).sum() / valid.sum().clamp(min=1)
        loss = loss + z_loss * z
        metrics["z"] = float(z.detach())
    metrics["tokens"] = batch.num_tokens
    return loss, metrics


SAMPLE_PROMPTS = (
    "a large red circle in the top left",
    "a small blue square in the bottom right",
    "a large green triangle in the center",
    "a small yellow diamond in the top right",
)


def make_sample_fn(cfg: PretrainConfig, vocab: Vocab) -> Callable[[nn.Module, int], None]:
    """Periodic generations during pretraining (rank 0): a text-to-image grid at two budgets and captions.

    Writes ``out_dir/samples/step{N}.png`` and ``step{N}.json``. Skipped under ZeRO-3 (partitioned weights)
    and when the run has no text or image tokenizer.
    """
    cache: dict[str, Any] = {}

    def sample_fn(module: nn.Module, step: int) -> None:
        if rank() != 0 or not (cfg.tokenizers.text and cfg.tokenizers.image):
            return
        if cfg.engine.backend != "torch" and cfg.engine.zero_stage == 3:
            if not cache.get("warned"):
                print0("sample generations are skipped under ZeRO-3 (partitioned weights)")
                cache["warned"] = True
            return
        from PIL import Image

        from mm1d.data.shapes import make_batch
        from mm1d.inference import Pipeline
        from mm1d.tokenization.flextok import FlexTok
        from mm1d.tokenization.text import TextTokenizer

        if "text" not in cache:
            device = next(module.parameters()).device
            cache["text"] = TextTokenizer.load(text_model_path(cfg.tokenizers.text))
            cache["image"] = FlexTok.from_pretrained(resolve_asset(cfg.tokenizers.image), device=device)
        pipe = Pipeline(module, vocab, cache["text"], cache["image"], None)
        n = pipe.max_budget["image"]
        rows, record = [], {"step": step, "prompts": list(SAMPLE_PROMPTS)}
        with torch.no_grad():
            for k in sorted({min(4, n), n}):
                res = pipe.generate(list(SAMPLE_PROMPTS), modality="image", budget=k, seed=0)
                rows.append(res.images)
            val = make_batch(cfg.seed + 1, 0, 4, "val", size=cache["image"].cfg.image_size)
            images = [Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy())
                      for x in val.pixels]
            record["captions"] = pipe.generate(None, modality="text", images=images, seed=0).texts
            record["truth"] = val.captions
        w, h = rows[0][0].size
        grid = Image.new("RGB", (w * len(SAMPLE_PROMPTS), h * len(rows)))
        for r, row in enumerate(rows):
            for c, im in enumerate(row):
                grid.paste(im, (c * w, r * h))
        out = Path(cfg.out_dir) / "samples"
        out.mkdir(parents=True, exist_ok=True)
        grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(out / f"step{step:07d}.png")
        (out / f"step{step:07d}.json").write_text(json.dumps(record, indent=2))

    return sample_fn


def build_model(cfg: PretrainConfig) -> tuple[Transformer, Vocab]:
    """The model to train and its vocabulary; with ``cfg.code_factors`` the visual rows are factorized."""
    vocab = Vocab.from_config(cfg.vocab)
    model = Transformer(cfg.model, vocab.size, vocab.softmax_groups())
    if cfg.code_factors:
        attach_code_factors(model, code_digits(cfg, vocab))
    return model, vocab


def eval_loader_config(cfg: PretrainConfig) -> LoaderConfig:
    """The loader settings of the eval loss: ``cfg.data`` on ``cfg.eval_data``, with clean captions (caption
    input noise is a training-time augmentation; every other sequence choice is kept)."""
    clean = dataclasses.replace(cfg.data.sequence, caption_input_noise=0.0)
    return dataclasses.replace(cfg.data, shards=list(cfg.eval_data), sequence=clean)


@torch.no_grad()
def task_losses(model: nn.Module, vocab: Vocab, cfg: PretrainConfig,
                tasks: tuple[str, ...] = ("t2i", "i2t", "t2v", "v2t"),
                batches: int = 16) -> dict[str, dict[str, float]]:
    """Mean cross-entropy per task and per target modality on ``cfg.eval_data``, one task at a time.

    The periodic eval loss draws the training task mix, so it does not compare across mixes or loss weights;
    these do. Each task's documents come from the eval loader (``eval_loader_config``) with that task alone,
    on rank 0 of 1, so every model scored with the same config and vocabulary sees the same documents.

    Args:
        model: a ``Transformer`` (e.g. a release bundle's), evaluated as is.
        vocab: its vocabulary.
        cfg: the pretraining config (``data`` and ``eval_data``).
        tasks: the tasks to score.
        batches: batches of ``data.batch_size`` x ``data.seq_len`` tokens per task.

    Returns:
        ``{task: {"text" | "image" | "video": mean cross-entropy in nats}}`` (a modality absent from the task's
        targets is absent).
    """
    from mm1d.data.loader import PackedLoader

    if not cfg.eval_data:
        raise ValueError("eval_data is empty: point it at pretokenized val shard directories")
    device = next(model.parameters()).device
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        lcfg = dataclasses.replace(eval_loader_config(cfg), tasks={task: 1.0})
        loader = PackedLoader(lcfg, vocab, rank=0, world_size=1)
        totals: dict[str, list[float]] = {}
        for _ in range(batches):
            b = next(loader).to(device)
            ce, _ = model(b.input_ids, positions=b.positions, doc_ids=b.doc_ids, targets=b.targets)
            for name, (total, n) in b.modality_totals(ce).items():
                acc = totals.setdefault(name, [0.0, 0])
                acc[0] += total
                acc[1] += n
        out[task] = {name: total / n for name, (total, n) in totals.items()}
    return out


def run_pretraining(cfg: PretrainConfig) -> TrainState:
    """Train the transformer described by ``cfg``; resume from ``cfg.out_dir`` when it has a checkpoint."""
    from mm1d.data.loader import PackedLoader

    torch.manual_seed(cfg.seed)
    model, vocab = build_model(cfg)
    check_tokenizers(cfg, vocab)
    if not cfg.data.shards:
        raise ValueError("data.shards is empty: point it at pretokenized shard directories "
                         "(tokenizers/pretokenize.py writes them)")
    model.gradient_checkpointing = cfg.engine.activation_checkpointing
    counts = model.num_params()
    print0(f"model: {counts['total'] / 1e6:.2f}M parameters, vocab {vocab.size}")
    loader = PackedLoader(cfg.data, vocab, rank=rank(), world_size=world_size())

    def eval_fn(module: nn.Module) -> dict[str, float]:
        ev = PackedLoader(eval_loader_config(cfg), vocab, rank=rank(), world_size=world_size())
        tot: dict[str, float] = {}
        for _ in range(cfg.eval_batches):
            batch = next(ev).to(next(module.parameters()).device)
            loss, m = lm_loss(module, batch)
            for k, v in {"loss": float(loss), **m}.items():
                tot[k] = tot.get(k, 0.0) + v / cfg.eval_batches
        tot.pop("tokens", None)
        return tot

    def bundle_fn(weights: dict[str, torch.Tensor], path: Path) -> None:
        if has_code_factors(weights):  # release bundles hold the folded, plain Llama weights
            weights = fold_code_factors(weights, code_digits(cfg, vocab))
        save_release_bundle(path, weights, cfg)

    trainer = Trainer(
        model,
        train=cfg.train,
        optim=cfg.optim,
        engine=cfg.engine,
        tracking=cfg.tracking,
        out_dir=cfg.out_dir,
        seed=cfg.seed,
        loss_fn=lambda m, b: lm_loss(m, b, cfg.z_loss),
        data=loader,
        eval_fn=eval_fn if cfg.eval_data else None,
        sample_fn=make_sample_fn(cfg, vocab),
        bundle_fn=bundle_fn,
        run_config=to_dict(cfg),
    )
    return trainer.fit()
