"""Benchmark the ops on a GPU: ours vs fla (flash-linear-attention, if importable) vs torch SDPA (flash, causal).

    PYTHONPATH=src python scripts/benchmark_ops.py                      # B=4, H=16, D=128, T=1K..32K + D=64/256
    PYTHONPATH=src python scripts/benchmark_ops.py --T 4096 --D 128 --ops gla --out /tmp/bench

For each op, length and head dim: forward and forward+backward time (triton.testing.do_bench median, ms) in
bf16, the ratio ours/fla and ours/SDPA, and the forward's fraction of the memory floor (bytes that must move:
read q, k, v (, g) once and write o once, over the device-copy bandwidth measured in the same run).
With --first-call, each op's first call (compile + any tuning) is timed in a fresh process with an empty
Triton cache. Writes bench_ops.json and bench_ops.png (fwd+bwd ms vs T) to --out.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

FAMILIES = ("linear_attention", "retention", "simple_gla", "gla")


def make_inputs(family, B, T, H, D, device="cuda", dtype=torch.bfloat16, seed=0):
    """q, k, v [B, T, H, D] and g in `dtype`; log gates logsigmoid(randn + 3) (GLA: / 16, as the GLA layer)."""
    from linattn_models.check import random_op_inputs
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v, g, _ = random_op_inputs(family, B, T, H, D, D, N=1, gate_offset=3.0,
                                     strength=1 / 16 if family == "gla" else 1.0, generator=gen,
                                     dtype=torch.float32, device=device)
    return tuple(None if t is None else t.to(dtype) for t in (q, k, v, g))


def ours(family):
    from linattn_models import ops
    fn = {"linear_attention": ops.linear_attention, "retention": ops.retention, "simple_gla": ops.simple_gla,
          "gla": ops.gated_linear_attention}[family]
    if family in ("linear_attention", "retention"):
        return lambda q, k, v, g: fn(q, k, v)[0]
    return lambda q, k, v, g: fn(q, k, v, g)[0]


def fla(family):
    if family == "linear_attention":
        from fla.ops.linear_attn import chunk_linear_attn
        return lambda q, k, v, g: chunk_linear_attn(q, k, v, normalize=False)[0]
    if family == "retention":
        from fla.ops.retention import chunk_retention
        return lambda q, k, v, g: chunk_retention(q, k, v)[0]
    if family == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla
        return lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g)[0]
    from fla.ops.gla import chunk_gla
    return lambda q, k, v, g: chunk_gla(q, k, v, g=g)[0]


def sdpa(family):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v, g):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True).transpose(1, 2)
    return run


def time_fn(fn, inputs, backward):
    from triton.testing import do_bench
    return do_bench(make_step(fn, inputs, backward), warmup=25, rep=100, return_mode="median")


def make_step(fn, inputs, backward):
    """A no-argument call of fn: the forward under no_grad, or forward+backward with fresh grads."""
    q, k, v, g = inputs
    if not backward:
        return torch.no_grad()(lambda: fn(q, k, v, g))
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)] + ([g.detach().requires_grad_(True)]
                                                                    if g is not None else [None])
    do = torch.randn_like(v)

    def step():
        for t in leaves:
            if t is not None:
                t.grad = None
        fn(*leaves).backward(do)
    return step


def profile(step, iters=10, top=15):
    """Where the time of `step()` goes on the GPU: per-kernel CUDA time per call from torch.profiler, the sum of
    all kernels, and the wall time per call. Kernel sum << wall means the call is bound by host work/launches."""
    from torch.profiler import ProfilerActivity, profile as prof
    step(); torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / iters
    kernels = [e for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: -e.device_time_total)
    gpu = sum(e.device_time_total for e in kernels) / iters / 1e3
    out = {"wall_ms": wall * 1e3, "kernels_ms": gpu, "launches": sum(e.count for e in kernels) // iters,
           "top": [(e.key[:70], e.count // iters, e.device_time_total / iters / 1e3) for e in kernels[:top]]}
    print(f"  profile: wall {out['wall_ms']:.3f} ms/call (profiler on), GPU kernels {gpu:.3f} ms in "
          f"{out['launches']} launches")
    for name, n, ms in out["top"]:
        print(f"    {ms:8.3f} ms  x{n:<3d} {name}")
    return out


def floor_ms(inputs, bw):
    """The forward's memory floor in ms: q, k, v (, g) read once and o (v's shape, bf16) written once at bw."""
    nbytes = sum(t.numel() * t.element_size() for t in inputs if t is not None) + inputs[2].numel() * 2
    return nbytes / bw * 1e3


def copy_bandwidth():
    """Device-copy bandwidth (bytes read + written per second), the ceiling for the memory floor."""
    from triton.testing import do_bench
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


FIRST_CALL = """
import time, torch, sys
sys.path.insert(0, {src!r}); sys.path.insert(0, {scripts!r})
import benchmark_ops as b
t0 = time.time()
fn = getattr(b, {impl!r})({family!r})
x = [t.requires_grad_(True) if t is not None else None for t in b.make_inputs({family!r}, 4, 4096, 16, 128)]
fn(*x).sum().backward(); torch.cuda.synchronize()
print(time.time() - t0)
"""


def first_call(impl, family, timeout):
    """Seconds for import + first fwd+bwd in a fresh process with an empty Triton cache (None if it timed out)."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = FIRST_CALL.format(src=os.path.join(os.path.dirname(here), "src"), scripts=here, impl=impl, family=family)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        try:
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    if r.returncode != 0:
        print(f"first call of {impl} {family} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        return float("nan")
    return float(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--T", nargs="+", type=int, default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--D", nargs="+", type=int, default=[128])
    p.add_argument("--extra-D", nargs="*", type=int, default=[64, 256], help="head dims also run at T=4096")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--no-fla", action="store_true")
    p.add_argument("--fla-simple-gla", action="store_true",
                   help="also time fla's chunk_simple_gla (its first call tuned for minutes on an H100)")
    p.add_argument("--first-call", action="store_true")
    p.add_argument("--profile", nargs="*", default=None, metavar="IMPL",
                   help="also profile fwd+bwd of these impls (default: ours) per shape: kernels vs wall time")
    p.add_argument("--first-call-timeout", type=float, default=240)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import triton
    impls = {"ours": ours, "sdpa": sdpa}
    if not a.no_fla:
        try:
            import fla  # noqa: F401
            impls["fla"] = globals()["fla"]
        except ImportError as e:
            print(f"fla not importable ({e}); timing ours and SDPA only")
    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d"), "B": a.B, "H": a.H, "dtype": "bfloat16"}
    if "fla" in impls:
        import importlib.metadata as md
        meta["fla"] = md.version("fla-core")
    bw = copy_bandwidth()
    meta["copy_bandwidth_TBps"] = bw / 1e12
    print(json.dumps(meta))
    shapes = [(T, D) for D in a.D for T in a.T] + [(4096, D) for D in a.extra_D if D not in a.D]
    rows = []
    for family in a.ops:
        for T, D in shapes:
            x = make_inputs(family, a.B, T, a.H, D)
            row = {"op": family, "T": T, "D": D}
            for name, make in impls.items():
                if name == "fla" and family == "simple_gla" and not a.fla_simple_gla:
                    continue
                try:
                    fn = make(family)
                    row[f"{name}_fwd"] = time_fn(fn, x, False)
                    row[f"{name}_fwdbwd"] = time_fn(fn, x, True)
                    if a.profile is not None and name in (a.profile or ["ours"]):
                        print(f"{name} {family} T={T} D={D} fwd+bwd:")
                        row[f"{name}_profile"] = profile(make_step(fn, x, True))
                except Exception as e:  # a peer that fails (memory, shape) is reported, not fatal
                    row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                torch.cuda.empty_cache()
            row["floor_fwd"] = floor_ms(x, bw)
            rows.append(row)
            print(json.dumps(row), flush=True)
    first = {}
    if a.first_call:
        for family in a.ops:
            for name in impls:
                if name == "sdpa" or (name == "fla" and family == "simple_gla" and not a.fla_simple_gla):
                    continue
                first[f"{name}_{family}"] = first_call(name, family, a.first_call_timeout)
                print(f"first call {name} {family}: {first[f'{name}_{family}']}", flush=True)
    with open(os.path.join(a.out, "bench_ops.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows, "first_call_s": first}, f, indent=1)
    plot(rows, os.path.join(a.out, "bench_ops.png"), meta)
    print_table(rows, meta, first)


def fmt(x):
    return "-" if x is None else f"{x:.3f}"


def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


def print_table(rows, meta, first):
    print(f"\n{meta['card']}, torch {meta['torch']}, triton {meta['triton']}, fla {meta.get('fla', '-')}, "
          f"{meta['date']}, bf16, B={meta['B']}, H={meta['H']}; ms are do_bench medians")
    print(f"{'op':17s} {'T':>6s} {'D':>4s} | {'ours fwd':>8s} {'fla fwd':>8s} {'sdpa fwd':>8s} {'floor':>6s} "
          f"{'%floor':>6s} | {'ours f+b':>8s} {'fla f+b':>8s} {'sdpa f+b':>8s} | {'/fla':>5s} {'/sdpa':>5s}")
    for r in rows:
        g = r.get
        frac = "-" if g("ours_fwd") is None else f"{100 * r['floor_fwd'] / r['ours_fwd']:.0f}%"
        print(f"{r['op']:17s} {r['T']:6d} {r['D']:4d} | {fmt(g('ours_fwd')):>8s} {fmt(g('fla_fwd')):>8s} "
              f"{fmt(g('sdpa_fwd')):>8s} {r['floor_fwd']:6.3f} {frac:>6s} | {fmt(g('ours_fwdbwd')):>8s} "
              f"{fmt(g('fla_fwdbwd')):>8s} {fmt(g('sdpa_fwdbwd')):>8s} | "
              f"{ratio(g('ours_fwdbwd'), g('fla_fwdbwd')):>5s} {ratio(g('ours_fwdbwd'), g('sdpa_fwdbwd')):>5s}")
    for k, v in first.items():
        print(f"first call (fresh process, empty Triton cache, B=4 T=4096 H=16 D=128 fwd+bwd): {k}: "
              f"{'timed out' if v is None else f'{v:.1f} s'}")


def plot(rows, path, meta):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fams = sorted({r["op"] for r in rows})
    fig, axes = plt.subplots(1, len(fams), figsize=(4.5 * len(fams), 4), squeeze=False)
    D = max((r["D"] for r in rows), key=lambda d: sum(r["D"] == d for r in rows))
    for ax, fam in zip(axes[0], fams):
        rs = sorted((r for r in rows if r["op"] == fam and r["D"] == D), key=lambda r: r["T"])
        for name in ("ours", "fla", "sdpa"):
            pts = [(r["T"], r[f"{name}_fwdbwd"]) for r in rs if f"{name}_fwdbwd" in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{fam} fwd+bwd, D={D}")
        ax.set_xlabel("T")
        ax.set_ylabel("ms")
        ax.legend()
    fig.suptitle(f"{meta['card']} bf16 B={meta['B']} H={meta['H']} ({meta['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
