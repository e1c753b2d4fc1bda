"""The fit loop shared by tokenizer training and pretraining.

One ``Trainer`` runs any model whose loss a ``loss_fn(module, batch) -> (loss, metrics)`` computes. It owns
resume (model, optimizer, schedule, EMA, RNG and data position, so a resumed run reproduces the
uninterrupted one), atomic checkpoints every ``save_every`` steps keeping the last K, non-finite-loss
skipping with an abort after ``max_nonfinite`` in a row, metrics.jsonl (+ wandb), a rank-0 progress bar
with tokens per second, periodic eval and samples, and the release bundle at the end.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mm1d.config import EngineConfig, OptimConfig, TrackingConfig, TrainConfig
from mm1d.training.engine import Engine
from mm1d.training.tracking import Tracker
from mm1d.utils import atomic_write_text, is_main, print0, rank, seed_everything

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


class DataSource(Protocol):
    """What the trainer reads batches from: an iterator with a resumable position."""

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class IndexedBatches:
    """A DataSource from a pure function ``make(index) -> batch``: position = next index.

    Used for data generated on the fly (ShapesWorld), where batch ``i`` of rank ``r`` is a deterministic
    function of the seed, so resuming only needs the index.
    """

    def __init__(self, make: Callable[[int], Any], start: int = 0) -> None:
        self.make, self.index = make, start

    def __iter__(self) -> IndexedBatches:
        return self

    def __next__(self) -> Any:
        batch = self.make(self.index)
        self.index += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


def checkpoint_tag(step: int) -> str:
    """The directory name of the checkpoint written after ``step`` (under ``out_dir/checkpoints``)."""
    return f"step{step:08d}"


class NonFiniteLossError(RuntimeError):
    """Raised after ``train.max_nonfinite`` non-finite losses in a row."""


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside dicts, lists, tuples and dataclasses to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if is_dataclass(batch) and not isinstance(batch, type):
        return type(batch)(**{f.name: to_device(getattr(batch, f.name), device) for f in fields(batch)})
    return batch


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # tokens (or samples) consumed on this rank
    skipped: int = 0  # non-finite micro-steps skipped in total
    history: list[float] = field(default_factory=list)  # logged losses (for tests and summaries)


class Trainer:
    """Runs the loop. See the module docstring.

    Args:
        model: the pure module to train.
        loss_fn: ``(module, batch) -> (scalar loss, metrics)``; a ``"tokens"`` metric drives tokens/s.
        data: a DataSource on this rank.
        out_dir: run directory (``checkpoints/``, ``metrics.jsonl``, ``bundle/``, samples).
        eval_fn: ``(module) -> metrics``, every ``eval_every`` steps and at the last step, on every rank.
        sample_fn: ``(module, step) -> None``, every ``sample_every`` steps, on every rank.
        bundle_fn: ``(weights, path) -> None`` writes the release bundle from full fp32 weights (rank 0).
        run_config: the resolved config, written to ``out_dir/config.json``, stored in checkpoints and
            logged to wandb.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        train: TrainConfig,
        optim: OptimConfig,
        engine: EngineConfig,
        tracking: TrackingConfig,
        out_dir: str | Path,
        seed: int,
        loss_fn: LossFn,
        data: DataSource,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        sample_fn: Callable[[nn.Module, int], None] | None = None,
        bundle_fn: Callable[[dict[str, torch.Tensor], Path], None] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.train_cfg, self.out_dir, self.seed = train, Path(out_dir), seed
        self.loss_fn, self.data = loss_fn, data
        self.eval_fn, self.sample_fn, self.bundle_fn = eval_fn, sample_fn, bundle_fn
        self.run_config = run_config or {}
        if train.threads > 0:
            torch.set_num_threads(train.threads)
        seed_everything(seed + 1000 * rank())
        self.engine = Engine(model, engine, optim, train.max_steps, train.batch_size)
        if train.ema_decay > 0 and self.engine.backend == "deepspeed" and engine.zero_stage == 3:
            raise ValueError("train.ema_decay > 0 is not supported with ZeRO-3 (parameters are partitioned)")
        self.ema: dict[str, torch.Tensor] | None = None
        if train.ema_decay > 0:
            self.ema = {n: p.detach().float().clone() for n, p in self.engine.module.named_parameters()}
        if rank() == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.json", json.dumps(self.run_config, indent=2))
        self.tracker = Tracker(tracking, self.out_dir, self.run_config)
        self.state = TrainState()
        self.ckpt_dir = self.out_dir / "checkpoints"

    # ---- checkpoints -------------------------------------------------------------------------------
    def save(self) -> Path:
        rank_state = {"rng": _rng_state(), "data": self.data.state_dict(), "tokens": self.state.tokens}
        if self.ema is not None:
            rank_state["ema"] = self.ema
        client = {"step": self.state.step, "skipped": self.state.skipped, "config": self.run_config}
        return self.engine.save_checkpoint(
            self.ckpt_dir, checkpoint_tag(self.state.step), client, rank_state, keep_last=self.train_cfg.keep_last
        )

    def maybe_resume(self) -> bool:
        if not (self.ckpt_dir / "latest").is_file():
            return False
        client, rank_state = self.engine.load_checkpoint(self.ckpt_dir)
        self.state.step, self.state.skipped = int(client["step"]), int(client["skipped"])
        self.state.tokens = int(rank_state["tokens"])
        self.data.load_state_dict(rank_state["data"])
        _set_rng_state(rank_state["rng"])
        if self.ema is not None and "ema" in rank_state:
            self.ema = {k: v.to(self.engine.device) for k, v in rank_state["ema"].items()}
        print0(f"resumed from {self.ckpt_dir / (self.ckpt_dir / 'latest').read_text().strip()} "
               f"at step {self.state.step}")
        return True

    # ---- EMA ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        # Warm the decay up, so that early in a run the average is not dominated by the random init.
        d = min(self.train_cfg.ema_decay, (1 + self.state.step) / (10 + self.state.step))
        for n, p in self.engine.module.named_parameters():
            if not p.requires_grad:  # frozen: the average is the value itself (no rounding drift)
                continue
            e = self.ema[n]
            if e.device != p.device:
                self.ema[n] = e = e.to(p.device)
            e.mul_(d).add_(p.detach().float(), alpha=1 - d)

    def release_weights(self) -> dict[str, torch.Tensor] | None:
        """Full fp32 weights for the bundle: EMA parameters (plus buffers) when EMA is on."""
        full = self.engine.full_state_dict()
        if full is not None and self.ema is not None:
            full.update({k: v.detach().cpu().clone() for k, v in self.ema.items()})
        return full

    # ---- loop ---------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train until ``train.max_steps`` optimizer steps, resuming from ``out_dir`` if possible."""
        cfg, eng = self.train_cfg, self.engine
        self.maybe_resume()
        self.tracker.rewind(self.state.step)  # a killed run's rows past its last checkpoint are logged again
        eng.train(True)
        bar = tqdm(total=cfg.max_steps, initial=self.state.step, disable=not is_main(), dynamic_ncols=True,
                   desc="train")
        streak, acc, acc_n, t0, tok0 = 0, {}, 0, time.time(), self.state.tokens
        try:
            while self.state.step < cfg.max_steps:
                batch = to_device(next(self.data), eng.device)
                with eng.autocast():
                    loss, metrics = self.loss_fn(eng.module if eng.backend == "torch" else eng.model, batch)
                if not eng.all_finite(loss):
                    streak += 1
                    self.state.skipped += 1
                    print0(f"step {self.state.step}: non-finite loss, micro-step skipped ({streak} in a row)")
                    if streak >= cfg.max_nonfinite:
                        path = self.save()
                        raise NonFiniteLossError(
                            f"{streak} non-finite losses in a row at step {self.state.step}; aborting. "
                            f"The last good weights are saved in {path}"
                        )
                    continue
                streak = 0
                eng.backward(loss)
                boundary = eng.is_boundary
                grad_norm = eng.step()
                self.state.tokens += int(metrics.get("tokens", 0))
                acc_n += 1
                for k, v in {"loss": float(loss.detach()), **metrics}.items():
                    acc[k] = acc.get(k, 0.0) + float(v)
                if not boundary:
                    continue
                self.state.step += 1
                self._update_ema()
                step = self.state.step
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    dt = time.time() - t0
                    logged = {k: v / acc_n for k, v in acc.items() if k != "tokens"}
                    logged.update(lr=eng.lr, grad_norm=grad_norm, skipped=self.state.skipped,
                                  tok_per_s=(self.state.tokens - tok0) / max(dt, 1e-9))
                    self.tracker.log(logged, step)
                    self.state.history.append(logged["loss"])
                    bar.set_postfix(loss=f"{logged['loss']:.4f}", tok_s=f"{logged['tok_per_s']:.0f}")
                    acc, acc_n, t0, tok0 = {}, 0, time.time(), self.state.tokens
                if self.eval_fn is not None and cfg.eval_every > 0 and (step % cfg.eval_every == 0
                                                                        or step == cfg.max_steps):
                    eng.train(False)
                    with torch.no_grad(), eng.autocast():
                        self.tracker.log({f"eval/{k}": v for k, v in self.eval_fn(eng.module).items()}, step)
                    eng.train(True)
                if self.sample_fn is not None and cfg.sample_every > 0 and step % cfg.sample_every == 0:
                    eng.train(False)
                    self.sample_fn(eng.module, step)
                    eng.train(True)
                if cfg.save_every > 0 and step % cfg.save_every == 0 and step < cfg.max_steps:
                    self.save()
            self.save()
            if self.bundle_fn is not None:
                weights = self.release_weights()
                if weights is not None:
                    self.bundle_fn(weights, self.out_dir / "bundle")
                    print0(f"release bundle written to {self.out_dir / 'bundle'}")
        finally:
            bar.close()
            self.tracker.close()
        return self.state
