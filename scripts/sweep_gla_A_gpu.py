"""Time the GLA op (fwd+bwd, bf16, B=4, H=16, D=128) under config overrides of the vector gate's kernels
(`BK_A`: key-dim tile of chunk_vector_A_kernel; `diag_limit`: 0 sends every sub-chunk down the elementwise
path, see ops/triton/chunk_fwd.py) and report the kernels' own times from torch.profiler, with the largest
output/gradient difference from the first config (a wrong config shows up there).

    PYTHONPATH=src python scripts/sweep_gla_A_gpu.py --T 4096 --configs '[{}, {"diag_limit": 0.0}]'
"""
import argparse
import json
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import benchmark_ops as b  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, nargs="+", default=[4096])
    p.add_argument("--configs", default='[{}, {"BK_A": 32}, {"BK_A": 16}]')
    a = p.parse_args()
    from triton.testing import do_bench

    from linattn_models.ops.dispatch import triton_ops
    mod = triton_ops()
    print(json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "date": time.strftime("%Y-%m-%d")}))
    for T in a.T:
        x = b.make_inputs("gla", 4, T, 16, 128)
        fn = b.ours("gla")
        base = None
        for cfg in json.loads(a.configs):
            mod.OVERRIDES.clear()
            mod.OVERRIDES.update(cfg)
            leaves = [t.detach().requires_grad_(True) for t in x]
            o = fn(*leaves)
            o.backward(torch.ones_like(o))
            outs = [o.detach().float()] + [t.grad.float() for t in leaves]
            diff = 0.0 if base is None else max(((u - v).abs().max() / v.abs().max()).item()
                                                for u, v in zip(outs, base))
            base = base or outs
            ms = do_bench(b.make_step(fn, x, True), warmup=25, rep=100, return_mode="median")
            print(f"T={T} cfg={cfg}: fwd+bwd {ms:.3f} ms (median), max rel diff vs the first config {diff:.2e}",
                  flush=True)
            b.profile(b.make_step(fn, x, True), iters=5, top=8)  # prints the kernels per fwd+bwd
    mod.OVERRIDES.clear()


if __name__ == "__main__":
    main()
