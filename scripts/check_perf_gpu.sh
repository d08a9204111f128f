#!/usr/bin/env bash
# The issue-6 GPU measurements, one device call per step or per few steps (a call may run at most 600 s).
# fla 0.6.0 wheels in .whl/ (docs/gpu.md), carried. Still to run after 2026-11-27 (session 5): 4 (steps 1, 2,
# 9, 10 and 11 ran that day).
#   STEP=1  decode graphs: tests/test_decode_graph.py + scripts/check_decode_graph_gpu.py (~5 min)
#   STEP=2  ops: GLA and simple GLA vs fla and SDPA, T 2K/4K/8K, D=128 (fla's chunk_gla autotunes per length:
#           on a fresh machine its first calls alone took over 250 s)
#   STEP=3  models: training tokens/s and peak memory, ours vs fla RetNet (+ torch.profiler of one step)
#   STEP=4  kernels: T=64K and the 1M-token carry of all four ops (scripts/check_kernels_gpu.py --sections long)
#   STEP=5  ops: where the time goes (torch.profiler kernels vs wall) for linear attention and retention, 2K/4K
#   STEP=6  models: correctness of the three 370M models (check_models_gpu.py) + the decode-graph tests (~4 min)
#   STEP=7  kernels: GLA / simple GLA correctness vs float64 after the A-kernel change (without fla's autotuning)
#   STEP=8  ops: GLA's sub-chunk matmul path vs the elementwise one (sweep_gla_A_gpu.py), then GLA and simple
#           GLA timed without fla (2K/4K/8K, with a profile)
#   STEP=11 first call of every op (fresh process, empty Triton cache); simple GLA correctness and timing (no fla)
#   STEP=10 ops: host time per call (profile_host_gpu.py, cProfile), linear attention / retention / simple GLA
#   STEP=9  ops: the one-pass forward (sweep_onepass_gpu.py: vs the two-kernel form, configs, grid sizes), its
#           bf16/fp16 correctness forced on, then linear attention and retention vs fla and SDPA (2K/4K/8K);
#           NO_SWEEP=1 skips the sweep (fla's first calls tune per length: the benchmark needs most of a call)
# Env: OUT (default /tmp/perf), STEP (required; several, e.g. STEP="3 5", run one after another).
# The timeouts of one call's steps must sum to under 600 s.
set -uo pipefail
OUT=${OUT:-/tmp/perf}; STEP=${STEP:?set STEP=1..11}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:src HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export PYTHONUNBUFFERED=1
for step in $STEP; do
case "$step" in
  1) timeout 150 python3 -m pytest -q tests/test_decode_graph.py 2>&1 | tail -3
     timeout 400 python3 scripts/check_decode_graph_gpu.py 2>&1 | tee "$OUT/check_decode_graph.txt" | tail -30 ;;
  2) timeout 570 python3 scripts/benchmark_ops.py --ops gla simple_gla --T 2048 4096 8192 --extra-D --out "$OUT" \
       2>&1 | grep -v Warning | tee "$OUT/bench_ops_gla.txt" | tail -12 ;;
  3) timeout 400 python3 scripts/benchmark_models.py --models ours_retnet fla_retnet ours_gla ours_linear_transformer \
       --no-generate --profile --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/bench_models.txt" | tail -40 ;;
  4) timeout 570 python3 scripts/check_kernels_gpu.py --sections long --out "$OUT" 2>&1 \
       | tee "$OUT/check_kernels_long.txt" | grep -E "ok |BAD|ERROR|correctness" ;;
  5) timeout 170 python3 scripts/benchmark_ops.py --ops linear_attention retention --T 2048 4096 --extra-D \
       --profile ours fla --out "$OUT/ops_profile" 2>&1 | grep -v Warning | tee "$OUT/bench_ops_profile.txt" | tail -60 ;;
  6) timeout 220 python3 scripts/check_models_gpu.py --json "$OUT/check_models.json" 2>&1 | grep -v Warning \
       | tee "$OUT/check_models.txt" | tail -8
     timeout 120 python3 -m pytest -q -x tests/test_decode_graph.py 2>&1 | tail -3 ;;
  7) timeout 300 python3 scripts/check_kernels_gpu.py --sections correct --families gla simple_gla \
       --fla-families linear retention --budget-s 250 --out "$OUT" > "$OUT/check_kernels_gla.txt" 2>&1
     grep -E "ok |BAD|ERROR|correctness|worst" "$OUT/check_kernels_gla.txt" ;;
  8) timeout 150 python3 scripts/sweep_gla_A_gpu.py --T 2048 4096 8192 --configs '[{}, {"diag_limit": 0.0}]' \
       2>&1 | grep -v Warning | tee "$OUT/sweep_gla_diag.txt" | grep -E "fwd\+bwd|profile|vector|intra|dqk"
     timeout 150 python3 scripts/benchmark_ops.py --ops gla simple_gla --T 2048 4096 8192 --extra-D --no-fla \
       --profile ours --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/bench_ops_gla_nofla.txt" | tail -8 ;;
  9) [ -n "${NO_SWEEP:-}" ] || timeout 200 python3 scripts/sweep_onepass_gpu.py --out "$OUT" 2>&1 | grep -v Warning \
       | tee "$OUT/sweep_onepass.txt" | tail -80
     timeout 150 python3 scripts/check_kernels_gpu.py --sections correct --families linear retention simple_gla \
       --fla-families none \
       --tags main long d256 varlen fp16 kv strong --overrides '{"onepass_min_programs": 0, "onepass_min_programs_scalar": 0}' \
       --budget-s 130 --out "$OUT/onepass" > "$OUT/check_kernels_onepass.txt" 2>&1
     grep -E "ok |BAD|ERROR|correctness|worst" "$OUT/check_kernels_onepass.txt"
     timeout 300 python3 scripts/benchmark_ops.py --ops linear_attention retention --T 2048 4096 8192 --extra-D \
       --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/bench_ops_linret.txt" | tail -45 ;;
  10) timeout 120 python3 scripts/profile_host_gpu.py --T 2048 2>&1 | grep -v Warning | tee "$OUT/profile_host.txt" \
       | grep -E "==|tottime|^ +[0-9]" | head -150 ;;
  11) timeout 170 python3 scripts/check_kernels_gpu.py --sections first_call,correct --families simple_gla \
       --fla-families none --tags main long varlen fp16 kv strong --budget-s 150 --out "$OUT" \
       > "$OUT/check_kernels_first_sgla.txt" 2>&1
     grep -E "first call|ok |BAD|ERROR|correctness|worst" "$OUT/check_kernels_first_sgla.txt" | cut -c1-220
     timeout 120 python3 scripts/benchmark_ops.py --ops simple_gla --T 2048 4096 8192 --extra-D --no-fla \
       --profile ours --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/bench_ops_sgla.txt" | grep -v "^{" | tail -30 ;;
  *) echo "STEP must be 1..11" >&2; exit 2 ;;
esac
done
