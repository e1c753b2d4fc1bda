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

# Reproduce the shipped tiny tokenizers from scratch, then pack them into mm1d/assets/. One after the other on
# the 2-core CPU: the ShapesWorld teacher for REPA (about 6 min), the image tokenizer with REPA on its tokens
# on both cores (about 51 min), its decoder tuned on the frozen codes (stage 2, about 27 min) and then on every
# colour+shape pair (stage 3, about 9 min), then the video tokenizer (about 54 min on one core), its decoder
# stage (about 25 min) and two runs of its MLP output head (stage 3, about 25 min each).
tokenizers: setup
	$(PY) -m mm1d.tokenization.shapes_teacher --out $(RUN)/shapes_teacher --steps 3000
	$(PY) tokenizers/train_flextok.py --config configs/tokenizer/flextok_tiny_repa.yaml out_dir=$(RUN)/flextok \
		model.repa_extractor=shapes:$(RUN)/shapes_teacher
	$(PY) tokenizers/train_flextok.py --config configs/tokenizer/flextok_tiny_decoder.yaml \
		init_from=$(RUN)/flextok/bundle out_dir=$(RUN)/flextok_decoder
	$(PY) tokenizers/train_flextok.py --config configs/tokenizer/flextok_tiny_decoder_world.yaml \
		init_from=$(RUN)/flextok_decoder/bundle out_dir=$(RUN)/flextok_world
	$(PY) tokenizers/train_videoflextok.py --config configs/tokenizer/videoflextok_tiny.yaml out_dir=$(RUN)/videoflextok
	$(PY) tokenizers/train_videoflextok.py --config configs/tokenizer/videoflextok_tiny_decoder.yaml \
		init_from=$(RUN)/videoflextok/bundle out_dir=$(RUN)/videoflextok_decoder
	$(PY) tokenizers/train_videoflextok.py --config configs/tokenizer/videoflextok_tiny_head.yaml \
		init_from=$(RUN)/videoflextok_decoder/bundle out_dir=$(RUN)/videoflextok_head
	$(PY) tokenizers/train_videoflextok.py --config configs/tokenizer/videoflextok_tiny_head.yaml \
		init_from=$(RUN)/videoflextok_head/bundle out_dir=$(RUN)/videoflextok_head2
	$(PY) scripts/pack_asset.py $(RUN)/flextok_world/bundle flextok-shapes-tiny
	$(PY) scripts/pack_asset.py $(RUN)/videoflextok_head2/bundle videoflextok-shapes-tiny
