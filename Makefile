# Convenience targets; the README's two fresh-machine commands are `bash scripts/main_job.sh` and
# `bash scripts/test.sh`.
PY := .venv/bin/python
RUN ?= runs/tokenizers
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled DS_ACCELERATOR=cpu

.PHONY: setup test main tokenizers lint

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

main:
	bash scripts/main_job.sh

lint: setup
	.venv/bin/ruff check .

# Reproduce the shipped tiny tokenizers from scratch (slower than the main job; a GPU makes it minutes:
# add ENGINE=... overrides as needed), then pack them into mm1d/assets/.
tokenizers: setup
	$(PY) tokenizers/train_flextok.py --config configs/tokenizer/flextok_tiny.yaml out_dir=$(RUN)/flextok
	$(PY) tokenizers/train_videoflextok.py --config configs/tokenizer/videoflextok_tiny.yaml out_dir=$(RUN)/videoflextok
	$(PY) scripts/pack_asset.py $(RUN)/flextok/bundle flextok-shapes-tiny
	$(PY) scripts/pack_asset.py $(RUN)/videoflextok/bundle videoflextok-shapes-tiny
