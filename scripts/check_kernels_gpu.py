"""GPU check of the Triton kernels (ops/triton/): correctness vs the float64 reference and vs fla 0.6.0, a sweep of
block sizes/warps (Triton 3.4-3.7.0 miscompiles some Hopper backward patterns: docs/gpu.md), speed vs fla, first call.

    PYTHONPATH=src python3 scripts/check_kernels_gpu.py --out $OUT              # everything (fla if importable)
    PYTHONPATH=src python3 scripts/check_kernels_gpu.py --sections correct,sweep
    PYTHONPATH=src python3 scripts/check_kernels_gpu.py --sections long     # T=64K fwd+bwd; 1M tokens carried

Sections (default first_call,correct,sweep,timing; 'long' on request, it takes minutes):
first_call (fresh processes, cold Triton cache), correct (shapes incl. K != V, varlen, recurrent, decode),
sweep (block sizes/warps), timing (vs fla), long (64K vs float64; a 1M-token state carried in uneven pieces).

Relative error ‖x − ref‖/‖ref‖ of o, final state, dq, dk, dv, dg, dh0 (a random loss on o and the final state):
fp32 ≤ 1e-4 (ieee dots), tf32 ≤ 5e-3, bf16 ≤ 1e-2; never NaN. Outputs are NaN-poisoned (LINATTN_TRITON_POISON=1)
in the correctness sections. The reference is ops.reference.run_torch in float64 on the same (rounded) inputs.
Prints a short table last; writes check_kernels_gpu.json to --out.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

# A fresh Triton cache, shared with the first-call subprocesses (which run first, so they start cold).
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton_cache_"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from linattn_models import ops  # noqa: E402
from linattn_models.check import random_op_inputs  # noqa: E402
from linattn_models.ops.reference import run_torch  # noqa: E402

FAMILIES = ["linear_attention", "retention", "simple_gla", "gated_linear_attention"]
TOL = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 1e-2, "fp16": 1e-2}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULTS = {"correct": [], "sweep": [], "timing": [], "first_call": [], "long": []}
DEVICE = "cuda"
TINY = False  # --tiny: CPU dry run of the script itself (TRITON_INTERPRET=1), shapes shrunk
T0 = time.time()


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def log(*a):
    print(*a, flush=True)


def kernels():
    from linattn_models.ops.dispatch import triton_ops
    return triton_ops()


def make_inputs(family, B, T, H, K, V, strength=1.0, N=None, seed=0, device=None):
    device = device or DEVICE
    gen = torch.Generator(device=device).manual_seed(seed)
    return random_op_inputs(family, B, T, H, K, V, N=N, gate_offset=2.0, strength=strength, generator=gen,
                            dtype=torch.float32, device=device)


def ours_fn(family):
    f = {"linear_attention": ops.linear_attention, "retention": ops.retention, "simple_gla": ops.simple_gla,
         "gated_linear_attention": ops.gated_linear_attention}[family]
    if family in ("linear_attention", "retention"):
        return lambda q, k, v, g, **kw: f(q, k, v, **kw)
    return lambda q, k, v, g, **kw: f(q, k, v, g, **kw)


def fla_fn(family):
    if family == "linear_attention":
        from fla.ops.linear_attn import chunk_linear_attn
        return lambda q, k, v, g, **kw: chunk_linear_attn(q, k, v, normalize=False, **kw)
    if family == "retention":
        from fla.ops.retention import chunk_retention
        return lambda q, k, v, g, **kw: chunk_retention(q, k, v, **kw)
    if family == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla
        return lambda q, k, v, g, **kw: chunk_simple_gla(q, k, v, g=g, **kw)
    from fla.ops.gla import chunk_gla
    return lambda q, k, v, g, **kw: chunk_gla(q, k, v, g=g, **kw)


def reference_fn(family):
    def f(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, **_):
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        if family == "retention":
            g = ops.retention_log_decays(q.shape[2], q.device).double().view(1, 1, -1).expand(q.shape[:3])
        return run_torch(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, "chunk")
    return f


def forward_backward(fn, q, k, v, g, h0, cu=None, mode=None, seed=1):
    """o, final state and the gradients of a random loss of both."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in (q, k, v, g, h0)]
    qq, kk, vv, gg, hh = leaves
    kw = dict(initial_state=hh, output_final_state=True, cu_seqlens=cu)
    if mode is not None:
        kw["mode"] = mode
    o, s = fn(qq, kk, vv, gg, **kw)
    gen = torch.Generator(device=q.device).manual_seed(seed)
    wo = torch.randn(o.shape, generator=gen, device=q.device, dtype=torch.float32)
    ws = torch.randn(s.shape, generator=gen, device=q.device, dtype=torch.float32)
    ct = torch.float64 if o.dtype == torch.float64 else torch.float32
    ((o.to(ct) * wo.to(ct)).sum() + (s.to(ct) * ws.to(ct)).sum()).backward()
    out = {"o": o.detach(), "ht": s.detach(), "dq": qq.grad, "dk": kk.grad, "dv": vv.grad}
    if g is not None and g.ndim > 1:
        out["dg"] = gg.grad
    out["dh0"] = hh.grad
    return out


def rel_errors(got, ref, dg_scale=None):
    errs = {}
    for name, r in ref.items():
        x = got[name].double()
        if not torch.isfinite(x).all():
            errs[name] = float("nan")
            continue
        den = r.norm()
        if name == "dg" and dg_scale is not None:
            den = torch.maximum(den, dg_scale)
        errs[name] = ((x - r).norm() / den.clamp_min(1e-30)).item()
    return errs


def check_case(tag, family, dtype_name, B, T, H, K, V, strength=1.0, lens=None, mode="chunk", fla=False, seed=0,
               kernel_config=None):
    """Ours (and fla) vs the float64 reference on the same inputs; returns the row. kernel_config: block-size /
    warps overrides for our kernels (the ops' kernel_config argument)."""
    dtype = DTYPES[dtype_name]
    if TINY and dtype == torch.bfloat16:  # bf16 is garbage in the interpreter
        dtype = torch.float16
    if TINY:
        B, T, H, K, V = min(B, 2), max(1, min(T, 70)), 2, min(K, 32), min(V, 32 * max(1, V // K))
        lens = [min(n, 40) for n in lens] if lens else None
    N = len(lens) if lens else None
    cu = torch.tensor([0] + list(lens), device=DEVICE).cumsum(0) if lens else None
    if lens:
        B, T = 1, sum(lens)
    q, k, v, g, h0 = make_inputs(family, B, T, H, K, V, strength, N, seed)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    if g is not None:
        g = g.to(dtype)
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    t = time.time()
    got = forward_backward(lambda *a, **kw: ours_fn(family)(*a, backend="triton", kernel_config=kernel_config, **kw),
                           q, k, v, g, h0, cu, mode)
    sync()
    t_ours = time.time() - t
    d = lambda x: None if x is None else x.double()  # noqa: E731
    ref = forward_backward(reference_fn(family), d(q), d(k), d(v), d(g), d(h0), cu)
    dg_scale = None
    if strength > 2 and "dg" in ref:  # dg's summands cancel under strong gates: see tests/ops/test_triton_kernels.py
        qdq, kdk = q.double() * ref["dq"], k.double() * ref["dk"]
        if g.ndim == 3:
            qdq, kdk = qdq.sum(-1), kdk.sum(-1)
        dg_scale = qdq.norm() + kdk.norm()
    errs = rel_errors(got, ref, dg_scale)
    worst = max(errs.values()) if errs else 0.0
    ok = all(e == e for e in errs.values()) and worst <= TOL[dtype_name]
    row = dict(tag=tag, family=family, dtype=dtype_name, B=B, T=T, H=H, K=K, V=V, mode=mode, lens=lens,
               strength=strength, errors=errs, max_err=worst, ok=ok, seconds=round(t_ours, 2))
    if fla:
        try:
            f = fla_fn(family)
            got_fla = forward_backward(f, q, k, v, g, h0, cu)
            row["fla_vs_ref"] = rel_errors(got_fla, {n: r for n, r in ref.items() if got_fla.get(n) is not None})
            row["ours_vs_fla"] = rel_errors(got, {n: x.double() for n, x in got_fla.items()
                                                  if n in got and x is not None})
        except Exception as e:  # noqa: BLE001
            row["fla_error"] = repr(e)[:300]
    torch.backends.cuda.matmul.allow_tf32 = False
    log(f"[{time.time() - T0:6.0f}s] {'ok ' if ok else 'BAD'} {tag:10s} {family:10s} {dtype_name} B={B} T={T} "
        f"H={H} K={K} V={V} {mode} max_err={worst:.2e} " + " ".join(f"{n}={e:.1e}" for n, e in errs.items())
        + (f" | fla_vs_ref max={max(row['fla_vs_ref'].values()):.1e} ours_vs_fla max="
           f"{max(row['ours_vs_fla'].values()):.1e}" if "fla_vs_ref" in row else "")
        + (f" | fla failed: {row['fla_error']}" if "fla_error" in row else ""))
    del got, ref
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return row


def section_correct(args):
    mod = kernels()
    mod.alloc.POISON = True
    cases = []
    for fam in args.families:
        cases += [
            ("main", fam, "bf16", 4, 4096, 16, 128, 128, 1.0, None, "chunk"),
            ("fp32", fam, "fp32", 2, 2048, 16, 64, 64, 1.0, None, "chunk"),
            ("tf32", fam, "tf32", 2, 2048, 16, 128, 128, 1.0, None, "chunk"),
            ("long", fam, "bf16", 1, 16384, 16, 128, 128, 1.0, None, "chunk"),
            ("d64", fam, "bf16", 4, 2048, 16, 64, 64, 1.0, None, "chunk"),
            ("d256", fam, "bf16", 2, 2048, 16, 256, 256, 1.0, None, "chunk"),
            ("varlen", fam, "bf16", 1, 0, 16, 128, 128, 1.0, [1, 777, 64, 3000, 255], "chunk"),
            ("recurrent", fam, "bf16", 4, 64, 16, 128, 128, 1.0, None, "recurrent"),
            ("decode", fam, "bf16", 8, 1, 16, 128, 128, 1.0, None, "recurrent"),
            ("fp16", fam, "fp16", 2, 2048, 16, 128, 128, 1.0, None, "chunk"),
            # K != V, as in the RetNet/GLA configs (head_v_dim = 2 * head_k_dim)
            ("kv", fam, "bf16", 2, 2048, 8, 128, 256, 1.0, None, "chunk"),
            ("kv_fp32", fam, "fp32", 1, 1024, 4, 128, 256, 1.0, None, "chunk"),
            ("kv_rec", fam, "bf16", 2, 300, 8, 128, 256, 1.0, None, "recurrent"),
        ]
        if fam in ("simple_gla", "gated_linear_attention"):
            cases.append(("strong", fam, "bf16", 1, 2048, 16, 128, 128, 8.0, None, "chunk"))
    for c in cases:
        if args.tags and c[0] not in args.tags:
            continue
        if time.time() - T0 > args.budget_s:
            log("budget exhausted: skipping the rest of 'correct'")
            break
        tag, fam, dt, B, T, H, K, V, s, lens, mode = c
        try:
            RESULTS["correct"].append(check_case(tag, fam, dt, B, T, H, K, V, s, lens, mode,
                                                 fla=args.fla and tag == "main" and fam in args.fla_families,
                                                 kernel_config=args.kernel_config))
        except Exception as e:  # noqa: BLE001
            log(f"ERROR {c}: {e!r}"[:500])
            RESULTS["correct"].append(dict(tag=tag, family=fam, dtype=dt, ok=False, error=repr(e)[:500]))
    mod.alloc.POISON = False


SWEEP = [  # the shipped default is checked by 'correct'
    {"num_warps": 2},
    {"num_warps": 8},
    {"num_stages": 1, "BK_out": 64},  # what a device with < 160 KB of shared memory gets
    {"num_stages": 3},
    {"BK_state": 32, "BV_state": 32, "BK_dv": 32, "BV_dv": 32, "BK_dqk": 32, "BV_dqk": 32, "BK_out": 32,
     "BV_out": 32, "BK_A": 32, "BK_intra": 32, "BV_dA": 32},
    {"BK_state": 128, "BK_dv": 128, "BK_dqk": 128, "BV_dqk": 128, "BK_out": 128, "BV_out": 128,
     "BK_A": 128, "BK_intra": 128, "BV_dA": 128},
]


def section_sweep(args):
    mod = kernels()
    mod.alloc.POISON = True
    for i, ov in enumerate(SWEEP):
        if args.sweep_configs is not None and i not in args.sweep_configs:
            continue
        for fam in args.sweep_families:
            for D in args.sweep_D:
                if time.time() - T0 > args.budget_s:
                    log("budget exhausted: skipping the rest of 'sweep'")
                    mod.alloc.POISON = False
                    return
                try:
                    row = check_case("sweep", fam, "bf16", 2, 1024, 16, D, D,
                                     kernel_config={**(args.kernel_config or {}), **ov})
                    row["overrides"] = ov
                except Exception as e:  # noqa: BLE001
                    row = dict(tag="sweep", family=fam, D=D, overrides=ov, ok=False, error=repr(e)[:500])
                    log(f"ERROR sweep {fam} D={D} {ov}: {e!r}"[:500])
                log(f"   sweep overrides={ov}")
                RESULTS["sweep"].append(row)
    mod.alloc.POISON = False


def section_long(args):
    """Long sequences (issue #7): fwd+bwd at T=--long-T (64K) vs the float64 reference, bf16 and fp32; then a
    --carry-T (1M) token forward run in --carry-pieces pieces, each starting from the previous piece's final
    state, vs the same tokens in one call and vs the float64 reference (final state and last piece's output).
    Weak gates (strength 0.05: decay e^-0.005 per token and key) so that the state remembers thousands of tokens."""
    mod = kernels()
    mod.alloc.POISON = True
    for fam in args.families:
        for dt in ("bf16", "fp32"):
            if time.time() - T0 > args.budget_s:
                log("budget exhausted: skipping the rest of 'long'")
                return
            try:
                row = check_case("long64k", fam, dt, 1, args.long_T, 4, 128, 128, 0.05)
            except Exception as e:  # noqa: BLE001
                row = dict(tag="long64k", family=fam, dtype=dt, ok=False, error=repr(e)[:500])
                log(f"ERROR long {fam} {dt}: {e!r}"[:500])
            RESULTS["long"].append(row)
    mod.alloc.POISON = False
    for fam in args.families:
        if time.time() - T0 > args.budget_s:
            log("budget exhausted: skipping the rest of 'long' (carry)")
            return
        try:
            RESULTS["long"].append(carry_case(fam, args.carry_T, args.carry_pieces))
        except Exception as e:  # noqa: BLE001
            RESULTS["long"].append(dict(tag="carry", family=fam, ok=False, error=repr(e)[:500]))
            log(f"ERROR carry {fam}: {e!r}"[:500])


@torch.no_grad()
def carry_case(fam, T, pieces, H=4, D=128):
    if TINY:
        T, pieces, H, D = 256, 4, 2, 32
    q, k, v, g, _ = make_inputs(fam, 1, T, H, D, D, strength=0.05, seed=7)
    low = torch.float16 if TINY else torch.bfloat16  # the interpreter computes bf16 wrongly
    q, k, v = (x.to(low) for x in (q, k, v))
    g = None if g is None else g.float()
    f = ours_fn(fam)
    t = time.time()
    o_one, s_one = f(q, k, v, g, output_final_state=True, backend="triton")
    sync()
    t_one = time.time() - t
    # uneven pieces, most not a multiple of the chunk size, so the carry crosses chunks mid-way
    L = T // pieces
    cuts = [0] + [i * L + (i * 37) % 64 for i in range(1, pieces)] + [T]
    bounds = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    s, o_last = None, None
    for sl in bounds:
        o_last, s = f(q[:, sl], k[:, sl], v[:, sl], None if g is None else g[:, sl], initial_state=s,
                      output_final_state=True, backend="triton")
    sync()
    # the float64 reference, itself carried piece by piece (a 1M-token float64 run at once does not fit)
    d = lambda x: None if x is None else x.double()  # noqa: E731
    ref_s, num, den = None, 0.0, 0.0
    for sl in bounds:
        ref_o, ref_s = reference_fn(fam)(d(q[:, sl]), d(k[:, sl]), d(v[:, sl]), d(None if g is None else g[:, sl]),
                                         initial_state=ref_s, output_final_state=True)
        num += (o_one[:, sl].double() - ref_o).pow(2).sum().item()
        den += ref_o.pow(2).sum().item()
    rel = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    errs = {"state_pieces_vs_one": rel(s, s_one), "o_last_pieces_vs_one": rel(o_last, o_one[:, bounds[-1]]),
            "state_vs_ref": rel(s, ref_s), "o_last_vs_ref": rel(o_last, ref_o), "o_one_vs_ref": (num / den) ** 0.5}
    finite = bool(torch.isfinite(s).all() and torch.isfinite(o_one).all())
    del ref_o, o_one, q, k, v, g
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    ok = finite and max(errs.values()) <= TOL["bf16"]
    log(f"[{time.time() - T0:6.0f}s] {'ok ' if ok else 'BAD'} carry {fam:10s} T={T} in {pieces} pieces, "
        f"one call {t_one:.2f} s: " + " ".join(f"{n}={e:.1e}" for n, e in errs.items())
        + f" |state|max={s.abs().max().item():.3g}")
    return dict(tag="carry", family=fam, dtype="bf16", T=T, pieces=pieces, H=H, K=D, V=D, errors=errs,
                max_err=max(errs.values()), ok=ok, seconds=round(t_one, 2))


def bench(fn, q, k, v, g, backward):
    if not backward:
        def run():
            with torch.no_grad():
                fn(q, k, v, g)
        return triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, g)]
    do = torch.randn_like(v)

    def run():
        o = fn(*leaves)[0]
        o.backward(do)
    return triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median",
                                   grad_to_none=[t for t in leaves if t is not None])


def section_timing(args):
    """Ours for every family first, then fla (its first call autotunes for a minute or more per op)."""
    rows = {}
    jobs = [(T, fam, "ours") for T in args.timing_T for fam in FAMILIES]
    if args.fla:
        jobs += [(T, fam, "fla") for T in args.timing_T for fam in args.fla_families]
    for T, fam, impl in jobs:
        if time.time() - T0 > args.budget_s:
            log(f"budget exhausted: skipping timing of {impl} {fam} T={T} and later")
            break
        B, H, D = (1, 2, 32) if TINY else (4, 16, 128)
        q, k, v, g, _ = make_inputs(fam, B, T, H, D, D, seed=3)
        q, k, v = (t.bfloat16() for t in (q, k, v))
        g = None if g is None else g.bfloat16()
        row = rows.setdefault((T, fam), dict(family=fam, B=B, T=T, H=H, D=D, dtype="bf16"))
        if impl == "ours":
            f0 = ours_fn(fam)
            fn = lambda *a: f0(*a, backend="triton", kernel_config=args.kernel_config)  # noqa: E731
        else:
            fn = fla_fn(fam)
        try:
            row[f"{impl}_fwd_ms"] = bench(fn, q, k, v, g, False)
            row[f"{impl}_fwdbwd_ms"] = bench(fn, q, k, v, g, True)
        except Exception as e:  # noqa: BLE001
            row[f"{impl}_error"] = repr(e)[:300]
        if "fla_fwdbwd_ms" in row and "ours_fwdbwd_ms" in row:
            row["ratio_fwd"] = row["ours_fwd_ms"] / row["fla_fwd_ms"]
            row["ratio_fwdbwd"] = row["ours_fwdbwd_ms"] / row["fla_fwdbwd_ms"]
        log(f"[{time.time() - T0:6.0f}s] timing {impl} {row}")
        del q, k, v, g
        torch.cuda.empty_cache()
    RESULTS["timing"] = list(rows.values())


FIRST_CALL = r"""
import sys, time, torch, torch.nn.functional as F
t0 = time.time()
from linattn_models import ops
fam = sys.argv[1]
B, T, H, D = 4, 4096, 16, 128
q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
g = None
if fam == "simple_gla":
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda") + 2).bfloat16().requires_grad_(True)
if fam == "gated_linear_attention":
    g = F.logsigmoid(torch.randn(B, T, H, D, device="cuda") + 2).bfloat16().requires_grad_(True)
torch.cuda.synchronize()
t1 = time.time()
f = {"linear_attention": ops.linear_attention, "retention": ops.retention, "simple_gla": ops.simple_gla,
     "gated_linear_attention": ops.gated_linear_attention}[fam]
o = (f(q, k, v, backend="triton") if g is None else f(q, k, v, g, backend="triton"))[0]
torch.cuda.synchronize()
t2 = time.time()
o.backward(torch.randn_like(o))
torch.cuda.synchronize()
t3 = time.time()
print(f"FIRSTCALL {fam} fwd_s={t2 - t1:.2f} bwd_s={t3 - t2:.2f} total_s={t3 - t1:.2f} import_s={t1 - t0:.2f}")
"""


def section_first_call(args):
    for fam in args.first_call_families:
        env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="triton_cold_"))
        t = time.time()
        p = subprocess.run([sys.executable, "-c", FIRST_CALL, fam], env=env, capture_output=True, text=True,
                           timeout=300)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("FIRSTCALL")]
        row = dict(family=fam, wall_s=round(time.time() - t, 2), rc=p.returncode)
        if line:
            for kv in line[0].split()[2:]:
                key, val = kv.split("=")
                row[key] = float(val)
        else:
            row["stderr"] = p.stderr[-800:]
        log(f"[{time.time() - T0:6.0f}s] first call {row}")
        RESULTS["first_call"].append(row)


def versions():
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", python=sys.version.split()[0])
    try:
        import importlib.metadata as md
        info["fla"] = md.version("fla-core")
    except Exception:  # noqa: BLE001
        info["fla"] = None
    return info


def summary():
    log("\n==== summary ====")
    log(json.dumps(RESULTS["meta"]))
    rows = RESULTS["correct"] + RESULTS["sweep"] + RESULTS["long"]
    bad = [r for r in rows if not r.get("ok")]
    n = len(rows)
    log(f"correctness: {n - len(bad)}/{n} cases within tolerance")
    for r in bad:
        log(f"  FAIL {r.get('tag')} {r.get('family')} {r.get('dtype')} T={r.get('T')} K={r.get('K')} "
            f"{r.get('overrides', '')} {r.get('errors', r.get('error'))}")
    worst = {}
    for r in RESULTS["correct"]:
        if "max_err" in r:
            key = (r["dtype"],)
            worst[key] = max(worst.get(key, 0.0), r["max_err"])
    log("worst relative error by dtype: " + ", ".join(f"{k[0]}={v:.2e}" for k, v in sorted(worst.items())))
    for r in RESULTS["correct"]:
        if "ours_vs_fla" in r:
            log(f"  vs fla {r['family']:10s} T={r['T']}: fla_vs_ref max={max(r['fla_vs_ref'].values()):.2e} "
                f"ours_vs_ref max={r['max_err']:.2e} ours_vs_fla max={max(r['ours_vs_fla'].values()):.2e}")
    for r in RESULTS["first_call"]:
        log(f"  first call {r['family']:10s} fwd+bwd {r.get('total_s', float('nan')):.1f} s "
            f"(fwd {r.get('fwd_s', float('nan')):.1f}, bwd {r.get('bwd_s', float('nan')):.1f})")
    if RESULTS["timing"]:
        log(f"{'op':10s} {'T':>6s} {'ours fwd':>9s} {'fla fwd':>8s} {'ratio':>6s} {'ours f+b':>9s} {'fla f+b':>8s} "
            f"{'ratio':>6s}   (ms, bf16, B=4 H=16 D=128, median)")
        for r in RESULTS["timing"]:
            f = lambda key: f"{r[key]:.3f}" if key in r else "-"  # noqa: E731
            log(f"{r['family']:10s} {r['T']:6d} {f('ours_fwd_ms'):>9s} {f('fla_fwd_ms'):>8s} "
                f"{f('ratio_fwd'):>6s} {f('ours_fwdbwd_ms'):>9s} {f('fla_fwdbwd_ms'):>8s} {f('ratio_fwdbwd'):>6s}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="first_call,correct,sweep,timing")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget-s", type=float, default=520.0, help="stop starting new cases after this many s")
    ap.add_argument("--timing-T", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--fla-families", nargs="+", default=["linear_attention", "retention", "gated_linear_attention"],
                    help="fla's chunk_simple_gla autotunes for minutes on its first backward (docs/gpu.md): off by default")
    ap.add_argument("--sweep-families", nargs="+", default=["linear_attention", "simple_gla", "gated_linear_attention"])
    ap.add_argument("--sweep-D", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--families", nargs="+", default=FAMILIES, help="families of the 'correct' section")
    ap.add_argument("--first-call-families", nargs="+", default=FAMILIES)
    ap.add_argument("--tags", nargs="+", default=None, help="cases of the 'correct' section (default: all)")
    ap.add_argument("--sweep-configs", type=int, nargs="+", default=None, help="indices into SWEEP")
    ap.add_argument("--long-T", type=int, default=65536, help="sequence length of the 'long' section")
    ap.add_argument("--carry-T", type=int, default=1 << 20, help="tokens carried in pieces ('long' section)")
    ap.add_argument("--carry-pieces", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="CPU dry run through the interpreter, tiny shapes")
    ap.add_argument("--overrides", default=None, help='kernel config overrides (JSON) for every section but '
                    '"sweep", e.g. \'{"onepass_min_programs": 0}\' forces the one-pass forward')
    args = ap.parse_args()
    global DEVICE, TINY
    if args.tiny:
        DEVICE, TINY = "cpu", True
        args.timing_T = [64]
    try:
        import fla.ops  # noqa: F401
        args.fla = True
    except Exception as e:  # noqa: BLE001
        log(f"fla not importable ({e!r}): ours vs reference only")
        args.fla = False
    RESULTS["meta"] = versions()
    args.kernel_config = json.loads(args.overrides) if args.overrides else None
    if args.kernel_config:
        RESULTS["meta"]["overrides"] = args.kernel_config
    log(json.dumps(RESULTS["meta"]))
    secs = args.sections.split(",")
    try:
        fns = {"first_call": section_first_call, "correct": section_correct, "sweep": section_sweep,
               "timing": section_timing, "long": section_long}
        for name in secs:  # in the order given
            fns[name](args)
    finally:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "check_kernels_gpu.json"), "w") as fh:
            json.dump(RESULTS, fh, indent=1, default=str)
        summary()


if __name__ == "__main__":
    main()
