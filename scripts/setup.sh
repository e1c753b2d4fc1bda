#!/usr/bin/env bash
# Create .venv in the repo root and install mm1d with everything the tests and the main job need.
# torch is pinned here (requirements.txt), never in the package metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --no-cache-dir -r requirements.txt
  .venv/bin/pip install -q --no-cache-dir --no-deps -e .
  touch .venv/.installed
fi
