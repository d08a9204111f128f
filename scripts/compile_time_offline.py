"""Compile time of the delta rule's W/U/N kernel for a GPU target, on any machine (no GPU needed: Triton's
ptxas is bundled), in a fresh Triton cache per config: what the first call of a process pays for it.

    python3 scripts/compile_time_offline.py [--arch 90] [--configs '[[true, 1], [true, 2], [false, 2]]']

Each config is [wy_blocked, num_warps]; bf16, K = V = 128, the scalar gate, the forward's variant (16-bit W/U).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = """
import sys, time
sys.path.insert(0, {src!r})
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from linattn_models.ops.triton.common import GATE_SCALAR
from linattn_models.ops.triton.delta_fwd import delta_wy_kernel
sig = {{n: t for n, t in zip(("k", "v", "beta", "gb", "pk", "n_out", "w", "u", "cu_seqlens", "chunk_indices", "T"),
        ("*bf16", "*bf16", "*bf16", "*fp32", "*fp32", "*fp32", "*bf16", "*bf16", "*i32", "*i32", "i32"))}}
const = dict(H=16, K=128, V=128, BT=64, BK=64, BV=64, GATE=GATE_SCALAR, VARLEN=False, DOT_PREC="tf32", HAS_N=False,
             BLOCKED={blocked}, DOT16=True)
sig.update({{n: "constexpr" for n in const}})
src = ASTSource(delta_wy_kernel, sig, constexprs={{(delta_wy_kernel.arg_names.index(n),): v for n, v in const.items()}})
t = time.time()
triton.compile(src, target=GPUTarget("cuda", {arch}, 32), options=dict(num_warps={warps}, num_stages=2))
print("SECONDS", time.time() - t)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--configs", type=json.loads, default=[[True, 1], [True, 2], [False, 2]])
    args = ap.parse_args()
    for blocked, warps in args.configs:
        with tempfile.TemporaryDirectory() as cache:
            r = subprocess.run([sys.executable, "-c", ONE.format(src=str(ROOT / "src"), blocked=bool(blocked),
                                                                 warps=int(warps), arch=args.arch)],
                               env=dict(os.environ, TRITON_CACHE_DIR=cache), capture_output=True, text=True)
        secs = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("SECONDS")]
        print(json.dumps(dict(wy_blocked=bool(blocked), num_warps=warps, arch=args.arch,
                              compile_s=float(secs[0]) if secs else None,
                              error=None if secs else r.stderr[-300:])), flush=True)


if __name__ == "__main__":
    main()
