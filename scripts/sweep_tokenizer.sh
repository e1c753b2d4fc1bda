#!/usr/bin/env bash
# Train several tiny tokenizer variants in parallel (one process each; meant for a GPU machine with many
# cores), then judge each bundle's reconstructions against k. Results: $OUT_DIR/<name>/recon/results.json.
#   KIND=image bash scripts/sweep_tokenizer.sh A "" B "model.patch_size=2" C "model.dec_dim=192"
#   KIND=video bash scripts/sweep_tokenizer.sh V1 "model.patch_size=2"
# Env: KIND (image|video), OUT_DIR (default runs/sweep), TRAIN_LIMIT (seconds per run, default 600),
# PY (python, default .venv/bin/python or python3). A run cut by the time limit is judged from its bundle if
# it finished, else skipped.
set -u
cd "$(dirname "$0")/.."
KIND=${KIND:-image}; OUT_DIR=${OUT_DIR:-runs/sweep}; LIMIT=${TRAIN_LIMIT:-600}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ "$KIND" = image ]; then CFG=configs/tokenizer/flextok_tiny.yaml; TRAIN=tokenizers/train_flextok.py; KS=1,2,4,8,16,32
else CFG=configs/tokenizer/videoflextok_tiny.yaml; TRAIN=tokenizers/train_videoflextok.py; KS=1,2,4,8,16; fi
mkdir -p "$OUT_DIR"
[ -d "$OUT_DIR/val" ] || $PY -m mm1d.data.shapes --out "$OUT_DIR/val" --split val --num-images 256 --num-videos 64 --seed 5
while [ $# -ge 2 ]; do
  name=$1; ov=$2; shift 2
  (
    timeout "$LIMIT" $PY $TRAIN --config $CFG out_dir="$OUT_DIR/$name" $ov > "$OUT_DIR/$name.train.log" 2>&1
    if [ -f "$OUT_DIR/$name/bundle/config.json" ]; then
      $PY eval/eval_reconstruction.py --tokenizer "$OUT_DIR/$name/bundle" --modality "$KIND" --data "$OUT_DIR/val" \
        --budgets $KS --limit 128 --no-progress --out "$OUT_DIR/$name/recon" > "$OUT_DIR/$name.eval.log" 2>&1
    fi
  ) &
done
wait
for r in "$OUT_DIR"/*/recon/results.json; do
  $PY -c "import json,sys; r=json.load(open(sys.argv[1])); m=r['metrics']
print(sys.argv[1].split('/')[-3], {k: (round(v['psnr'], 2), round(v.get('judge/all', 0), 3)) for k, v in m.items()})" "$r"
done
