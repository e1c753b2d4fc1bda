#!/usr/bin/env bash
# Fresh machine -> installed .venv -> the test suite. Exits non-zero on any failure (and on "no tests").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled DS_ACCELERATOR=cpu
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -m "not slow" --timeout 900 tests "$@"
