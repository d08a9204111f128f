#!/usr/bin/env bash
# GPU check of the main job (run from the repo root on a machine with >= 2 GPUs):
#  1. the ~125M config of each architecture on one GPU (bf16, tokens/s printed);
#  2. GLA 125M on two GPUs with accelerate launch, DDP and FSDP, at the same global batch as (1).
# Prints each run's summary and a table of logged train losses per step side by side.
# Env: OUT (default /tmp/mainjob), STEPS (default 40), ARCHS (default "gla retnet linear_transformer").
set -uo pipefail
OUT=${OUT:-/tmp/mainjob}; STEPS=${STEPS:-40}; ARCHS=${ARCHS:-"gla retnet linear_transformer"}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--size 125m --max-steps "$STEPS" --block-size 1024 --eval-steps "$STEPS" --save-steps "$STEPS"
        --logging-steps 5 --max-eval-blocks 32 --sample-tokens 40 --warmup-steps 10 --lr 1e-3 --no-plot
        --overwrite)  # a rerun replaces the last one's runs (their checkpoints go to previous-checkpoints/)
run() {  # name, timeout, command...
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "== $name: rc=$rc, $(( $(date +%s) - t0 ))s wall"
  grep -E "^(model|training|done in|held-out|time budget)" "$OUT/$name.log" | sed 's/^/   /'
  [ $rc -ne 0 ] && tail -n 25 "$OUT/$name.log" | sed 's/^/   ! /'
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, transformers, accelerate, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'triton', triton.__version__)"
for a in $ARCHS; do
  CUDA_VISIBLE_DEVICES=0 run "$a-1gpu" 300 python scripts/train.py --arch "$a" "${COMMON[@]}" --batch-size 16 \
      --output-dir "$OUT/$a-1gpu"
done
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  for mode in ddp fsdp; do
    run "gla-$mode" 300 accelerate launch --config_file "configs/accelerate/$mode.yaml" --num_processes 2 \
        scripts/train.py --arch gla "${COMMON[@]}" --batch-size 8 --output-dir "$OUT/gla-$mode"
  done
fi
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); runs = {}
for d in sorted(out.iterdir()):
    st = d / "trainer_state.json"
    if st.is_file():
        runs[d.name] = {h["step"]: h["loss"] for h in json.loads(st.read_text())["log_history"] if "loss" in h}
steps = sorted({s for r in runs.values() for s in r})
print("train loss by step:\n" + "step  " + "  ".join(f"{n:>18}" for n in runs))
for s in steps:
    print(f"{s:>4}  " + "  ".join(f"{runs[n].get(s, float('nan')):>18.4f}" for n in runs))
for d in sorted(out.iterdir()):
    r = d / "results.json"
    if r.is_file():
        j = json.loads(r.read_text()); j.pop("sample", None); print(d.name, json.dumps(j))
PY
