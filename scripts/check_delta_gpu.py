"""The delta rule on a GPU: our kernels against float64, against fla 0.6.0 on the same inputs, speed, first call.

    python3 scripts/check_delta_gpu.py --out DIR [--sections correct,speed,first_call] [--budget-s 400]

correct: forward, final state and every gradient (dq, dk, dv, dbeta, dg, dh0) of a random loss on o and the final
    state, ours (bf16 and fp32) vs the float64 torch reference on the same rounded inputs, at B=4, H=16, D=128, T
    2K-16K, no gate (delta_rule), the scalar gate (gated_delta_rule) and the per-key gate; q, k L2-normalised in the
    op, beta = sigmoid, g = logsigmoid(x + 3). fla's chunk_(gated_)delta_rule on the same inputs: forward vs float64,
    and its backward where it runs (fla 0.6.0 refuses it on Hopper with Triton < 3.7.1).
speed: bf16, B=4, H=16, D=128, T 2K/4K/8K/16K, triton.testing.do_bench medians: ours fwd and fwd+bwd, fla's fwd
    (fwd+bwd where it runs), torch SDPA (flash, causal) fwd+bwd; ratios in the same run.
profile: torch.profiler GPU time per kernel of one call (ours fwd and fwd+bwd, fla's fwd), bf16 B=4 H=16 D=128 at
    --profile-T (default 4096): where the time goes; --configs: ours under each of several kernel_config dicts.
first_call: ours gated_delta_rule fwd+bwd at B=4, T=4096, H=16, D=128 bf16 in a fresh process with an empty Triton
    cache (import, forward, backward seconds; the slowest imports), twice (the first on a cold disk).
Prints a table per section and writes check_delta_gpu.json to --out. Needs CUDA; fla is optional (carried wheels).
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
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from linattn_models import ops  # noqa: E402

T0 = time.time()
GATES = {"delta_rule": None, "gated_delta_rule": 3, "kda": 4}  # gate ndim


def inputs(gate, B, T, H, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=g) for _ in range(3))
    beta = torch.sigmoid(torch.randn(B, T, H, device="cuda", generator=g))
    nd = GATES[gate]
    lg = None if nd is None else F.logsigmoid(torch.randn((B, T, H) + ((D,) if nd == 4 else ()), device="cuda",
                                                         generator=g) + 3)
    h0 = torch.randn(B, H, D, D, device="cuda", generator=g) * 0.1
    return q, k, v, lg, beta, h0


def ours(gate, backend="triton", kernel_config=None):
    def f(q, k, v, g, beta, h0):
        kw = dict(use_qk_l2norm=True, initial_state=h0, output_final_state=True, backend=backend)
        if kernel_config:
            kw["kernel_config"] = kernel_config
        if g is None:
            return ops.delta_rule(q, k, v, beta, **kw)
        return ops.gated_delta_rule(q, k, v, g, beta, **kw)
    return f


def fla(gate):
    if gate == "kda":
        return None
    if gate == "delta_rule":
        from fla.ops.delta_rule import chunk_delta_rule
        return lambda q, k, v, g, beta, h0: chunk_delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True,
                                                             use_qk_l2norm_in_kernel=True)
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    return lambda q, k, v, g, beta, h0: chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                                               output_final_state=True, use_qk_l2norm_in_kernel=True)


def run(fn, x, backward=True, seed=1):
    leaves = [None if t is None else t.detach().clone().requires_grad_(backward) for t in x]
    o, s = fn(*leaves)
    out = {"o": o.detach(), "ht": s.detach()}
    if backward:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        w = lambda t: torch.randn(t.shape, device="cuda", generator=gen, dtype=torch.float64)  # noqa: E731
        ((o.double() * w(o)).sum() + (s.double() * w(s)).sum()).backward()
        for name, t in zip(("dq", "dk", "dv", "dg", "dbeta", "dh0"), leaves):
            if t is not None:
                out[name] = t.grad
    return out


def rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def section_correct(args, res):
    rows = res.setdefault("correct", [])
    cases = [(gate, dt, T) for gate in ("delta_rule", "gated_delta_rule") for dt in ("bf16", "fp32")
             for T in args.correct_T] + [("kda", "bf16", 2048), ("kda", "fp32", 2048)]
    for gate, dt, T in cases:
        if gate not in args.gates or dt not in args.correct_dtypes:
            continue
        if time.time() - T0 > args.budget_s:
            print(f"budget: skipping correct {gate} {dt} T={T}", flush=True)
            continue
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dt]
        x = inputs(gate, 4, T, 16, 128)
        x = [None if t is None else (t.to(dtype) if i < 5 else t) for i, t in enumerate(x)]
        ref = run(ours(gate, "torch"), [None if t is None else t.double() for t in x])
        got = run(ours(gate, kernel_config=args.correct_config), x)
        row = dict(op=gate, dtype=dt, B=4, T=T, H=16, D=128, impl="ours", kernel_config=args.correct_config)
        row.update({n: rel(got[n], r) for n, r in ref.items()})
        row["finite"] = all(bool(torch.isfinite(t).all()) for t in got.values())
        rows.append(row)
        f = fla(gate) if args.fla and args.fla_correct else None
        if f is not None:
            frow = dict(op=gate, dtype=dt, B=4, T=T, H=16, D=128, impl="fla")
            try:
                fo = run(f, x, backward=False)
                frow.update({n: rel(fo[n], ref[n]) for n in ("o", "ht")})
                fg = run(f, x, backward=True)
                frow.update({n: rel(fg[n], ref[n]) for n in ref if n in fg and n not in ("o", "ht")})
            except Exception as e:  # noqa: BLE001  (fla refuses its gated backward on Hopper + Triton < 3.7.1)
                frow["error"] = repr(e)[:160]
            rows.append(frow)
        del ref, got
        torch.cuda.empty_cache()
        print(json.dumps(rows[-1] if f is None else rows[-2:]), flush=True)


def bench(fn, x, backward):
    import triton
    leaves = [None if t is None else t.detach().requires_grad_(backward) for t in x]
    if not backward:
        return triton.testing.do_bench(lambda: fn(*leaves), return_mode="median")
    do = torch.randn_like(x[2])

    def step():
        for t in leaves:
            if t is not None:
                t.grad = None
        o = fn(*leaves)
        o = o[0] if isinstance(o, tuple) else o
        o.backward(do)
    return triton.testing.do_bench(step, return_mode="median")


def sdpa(q, k, v, g, beta, h0):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True).transpose(1, 2)


def section_speed(args, res):
    rows = res.setdefault("speed", [])
    for gate in [g for g in ("gated_delta_rule", "delta_rule") if g in args.gates]:
        for T in args.speed_T:
            if time.time() - T0 > args.budget_s:
                print(f"budget: skipping speed {gate} T={T}", flush=True)
                continue
            x = [None if t is None else t.bfloat16() for t in inputs(gate, 4, T, 16, 128)]
            x[5] = None  # no initial state in the timing (as training)
            row = dict(op=gate, B=4, T=T, H=16, D=128, dtype="bf16")
            mine = ours(gate)
            row["ours_fwd"] = bench(lambda *a: mine(*a)[0], x, False)
            row["ours_fwdbwd"] = bench(lambda *a: mine(*a)[0], x, True)
            f = fla(gate) if args.fla else None
            if f is not None:
                try:
                    row["fla_fwd"] = bench(lambda *a: f(*a)[0], x, False)
                    row["x_fla_fwd"] = row["ours_fwd"] / row["fla_fwd"]
                    row["fla_fwdbwd"] = bench(lambda *a: f(*a)[0], x, True)
                    row["x_fla_fwdbwd"] = row["ours_fwdbwd"] / row["fla_fwdbwd"]
                except Exception as e:  # noqa: BLE001
                    row["fla_error"] = repr(e)[:160]
            row["sdpa_fwdbwd"] = bench(sdpa, x, True)
            row["x_sdpa_fwdbwd"] = row["ours_fwdbwd"] / row["sdpa_fwdbwd"]
            rows.append(row)
            print(json.dumps(row), flush=True)


def kernel_table(step, iters=10):
    """[(kernel name, launches per call, GPU ms per call)] of step(), largest first, and the total GPU ms."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    ev = sorted((e for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA),
                key=lambda e: -e.device_time_total)
    rows = [[e.key[:60], e.count // iters, round(e.device_time_total / iters / 1e3, 4)] for e in ev]
    return rows, round(sum(r[2] for r in rows), 4)


def section_profile(args, res):
    out = res.setdefault("profile", [])
    for gate in [g for g in ("gated_delta_rule", "delta_rule") if g in args.gates]:
        x = [None if t is None else t.bfloat16() for t in inputs(gate, 4, args.profile_T, 16, 128)]
        x[5] = None
        ref = ours(gate, "torch")(*[None if t is None else t.double() for t in x])[0]  # for each config's o error
        impls = [(f"ours {json.dumps(c)}" if c else "ours", ours(gate, kernel_config=c)) for c in args.configs]
        impls += [("fla", fla(gate))] if args.fla and args.profile_fla and fla(gate) is not None else []
        for name, fn in impls:
            for backward in (False, True):
                if name == "fla" and backward and gate == "gated_delta_rule":
                    continue  # fla 0.6.0 refuses its gated backward on Hopper with Triton < 3.7.1
                leaves = [None if t is None else t.detach().requires_grad_(backward) for t in x]
                do = torch.randn_like(x[2])

                def step():
                    o = fn(*leaves)[0]
                    if backward:
                        o.backward(do)
                try:
                    rows, total = kernel_table(step)
                except Exception as e:  # noqa: BLE001
                    out.append(dict(op=gate, impl=name, backward=backward, error=repr(e)[:160]))
                    continue
                with torch.no_grad():
                    err = rel(fn(*x)[0], ref)
                out.append(dict(op=gate, impl=name, backward=backward, T=args.profile_T, gpu_ms=total, kernels=rows,
                                o_err=err))
                print(f"profile {gate} {name} {'fwd+bwd' if backward else 'fwd'} T={args.profile_T}: {total} ms "
                      f"(o vs float64: {err:.2e})", flush=True)
                for r in rows[:12]:
                    print(f"    {r[2]:8.4f} ms  x{r[1]:<3d} {r[0]}", flush=True)


FIRST = """
import time, torch, sys
t0 = time.time()
sys.path.insert(0, {src!r})
from linattn_models import ops
t1 = time.time()
g = torch.Generator(device="cuda").manual_seed(0)
B, T, H, D = 4, 4096, 16, 128
q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_() for _ in range(3))
lg = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda", generator=g) + 3).requires_grad_()
beta = torch.rand(B, T, H, device="cuda", generator=g).bfloat16().requires_grad_()
o, _ = ops.gated_delta_rule(q, k, v, lg, beta, use_qk_l2norm=True)
torch.cuda.synchronize(); t2 = time.time()
o.sum().backward()
torch.cuda.synchronize(); t3 = time.time()
print("FIRST", t1 - t0, t2 - t1, t3 - t2)
"""


def import_top(stderr, n=8):
    """The n slowest imports (cumulative seconds, module) of a PYTHONPROFILEIMPORTTIME=1 process's stderr."""
    rows = []
    for ln in stderr.splitlines():
        parts = ln.split("|")
        if ln.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    return [[round(t, 2), m.strip()] for t, m in sorted(rows, reverse=True)[:n]]


def section_first_call(args, res):
    """Twice, each in a fresh process with an empty Triton cache: the first run also pays for a cold disk (files
    read for the first time on this machine), the second only for compiling."""
    runs = res["first_call"] = []
    for attempt in range(2):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TRITON_CACHE_DIR=cache, PYTHONPROFILEIMPORTTIME="1")
            t = time.time()
            r = subprocess.run([sys.executable, "-c", FIRST.format(src=str(ROOT / "src"))], env=env,
                               capture_output=True, text=True, timeout=300)
            wall = time.time() - t
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("FIRST")]
        if not line:
            runs.append(dict(attempt=attempt, error=(r.stdout + r.stderr)[-500:]))
        else:
            imp, fwd, bwd = map(float, line[0].split()[1:])
            runs.append(dict(attempt=attempt, op="gated_delta_rule", shape=[4, 4096, 16, 128], import_s=imp,
                             fwd_s=fwd, bwd_s=bwd, total_s=imp + fwd + bwd, process_wall_s=wall,
                             slowest_imports=import_top(r.stderr)))
        print(json.dumps(runs[-1]), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--sections", default="correct,speed,first_call")
    ap.add_argument("--budget-s", type=float, default=400, help="start no new case after this many seconds")
    ap.add_argument("--profile-T", type=int, default=4096)
    ap.add_argument("--correct-T", type=json.loads, default=[2048, 16384], help="correct: T values (JSON list)")
    ap.add_argument("--correct-config", type=json.loads, default={}, help="correct: kernel_config for ours (JSON)")
    ap.add_argument("--correct-dtypes", default="bf16,fp32", help="correct: comma-separated subset of bf16,fp32")
    ap.add_argument("--speed-T", type=json.loads, default=[2048, 4096, 8192, 16384], help="speed: T values")
    ap.add_argument("--no-fla-correct", dest="fla_correct", action="store_false",
                    help="correct: ours only (fla's first calls autotune for minutes)")
    ap.add_argument("--configs", type=json.loads, default=[{}],
                    help="profile: a JSON list of kernel_config dicts for ours (e.g. '[{}, {\"BV_delta_state\": 32}]')")
    ap.add_argument("--no-profile-fla", dest="profile_fla", action="store_false", help="profile: ours only")
    ap.add_argument("--gates", default=",".join(GATES), help=f"comma-separated subset of {', '.join(GATES)}")
    args = ap.parse_args()
    args.gates = args.gates.split(",")
    args.correct_dtypes = args.correct_dtypes.split(",")
    if set(args.gates) - set(GATES):
        ap.error(f"--gates {','.join(args.gates)}: pick from {', '.join(GATES)}")
    if not torch.cuda.is_available():
        sys.exit("check_delta_gpu.py needs a CUDA GPU")
    try:
        import fla  # noqa: F401
        args.fla = True
        fla_version = getattr(fla, "__version__", "?")
    except Exception:  # noqa: BLE001
        args.fla, fla_version = False, None
    import triton
    import transformers
    res = dict(meta=dict(card=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                         transformers=transformers.__version__, fla=fla_version, date=time.strftime("%Y-%m-%d")))
    print(json.dumps(res["meta"]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    for sec in args.sections.split(","):
        {"correct": section_correct, "speed": section_speed, "profile": section_profile, "first_call": section_first_call}[sec](args, res)
        with open(os.path.join(args.out, "check_delta_gpu.json"), "w") as fh:
            json.dump(res, fh, indent=1)
    bad = [r for r in res.get("correct", []) if r["impl"] == "ours" and (not r["finite"] or max(
        v for n, v in r.items() if n in ("o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0")) > (
        1e-2 if r["dtype"] == "bf16" else 1e-4))]
    print(f"correct: {len([r for r in res.get('correct', []) if r['impl'] == 'ours']) - len(bad)} ours cases within "
          f"bf16 <= 1e-2 / fp32 <= 1e-4; failing: {[(r['op'], r['dtype'], r['T']) for r in bad]}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
