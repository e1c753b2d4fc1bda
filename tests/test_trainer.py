"""The shared fit loop: exact resume, non-finite handling, atomic checkpoints, both engine backends."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mm1d.config import EngineConfig, OptimConfig, TrackingConfig, TrainConfig
from mm1d.training.engine import Engine, lr_lambda
from mm1d.training.tracking import read_metrics
from mm1d.training.trainer import IndexedBatches, NonFiniteLossError, Trainer


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_batch(index: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(index)
    x = torch.randn(4, 8, generator=g)
    return {"x": x, "y": x.sum(-1, keepdim=True)}


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
    return loss, {"tokens": 4}


class Killed(Exception):
    pass


def killing(at_call: int):
    """A loss_fn that dies (like a SIGKILL'd process) on its ``at_call``-th call."""
    calls = {"n": 0}

    def fn(model, batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise Killed
        return loss_fn(model, batch)

    return fn


def run(out: Path, steps: int, backend: str = "torch", fn=loss_fn, max_nonfinite: int = 5, ema: float = 0.0,
        eval_fn=None, eval_every: int = 0):
    torch.manual_seed(0)
    trainer = Trainer(
        Toy(),
        train=TrainConfig(max_steps=steps, batch_size=4, log_every=1, save_every=3, keep_last=2,
                          max_nonfinite=max_nonfinite, ema_decay=ema, eval_every=eval_every),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        engine=EngineConfig(backend=backend),
        tracking=TrackingConfig(),
        out_dir=out,
        seed=0,
        loss_fn=fn,
        data=IndexedBatches(make_batch),
        eval_fn=eval_fn,
    )
    return trainer, trainer.fit()


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}


def test_lr_schedule_warmup_then_cosine() -> None:
    fn = lr_lambda(OptimConfig(warmup_steps=10, min_lr_ratio=0.1), total_steps=110)
    assert fn(0) == pytest.approx(0.1) and fn(9) == pytest.approx(1.0)
    assert fn(10) == pytest.approx(1.0)
    assert fn(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert fn(110) == pytest.approx(0.1)


def test_eval_runs_every_eval_every_steps_and_at_the_last_step(tmp_path: Path) -> None:
    """The final model always gets an eval row, also when max_steps is not a multiple of eval_every."""
    probe = make_batch(10_000)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        return {"loss": float(((model(probe["x"]) - probe["y"]) ** 2).mean())}

    trainer, _ = run(tmp_path, 7, eval_fn=eval_fn, eval_every=3)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/loss" in r]
    assert [r["step"] for r in rows] == [3, 6, 7]
    trainer.engine.module.train(False)  # the trainer evaluates without dropout
    assert rows[-1]["eval/loss"] == pytest.approx(eval_fn(trainer.engine.module)["loss"])


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_equals_uninterrupted_torch(tmp_path: Path, ema: float) -> None:
    run(tmp_path / "full", 8, ema=ema)
    with pytest.raises(Killed):  # checkpoints at steps 3 and 6, killed during step 8
        run(tmp_path / "part", 8, ema=ema, fn=killing(8))
    run(tmp_path / "part", 8, ema=ema)
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert sorted(full) == sorted(part) == list(range(1, 9))
    # the killed run's row for step 7 (after the step-6 checkpoint) was dropped, not logged twice
    assert [r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")] == list(range(1, 9))
    for s in range(1, 9):
        assert part[s] == pytest.approx(full[s], abs=1e-7), s
    # keep_last=2: only the two newest checkpoints stay
    tags = sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step00000006", "step00000008"]


def test_nonfinite_micro_steps_are_skipped_and_counted(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        loss, m = loss_fn(model, batch)
        return (loss * float("nan") if calls["n"] in (2, 5) else loss), m

    _, state = run(tmp_path, 4, fn=flaky)
    assert state.step == 4 and state.skipped == 2
    assert all(math.isfinite(v) for v in losses(tmp_path).values())


def test_nonfinite_streak_aborts_with_a_good_checkpoint(tmp_path: Path) -> None:
    def broken(model, batch):
        loss, m = loss_fn(model, batch)
        return loss * float("inf"), m

    with pytest.raises(NonFiniteLossError, match="non-finite losses in a row"):
        run(tmp_path, 4, fn=broken, max_nonfinite=3)
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    state = torch.load(tmp_path / "checkpoints" / latest / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_interrupted_save_leaves_previous_checkpoint(tmp_path: Path) -> None:
    run(tmp_path, 3)
    # A kill in the middle of the next save leaves only a temporary directory behind.
    (tmp_path / "checkpoints" / ".tmp-step00000006").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step00000006" / "state.pt").write_bytes(b"torn")
    trainer, state = run(tmp_path, 4)
    assert state.step == 4


def test_missing_and_mismatched_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    eng = Engine(Toy(), EngineConfig(backend="torch"), OptimConfig(), total_steps=1)
    with pytest.raises(FileNotFoundError, match="latest"):
        eng.load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        eng.load_checkpoint(tmp_path, tag="step00000001")
    run(tmp_path / "run", 3)
    wide = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 1))
    model = Toy()
    model.net = wide
    other = Engine(model, EngineConfig(backend="torch"), OptimConfig(), total_steps=1)
    with pytest.raises(RuntimeError, match="another shape"):
        other.load_checkpoint(tmp_path / "run" / "checkpoints")


def test_deepspeed_backend_resume_matches(tmp_path: Path, ds_env: None) -> None:
    run(tmp_path / "full", 5, backend="deepspeed")
    with pytest.raises(Killed):
        run(tmp_path / "part", 5, backend="deepspeed", fn=killing(5))
    run(tmp_path / "part", 5, backend="deepspeed")
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    for s in range(1, 6):
        assert part[s] == pytest.approx(full[s], abs=1e-6), s
