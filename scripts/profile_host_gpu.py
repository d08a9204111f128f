"""Where the host time of one op call goes on the GPU machine: cProfile over --iters forward+backward calls
(bf16, B=4, H=16, D=128, T=--T, small enough that the GPU waits on the host), top functions by own time, and the
wall time per call back to back (one device sync at the end) and under cProfile.

    PYTHONPATH=src python scripts/profile_host_gpu.py --ops linear_attention retention --T 2048
"""
import argparse
import cProfile
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_ops as b  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ops", nargs="+", default=["linear_attention", "retention", "simple_gla"])
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--top", type=int, default=22)
    a = p.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {__import__('triton').__version__}, "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    for op in a.ops:
        x = b.make_inputs(op, 4, a.T, 16, 128)
        for name, step in (("fwd", b.make_step(b.ours(op), x, False)), ("fwd+bwd", b.make_step(b.ours(op), x, True))):
            for _ in range(10):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(a.iters):
                step()
            torch.cuda.synchronize()
            free = (time.perf_counter() - t0) / a.iters
            prof = cProfile.Profile()
            prof.enable()
            t0 = time.perf_counter()
            for _ in range(a.iters):
                step()
            torch.cuda.synchronize()
            prof.disable()
            print(f"\n== {op} {name} T={a.T}: {free * 1e3:.3f} ms/call back to back, "
                  f"{(time.perf_counter() - t0) / a.iters * 1e3:.3f} ms/call under cProfile", flush=True)
            pstats.Stats(prof).sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
