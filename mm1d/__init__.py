"""mm1d: a unified any-to-any model on 1D tokens.

``import mm1d`` is light: it needs neither deepspeed, wandb nor diffusers. The public entry points
``mm1d.load`` and ``mm1d.generate`` are imported lazily from ``mm1d.inference``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "generate", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("load", "generate", "GenerationResult", "Pipeline"):
        from mm1d import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'mm1d' has no attribute {name!r}")
