"""Shared fixtures. Every test runs offline and without a wandb login."""

from __future__ import annotations

import os
import socket

import pytest

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "DS_ACCELERATOR": "cpu",
}.items():
    os.environ.setdefault(_k, _v)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ds_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Single-process rendezvous variables so DeepSpeed can initialize in-process."""
    pytest.importorskip("deepspeed")
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(k, v)
    if "MASTER_PORT" not in os.environ:
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
