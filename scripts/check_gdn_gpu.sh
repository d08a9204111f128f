#!/usr/bin/env bash
# GPU must-show of issue #19 (Gated DeltaNet and hybrids), one device command of < 10 minutes, from the repo root:
#  1. training tokens/s and peak memory at 370M, B=4, T=4096 (bf16 autocast, fused AdamW): our Gated DeltaNet and
#     its hybrid (configs/gated_deltanet/370m-hybrid.json: every 4th layer softmax attention) next to our GLA,
#     RetNet and a Llama (SDPA) of the same size, and fla's gated_deltanet where its backward runs (it may refuse);
#  2. decode through generate at 370M bf16: B=8 after 512 / 2K / 16K-token prompts (latency at 16K vs 512);
#  3. fla 0.6.0 delta_net / gated_deltanet checkpoints converted to ours: logits vs fla's in fp32 (and bf16).
# fla is optional (its wheels carried as docs/gpu.md says, PYTHONPATH=/tmp/site); without it its rows say so.
# Env: OUT (default /tmp/gdn). Each step writes JSON under $OUT and prints its table.
set -uo pipefail
OUT=${OUT:-/tmp/gdn}; mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
step() {  # name, timeout, command...
  local name=$1 t=$2; shift 2
  local t0=$(date +%s)
  timeout "$t" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 40
  echo "== $name: rc=${PIPESTATUS[0]}, $(( $(date +%s) - t0 ))s wall"
}
FLA=$(python3 -c "import fla" 2>/dev/null && echo '"fla_gated_deltanet",' || echo "")
step train 240 python3 scripts/bench.py --cases train --out "$OUT/train" \
  --set "models=[\"ours_gated_deltanet\",\"ours_gated_deltanet:hybrid\",\"ours_gla\",\"ours_retnet\",$FLA\"llama\"]"
step decode 200 python3 scripts/bench.py --cases decode --out "$OUT/decode" \
  --set 'models=["ours_gated_deltanet","ours_gated_deltanet:hybrid"]' --set 'batches=[8]' \
  --set 'prompts=[512,2048,16384]'
if [ -n "$FLA" ]; then
  step convert 120 python3 scripts/check_convert_fla_gpu.py --cases delta_net,delta_net_gate,gated_deltanet,gated_deltanet_neg_eig \
    --json "$OUT/convert.json"
else
  echo "== convert: skipped (fla not importable; carry its wheels)"
fi
