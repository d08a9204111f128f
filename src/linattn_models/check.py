"""Self-check: run the ops on this machine's device and compare them with the float64 reference.

    python -m linattn_models.check                  # the default backend on the best device here
    python -m linattn_models.check --backend triton # on CPU this runs the kernels through Triton's interpreter

Run it after installing or upgrading torch/triton: a Triton version that miscompiles a kernel is caught here,
not found weeks later in a training curve. Prints PASS/FAIL per op, dtype and mode; exits 1 on any FAIL.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

FAMILIES = ("linear_attention", "retention", "simple_gla", "gated_linear_attention", "delta_rule", "gated_delta_rule",
            "kda")
# The delta rule ops take a step size beta [B, T, H] after the gate, and run with q/k L2 normalisation here;
# "kda" is gated_delta_rule with a per-key-dimension gate g [B, T, H, K].
DELTA_FAMILIES = ("delta_rule", "gated_delta_rule", "kda")
OP_OF_FAMILY = {"kda": "gated_delta_rule"}
# ||out - ref|| / ||ref|| bounds: fp32 may run its matmuls in tf32 on a GPU.
TOLERANCE = {torch.float32: 5e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def random_op_inputs(family, B, T, H, K, V, N=None, gate_offset=0.0, strength=1.0, generator=None,
                     dtype=torch.float64, device=None):
    """Random inputs of an op: (q, k [B, T, H, K], v [B, T, H, V], g, h0 [N or B, H, K, V]); standard normal
    draws in `dtype` from `generator` (on its device, else `device`), then moved to `device`. g: None for linear
    attention, retention and the delta rule, log decays logsigmoid(randn + gate_offset) · strength of shape
    [B, T, H] (simple GLA, gated delta rule) or [B, T, H, K] (GLA, "gla" or "gated_linear_attention"; "kda").
    The one builder of the tests, the self-check and the GPU scripts, which differ only in offsets, strengths,
    dtypes and devices."""
    where = generator.device if generator is not None else device

    def r(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype, device=where).to(device or where)
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    g = None
    if family in ("simple_gla", "gated_delta_rule"):
        g = F.logsigmoid(r(B, T, H) + gate_offset) * strength
    elif family in ("gla", "gated_linear_attention", "kda"):
        g = F.logsigmoid(r(B, T, H, K) + gate_offset) * strength
    return q, k, v, g, r(N if N is not None else B, H, K, V)


def _inputs(family, device, T, H, K, V, cu_seqlens, seed):
    N = 2 if cu_seqlens is None else len(cu_seqlens) - 1
    B = 2 if cu_seqlens is None else 1
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v, g, h0 = random_op_inputs(family, B, T, H, K, V, N=N, gate_offset=2.0, generator=gen, device=device)
    x = {"q": q, "k": k, "v": v, "initial_state": h0}
    if g is not None:
        x["g"] = g
    if family in DELTA_FAMILIES:
        x["beta"] = torch.sigmoid(torch.randn(q.shape[:3], generator=gen, dtype=torch.float64)).to(device)
    return x


def _run(family, x, dtype, mode, backend, cu):
    """Output, final state and gradients of a fixed random loss, with x cast to dtype (states stay fp32/fp64)."""
    from . import ops
    from .ops.reference import compute_dtype
    state_dtype = compute_dtype(dtype)
    leaves = {n: t.to(state_dtype if n == "initial_state" else dtype).detach().clone().requires_grad_(True)
              for n, t in x.items()}
    args = [leaves[n] for n in ("q", "k", "v", "g", "beta") if n in leaves]
    kw = dict(use_qk_l2norm=True) if family in DELTA_FAMILIES else {}
    o, s = getattr(ops, OP_OF_FAMILY.get(family, family))(*args, initial_state=leaves["initial_state"], output_final_state=True,
                                cu_seqlens=cu, mode=mode, backend=backend, **kw)
    gen = torch.Generator(device="cpu").manual_seed(0)
    wo = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)
    ws = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(o.device)
    ((o.double() * wo).sum() + (s.double() * ws).sum()).backward()
    out = {"o": o, "final_state": s}
    out.update({f"d{n}": t.grad for n, t in leaves.items()})
    return out


def check(device=None, backend=None, T=300, H=4, K=64, V=64, dtypes=None, verbose=True):
    """Run every op against the float64 torch reference; returns a list of (name, max rel error, passed)."""
    from .ops import default_device
    device = torch.device(device or default_device())
    if dtypes is None:
        dtypes = [torch.float32, torch.bfloat16] if device.type != "cpu" else [torch.float32, torch.float16]
    cu = torch.tensor([0, 1, T // 3, T], device=device)
    results = []
    for family in FAMILIES:
        for varlen in (False, True):
            c = cu if varlen else None
            x = _inputs(family, device, T, H, K, V, c, seed=len(results) + 1)
            ref = _run(family, x, torch.float64, "recurrent", "torch", c)
            for dtype in dtypes:
                for mode in ("chunk", "recurrent"):
                    got = _run(family, x, dtype, mode, backend, c)
                    errs = {}
                    for n, r in ref.items():
                        g = got[n].double()
                        errs[n] = float("nan") if not torch.isfinite(g).all() else \
                            ((g - r).norm() / r.norm().clamp_min(1e-30)).item()
                    worst = max(errs.values(), key=lambda e: float("inf") if e != e else e)
                    ok = worst == worst and worst <= TOLERANCE[dtype]
                    name = f"{family:24s} {str(dtype)[6:]:9s} {mode:9s} {'varlen' if varlen else 'dense':6s}"
                    results.append((name, worst, ok))
                    if verbose:
                        bad = [n for n, e in errs.items() if not (e <= TOLERANCE[dtype])]
                        print(f"{'PASS' if ok else 'FAIL'}  {name} max rel err {worst:.2e}"
                              + (f"  (bad: {', '.join(bad)})" if bad else ""), flush=True)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda, xpu, cpu ... (default: the GPU if there is one)")
    p.add_argument("--backend", default=None, choices=["torch", "triton"], help="default: automatic")
    p.add_argument("--seq-len", type=int, default=300)
    p.add_argument("--head-dim", type=int, default=64)
    a = p.parse_args(argv)
    from .ops import default_device
    device = a.device or default_device()
    if a.backend == "triton" and device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel module is first imported
    from .ops import resolve_backend
    backend = resolve_backend(a.backend, torch.device(device))
    versions = f"torch {torch.__version__}"
    if backend == "triton":
        import triton
        versions += f", triton {triton.__version__}"
    name = torch.cuda.get_device_name() if device.startswith("cuda") else device
    print(f"linattn_models self-check on {name} ({versions}), backend {backend}")
    t0 = time.time()
    results = check(device, a.backend, T=a.seq_len, K=a.head_dim, V=a.head_dim)
    failed = [r for r in results if not r[2]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed ({time.time() - t0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
