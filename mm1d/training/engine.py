"""The training engine: one interface over DeepSpeed ZeRO (0-3) and plain single-process torch.

DeepSpeed is imported only here. ``backend="auto"`` uses DeepSpeed when it imports and the process was
started by a launcher (or the rendezvous variables are set), and plain torch otherwise, so the same entry
point runs under ``deepspeed --num_gpus 2 ...``, ``python ...`` on a laptop, or on a GPU machine without
DeepSpeed installed.

Checkpoints are written atomically: everything goes to ``DIR/.tmp-<tag>`` first and is renamed to
``DIR/<tag>`` by rank 0 after a barrier; ``DIR/latest`` is rewritten atomically last. A run killed at
any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import socket
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm1d.config import EngineConfig, OptimConfig
from mm1d.utils import atomic_write_text, rank, safe_torch_load, world_size


def lr_lambda(optim: OptimConfig, total_steps: int):
    """Multiplier on ``optim.lr`` at optimizer step s: linear warmup, then cosine to ``min_lr_ratio``."""

    def fn(step: int) -> float:
        if optim.warmup_steps > 0 and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        span = max(1, total_steps - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices, not norms, biases, embeddings' 1D params or learned tokens/positions (ndim < 2)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_dist_env() -> None:
    """Set single-process rendezvous variables when no launcher did (DeepSpeed needs them)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce op.

    ``init_distributed`` builds ``deepspeed_shm_comm`` with g++ (40-48 s on a machine without the build cache),
    but only ``inference_all_reduce`` (tensor-parallel inference) calls it, and that falls back to
    ``torch.distributed.all_reduce`` without it. ZeRO training reduces through ``torch.distributed`` (gloo)
    either way, so the op is never used here.
    """
    # by module name: ``deepspeed.comm`` star-imports ``torch``, which hides its ``torch`` submodule attribute
    ds_comm = importlib.import_module("deepspeed.comm.torch")
    ds_comm.build_shm_op = lambda: None


def compile_in_place(model: nn.Module, device: torch.device | None = None) -> None:
    """``torch.compile`` ``model`` without renaming its parameters (checkpoints stay interchangeable).

    A model with ``compile_blocks`` (the transformer) compiles each block and its loss, as torchtitan does,
    for the kernels of ``device`` (where it will train); any other module compiles its ``forward``.
    """
    if hasattr(model, "compile_blocks"):
        model.compile_blocks(device=device)
    else:
        model.compile()


def resolve_backend(cfg: EngineConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    try:
        import deepspeed  # noqa: F401
    except Exception:
        return "torch"
    return "deepspeed"


class Engine:
    """Owns the model, optimizer, LR schedule and checkpoints for one training run.

    Args:
        model: the pure ``nn.Module`` to train.
        cfg: engine settings (backend, ZeRO stage, precision, accumulation).
        optim: AdamW and schedule settings.
        total_steps: optimizer steps of the run (for the cosine schedule).
        micro_batch_size: samples per rank per micro-step (DeepSpeed bookkeeping only).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: EngineConfig,
        optim: OptimConfig,
        total_steps: int,
        micro_batch_size: int = 1,
    ) -> None:
        self.cfg = cfg
        self.backend = resolve_backend(cfg)
        if cfg.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage must be 0..3, got {cfg.zero_stage}")
        if cfg.grad_accum < 1:
            raise ValueError(f"engine.grad_accum must be >= 1, got {cfg.grad_accum}")
        self.device = self._pick_device()
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        self.micro_step = 0
        self.global_step = 0
        if cfg.compile:
            compile_in_place(model, self.device)
        if self.backend == "deepspeed":
            self._init_deepspeed(model, optim, total_steps, micro_batch_size)
        else:
            if world_size() > 1:
                raise RuntimeError(
                    "engine.backend=torch runs a single process; use engine.backend=deepspeed under a launcher"
                )
            self.model = model.to(self.device)
            groups = param_groups(model, optim.weight_decay)
            fused = self.device.type == "cuda"
            self.optimizer = torch.optim.AdamW(
                groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused
            )
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(optim, total_steps))
            self.grad_clip = optim.grad_clip

    # ---- setup ---------------------------------------------------------------------------------------
    def _pick_device(self) -> torch.device:
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")

    def ds_config(self, optim: OptimConfig, micro_batch_size: int) -> dict[str, Any]:
        """The DeepSpeed JSON config generated from the mm1d config (a user JSON overrides keys)."""
        conf: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": self.cfg.grad_accum,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": {"stage": self.cfg.zero_stage},
            "bf16": {"enabled": self.cfg.precision == "bf16"},
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": optim.lr,
                    "betas": list(optim.betas),
                    "eps": optim.eps,
                    "weight_decay": optim.weight_decay,
                    "torch_adam": True,
                },
            },
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if self.cfg.deepspeed_config:
            path = Path(self.cfg.deepspeed_config)
            if not path.is_file():
                raise FileNotFoundError(f"engine.deepspeed_config not found: {path}")
            user = json.loads(path.read_text())
            for key, val in user.items():
                if isinstance(val, dict) and isinstance(conf.get(key), dict):
                    conf[key] = {**conf[key], **val}
                else:
                    conf[key] = val
            # The mm1d config stays the source of truth for these two.
            conf["zero_optimization"]["stage"] = self.cfg.zero_stage
            conf["bf16"] = {"enabled": self.cfg.precision == "bf16"}
        return conf

    def _init_deepspeed(self, model: nn.Module, optim: OptimConfig, total_steps: int, mbs: int) -> None:
        import deepspeed

        ensure_dist_env()
        if not torch.cuda.is_available():
            skip_shm_comm_op()  # before anything creates DeepSpeed's communication backend
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        conf = self.ds_config(optim, mbs)
        groups = param_groups(model, optim.weight_decay)
        sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, total_steps))  # noqa: E731
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=groups, config=conf, lr_scheduler=sched
        )
        self.device = self.model.device

    # ---- properties ----------------------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        """The unwrapped model (parameters may be partitioned under ZeRO-3)."""
        return self.model.module if self.backend == "deepspeed" else self.model

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def autocast(self):
        """Autocast context for the forward pass (bf16 on the torch backend; DeepSpeed casts weights)."""
        if self.backend == "torch" and self.dtype == torch.bfloat16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def is_boundary(self) -> bool:
        """True when the next ``step()`` applies the optimizer."""
        return (self.micro_step + 1) % self.cfg.grad_accum == 0

    # ---- training step -------------------------------------------------------------------------------
    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite on every rank (a collective: call on all ranks)."""
        flag = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag)
        return float(flag.item()) == 0.0

    def backward(self, loss: torch.Tensor) -> None:
        if self.backend == "deepspeed":
            self.model.backward(loss)
        else:
            (loss / self.cfg.grad_accum).backward()

    def step(self) -> float | None:
        """Finish a micro-step; at an accumulation boundary apply the optimizer and return the grad norm."""
        boundary = self.is_boundary
        self.micro_step += 1
        if self.backend == "deepspeed":
            self.model.step()
            if not boundary:
                return None
            self.global_step += 1
            norm = self.model.get_global_grad_norm()
            return float(norm) if norm is not None else None
        if not boundary:
            return None
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        else:
            norm = float(torch.norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return norm

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    # ---- full weights ----------------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Consolidated fp32 weights on rank 0 (None elsewhere). Collective under ZeRO-3."""
        if self.backend == "deepspeed" and self.cfg.zero_stage == 3:
            import deepspeed

            out: dict[str, torch.Tensor] = {}
            for name, p in self.module.named_parameters():
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    if rank() == 0:
                        out[name] = p.detach().float().cpu().clone()
            persistent = set(self.module.state_dict(keep_vars=True))  # as state_dict: no non-persistent buffers
            for name, b in self.module.named_buffers():
                if rank() == 0 and name in persistent:
                    out[name] = b.detach().cpu().clone()
            return out if rank() == 0 else None
        if rank() != 0:
            return None
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in self.module.state_dict().items()}

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, ckpt_dir: str | Path, tag: str, client_state: dict[str, Any],
                        rank_state: dict[str, Any] | None = None, keep_last: int = 0) -> Path:
        """Atomically write ``ckpt_dir/tag`` (model, optimizer, scheduler, client and per-rank state).

        Args:
            client_state: JSON-serializable run state (step counters, config), saved once.
            rank_state: per-rank tensors/plain values (RNG, data position), saved by every rank.
            keep_last: delete all but the newest ``keep_last`` checkpoints (0 keeps all).
        """
        ckpt_dir = Path(ckpt_dir)
        final, tmp = ckpt_dir / tag, ckpt_dir / f".tmp-{tag}"
        if rank() == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self._barrier()
        if self.backend == "deepspeed":
            self.model.save_checkpoint(str(ckpt_dir), tag=f".tmp-{tag}", save_latest=False)
        elif rank() == 0:
            torch.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                },
                tmp / "state.pt",
            )
        torch.save({"rank_state": rank_state or {}, "micro_step": self.micro_step,
                    "global_step": self.global_step}, tmp / f"rank{rank():05d}.pt")
        self._barrier()
        if rank() == 0:
            (tmp / "client_state.json").write_text(json.dumps(client_state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_text(ckpt_dir / "latest", tag)
            if keep_last > 0:
                tags = sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step")),
                              key=lambda p: p.stat().st_mtime)
                for old in tags[:-keep_last]:
                    if old.name != tag:
                        shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def load_checkpoint(self, ckpt_dir: str | Path, tag: str | None = None) -> tuple[dict, dict]:
        """Load ``ckpt_dir/tag`` (default: the one ``ckpt_dir/latest`` names).

        Returns:
            (client_state, rank_state) as saved.

        Raises:
            FileNotFoundError: a missing checkpoint directory or file.
            RuntimeError: a checkpoint written for a model of another shape.
        """
        ckpt_dir = Path(ckpt_dir)
        if tag is None:
            latest = ckpt_dir / "latest"
            if not latest.is_file():
                raise FileNotFoundError(f"no checkpoint to resume: {latest} does not exist")
            tag = latest.read_text().strip()
        path = ckpt_dir / tag
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {path}")
        try:
            if self.backend == "deepspeed":
                load_path, _ = self.model.load_checkpoint(str(ckpt_dir), tag=tag)
                if load_path is None:
                    raise FileNotFoundError(f"DeepSpeed found no checkpoint files in {path}")
            else:
                state = safe_torch_load(path / "state.pt")
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
        except RuntimeError as e:
            if "size mismatch" in str(e) or "Missing key" in str(e) or "Unexpected key" in str(e):
                raise RuntimeError(
                    f"checkpoint {path} was written for a model of another shape than the configured one: "
                    f"{str(e).splitlines()[0]}"
                ) from e
            raise
        mine = path / f"rank{rank():05d}.pt"
        rstate = safe_torch_load(mine)
        self.micro_step, self.global_step = int(rstate["micro_step"]), int(rstate["global_step"])
        client = json.loads((path / "client_state.json").read_text())
        return client, rstate["rank_state"]

    def _barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
