"""The one door for rank-0 side effects: metrics.jsonl always, wandb when configured (never a login prompt)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mm1d.config import TrackingConfig
from mm1d.utils import atomic_write_text, is_main


class Tracker:
    """Appends one JSON object per ``log`` call to ``out_dir/metrics.jsonl`` (rank 0 only).

    wandb runs offline by default and is imported only when ``cfg.wandb != "disabled"``.
    """

    def __init__(self, cfg: TrackingConfig, out_dir: str | Path, config: dict[str, Any] | None = None) -> None:
        self.enabled = is_main()
        self.path = Path(out_dir) / "metrics.jsonl"
        self._wandb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE", cfg.wandb) if cfg.wandb != "disabled" else "disabled"
        if mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=cfg.project, name=cfg.run_name, mode=mode, dir=str(out_dir), config=config or {}
            )

    def rewind(self, step: int) -> int:
        """Drop the records logged after ``step`` (a run resumed from step ``step``, or restarted from scratch
        with 0, logs those steps again); the file is rewritten atomically. Returns how many were dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        records = read_metrics(self.path)
        kept = [r for r in records if int(r.get("step", 0)) <= step]
        if len(kept) < len(self.path.read_text().splitlines()):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return len(records) - len(kept)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse a metrics.jsonl file (ignores a torn last line from a killed run)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
