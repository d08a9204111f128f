"""The one-pass chunked forward (ops/triton/chunk_fwd.chunk_onepass_kernel) against the two-kernel form (states
pass + output kernel) on a GPU: forward time (no grad, triton do_bench median) per shape and config, its fraction
of the memory floor (q, k, v (, g) read and o written once, at the copy bandwidth measured in the same run), and
the largest difference of o from the two-kernel form (a wrong config shows there). Picks the defaults
`onepass_min_programs`, `BV_onepass`, `warps_onepass` of ops/triton/__init__._default_config.

    PYTHONPATH=src python scripts/sweep_onepass_gpu.py --out /tmp/onepass
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_ops as b  # noqa: E402

TWO = {"onepass_min_programs": 1 << 30, "onepass_min_programs_scalar": 1 << 30}
ON = {"onepass_min_programs": 0, "onepass_min_programs_scalar": 0}
CONFIGS = [TWO, ON, {**ON, "BV_onepass": 32}, {**ON, "warps_onepass": 8}]
# (B, H, T, D): the benchmark shapes, then smaller grids (fewer programs) to place the threshold
SHAPES = [(4, 16, 2048, 128), (4, 16, 4096, 128), (4, 16, 8192, 128), (4, 16, 16384, 128), (4, 16, 4096, 64),
          (4, 16, 4096, 256), (2, 16, 8192, 128), (1, 16, 16384, 128), (1, 8, 32768, 128), (8, 16, 4096, 128)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--families", nargs="+", default=["linear_attention", "retention", "simple_gla"])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    a = p.parse_args()
    from linattn_models.ops.dispatch import triton_ops
    mod = triton_ops()
    bw = b.copy_bandwidth()
    meta = {"card": torch.cuda.get_device_name(), "sms": torch.cuda.get_device_properties(0).multi_processor_count,
            "torch": torch.__version__, "triton": __import__("triton").__version__,
            "date": time.strftime("%Y-%m-%d"), "copy_bandwidth_TBps": bw / 1e12}
    print(json.dumps(meta), flush=True)
    rows = []
    for fam in a.families:
        for B, H, T, D in SHAPES:
            x = b.make_inputs(fam, B, T, H, D)
            fn = b.ours(fam)
            floor = b.floor_ms(x, bw)
            base = None
            for cfg in CONFIGS:
                mod.OVERRIDES.clear()
                mod.OVERRIDES.update(cfg)
                with torch.no_grad():
                    o = fn(*x).float()
                diff = 0.0 if base is None else ((o - base).abs().max() / base.abs().max()).item()
                base = o if base is None else base
                ms = b.time_fn(fn, x, False)
                row = dict(family=fam, B=B, H=H, T=T, D=D, cfg=cfg, fwd_ms=ms, floor_ms=floor,
                           x_floor=ms / floor, max_rel_diff=diff)
                rows.append(row)
                print(f"{fam:17s} B={B} H={H:2d} T={T:6d} D={D:3d} {json.dumps(cfg):60s} fwd {ms:7.3f} ms "
                      f"{ms / floor:5.2f}x floor  diff {diff:.1e}", flush=True)
            mod.OVERRIDES.clear()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "sweep_onepass.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
