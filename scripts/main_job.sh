#!/usr/bin/env bash
# The main job on the embedded default (ShapesWorld, tiny configs, CPU, no downloads):
#   1 setup  2 ShapesWorld splits  3 text tokenizer  4 pretokenize with the shipped tiny tokenizers
#   5 deepspeed --num_gpus 2 train/pretrain.py (2 CPU ranks, ZeRO-2)  6 release bundle  7 eval suite + report
# Resumable: a finished stage leaves RUN/.stage-N and is skipped; pretraining resumes from its checkpoint.
# Environment: RUN (default runs/main), STEPS (pretraining steps, default from configs/mm_tiny.yaml),
# NUM_IMAGES / NUM_VIDEOS (train split size), EVAL_NUM (prompts per split), SHIP=1 copies the bundle into
# mm1d/assets/shapes-tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled DS_ACCELERATOR=cpu
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
RUN=${RUN:-runs/main}; PY=.venv/bin/python
NUM_IMAGES=${NUM_IMAGES:-60000}; NUM_VIDEOS=${NUM_VIDEOS:-12000}; EVAL_NUM=${EVAL_NUM:-64}
mkdir -p "$RUN"
TIMES="$RUN/stage_times.tsv"

stage() {  # stage N NAME CMD...
  local n=$1 name=$2; shift 2
  if [ -f "$RUN/.stage-$n" ]; then echo "== stage $n ($name): done, skipped"; return; fi
  echo "== stage $n ($name)"
  local t0=$SECONDS
  "$@"
  printf "%s\t%s\t%d\n" "$n" "$name" $((SECONDS - t0)) >> "$TIMES"
  touch "$RUN/.stage-$n"
}

shapes() {
  $PY -m mm1d.data.shapes --out "$RUN/data/train" --split train --num-images "$NUM_IMAGES" --num-videos "$NUM_VIDEOS" --seed 0 --workers 2
  $PY -m mm1d.data.shapes --out "$RUN/data/val" --split val --num-images 512 --num-videos 128 --seed 1 --workers 2
  $PY -m mm1d.data.shapes --out "$RUN/data/holdout" --split holdout --num-images 512 --num-videos 128 --seed 2 --workers 2
}
pretok() {  # two ranks of one thread each write alternate shards (the tokens equal a one-process run's)
  local split r pids
  for split in train val; do
    pids=()
    for r in 0 1; do
      RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 OMP_NUM_THREADS=1 $PY tokenizers/pretokenize.py \
        --config configs/tokenizer/pretokenize_tiny.yaml out_dir="$RUN/tokens/$split" source="$RUN/data/$split" \
        tokenizers.text="$RUN/text/bundle" &
      pids+=($!)
    done
    for r in "${pids[@]}"; do wait "$r"; done
  done
}
pretrain() {
  local extra=()
  [ -n "${STEPS:-}" ] && extra+=("train.max_steps=$STEPS")
  .venv/bin/deepspeed --num_gpus 2 train/pretrain.py --config configs/mm_tiny.yaml out_dir="$RUN/mm_tiny" \
    tokenizers.text="$RUN/text/bundle" "data.shards=[$RUN/tokens/train]" "eval_data=[$RUN/tokens/val]" "${extra[@]}"
}
ship() {
  if [ "${SHIP:-0}" = 1 ]; then $PY scripts/pack_asset.py "$RUN/mm_tiny/bundle" shapes-tiny; fi
}
evaluate() {  # two lanes of one thread each, balanced by time (about 1.25x the throughput of one process)
  local m="$RUN/mm_tiny/bundle" o="$RUN/eval" pa pb
  mkdir -p "$o"
  lane_a() {
    $PY eval/eval_caption.py --config configs/eval/shapesbench_caption.yaml --model "$m" --num "$EVAL_NUM" --out "$o/caption"
    $PY eval/eval_t2i.py --config configs/eval/shapesbench_t2i.yaml --model "$m" --num "$EVAL_NUM" --out "$o/t2i"
    # best of 8 by the model's own captioning direction (generate(..., rerank=7)), at the larger budgets
    $PY eval/eval_t2v.py --config configs/eval/shapesbench_t2v.yaml --model "$m" --num "$EVAL_NUM" --budgets 4,8,16 \
      --no-ceiling --rerank 7 --out "$o/t2v_best8"
  }
  lane_b() {
    $PY eval/eval_caption.py --config configs/eval/shapesbench_caption.yaml --model "$m" --num "$EVAL_NUM" \
      --modality video --out "$o/caption_video"
    $PY eval/eval_t2v.py --config configs/eval/shapesbench_t2v.yaml --model "$m" --num "$EVAL_NUM" --out "$o/t2v"
    # the bundle's image preset is best of 8 (configs/mm_tiny.yaml: generation); one draw per prompt for comparison
    $PY eval/eval_t2i.py --config configs/eval/shapesbench_t2i.yaml --model "$m" --num "$EVAL_NUM" --budgets 8,16,32 \
      --no-ceiling --rerank 0 --out "$o/t2i_one"
  }
  echo "   two lanes: image captions, t2i, t2v best of 8 below; video captions, t2v, t2i one draw in $o/lane_b.log"
  (export OMP_NUM_THREADS=1; lane_a) & pa=$!
  (export OMP_NUM_THREADS=1; lane_b) > "$o/lane_b.log" 2>&1 & pb=$!
  wait "$pa" || { echo "eval lane a failed"; pkill -P "$pb" 2>/dev/null; kill "$pb" 2>/dev/null; return 1; }
  wait "$pb" || { echo "eval lane b failed; see $o/lane_b.log"; tail -n 20 "$o/lane_b.log"; return 1; }
  grep -h '^{"out"' "$o/lane_b.log" || true  # lane b's one-line summaries
  $PY eval/report.py --runs "$o/t2i" "$o/t2i_one" "$o/t2v" "$o/t2v_best8" "$o/caption" "$o/caption_video" \
    --out "$RUN/report.html"
}

stage 2 shapesworld shapes
stage 3 text_tokenizer $PY tokenizers/train_text.py --config configs/tokenizer/text_tiny.yaml out_dir="$RUN/text"
stage 4 pretokenize pretok
stage 5 pretrain pretrain
stage 6 bundle ship
stage 7 eval evaluate
echo "main job done. Stage times: $TIMES. Report: $RUN/report.html (open it in a browser)."
