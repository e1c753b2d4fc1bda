#!/usr/bin/env bash
# The main job on the embedded default: ShapesWorld data, judged analytically. Resumable: finished stages
# are skipped on a second run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled DS_ACCELERATOR=cpu
RUN=${RUN:-runs/main}
PY=.venv/bin/python
for split in train val holdout; do
  if [ ! -f "$RUN/data/$split/.done" ]; then
    $PY -m mm1d.data.shapes --out "$RUN/data/$split" --split "$split" --num-images 2000 --num-videos 400 --seed 0
    touch "$RUN/data/$split/.done"
  fi
done
$PY eval/judge_shapes.py --data "$RUN/data/val" | tee "$RUN/judge_val.json"
echo "main job done: $RUN"
