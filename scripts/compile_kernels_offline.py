"""Compile every Triton kernel launch of the ops for a GPU target on a machine without a GPU.

Catches compiler crashes (e.g. 'PassManager::run failed') before spending GPU time. Two steps:
  1. record: run the ops through the interpreter on small inputs, recording each launch's argument types,
     constexprs and warps/stages (bf16 runs too: its values are garbage in the interpreter, its types are not);
  2. compile: import the kernels compiled (no interpreter) and triton.compile each launch for the target.
    TRITON_INTERPRET=1 PYTHONPATH=src python3 scripts/compile_kernels_offline.py record /tmp/launches.json \
        [--dtypes bf16,fp32,fp16] [--dims 64,128,256] [--sweep]
    PYTHONPATH=/tmp/t36:src python3 scripts/compile_kernels_offline.py compile /tmp/launches.json [--arch 90]
"""
import inspect
import json
import os
import sys
import time

KERNELS = ["chunk_state_kernel", "chunk_onepass_kernel", "chunk_out_kernel", "chunk_vector_A_kernel", "chunk_dv_kernel",
           "chunk_dqk_kernel",
           "chunk_vector_dA_kernel", "chunk_vector_intra_bwd_kernel", "recurrent_kernel", "gate_grad_kernel",
           "local_cumsum_kernel"]
PTR = {"torch.float32": "*fp32", "torch.bfloat16": "*bf16", "torch.float16": "*fp16", "torch.int64": "*i64",
       "torch.int32": "*i32"}


def record(path, overrides_list, dtypes=("bf16", "fp32", "fp16"), dims=(64, 128, 256)):
    import torch
    import torch.nn.functional as F
    from linattn_models import ops
    from linattn_models.ops.dispatch import triton_ops
    mod = triton_ops()
    seen = {}

    class Rec:
        def __init__(self, name, k):
            self.name, self.k = name, k

        def __getitem__(self, grid):
            def launch(*args, **kw):
                params = list(inspect.signature(self.k.fn).parameters.values())
                sig, consts = {}, {}
                for p, a in zip(params, args):
                    if "constexpr" in str(p.annotation):
                        consts[p.name] = a
                    elif isinstance(a, torch.Tensor):
                        sig[p.name] = PTR[str(a.dtype)]
                    elif isinstance(a, bool):
                        sig[p.name] = "i1"
                    elif isinstance(a, int):
                        sig[p.name] = "i32"
                    else:
                        sig[p.name] = "fp32"
                key = json.dumps([self.name, sig, consts, kw], sort_keys=True, default=str)
                seen[key] = 1
                return self.k[grid](*args, **kw)
            return launch

    for n in KERNELS:
        setattr(mod, n, Rec(n, getattr(mod, n)))
    fns = {"linear": ops.linear_attention, "retention": ops.retention, "simple_gla": ops.simple_gla,
           "gla": ops.gated_linear_attention}
    for ov in overrides_list:
        mod.OVERRIDES.clear()
        mod.OVERRIDES.update(ov)
        for dtype in [{"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[d] for d in dtypes]:
            for D in dims:
                for varlen in (False, True):
                    for mode in ("chunk", "recurrent"):
                        for fam, f in fns.items():
                            T = 20 if varlen else 9
                            q, k, v = (torch.randn(1, T, 2, D, dtype=dtype, requires_grad=True) for _ in range(3))
                            g = None
                            if fam == "simple_gla":
                                g = F.logsigmoid(torch.randn(1, T, 2)).to(dtype).requires_grad_(True)
                            elif fam == "gla":
                                g = F.logsigmoid(torch.randn(1, T, 2, D)).to(dtype).requires_grad_(True)
                            cu = torch.tensor([0, 5, T]) if varlen else None
                            N = 2 if varlen else 1
                            h0 = torch.randn(N, 2, D, D, requires_grad=True)
                            args = (q, k, v) if g is None else (q, k, v, g)
                            o, s = f(*args, initial_state=h0, output_final_state=True, cu_seqlens=cu, mode=mode,
                                     backend="triton")
                            (o.float().sum() + s.sum()).backward()
    mod.OVERRIDES.clear()
    json.dump([json.loads(k) for k in seen], open(path, "w"), indent=0)
    print(f"recorded {len(seen)} distinct launches")


def compile_all(path, arch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from linattn_models.ops.triton import chunk_bwd, chunk_fwd, common, recurrent, states
    mods = [chunk_bwd, chunk_fwd, common, recurrent, states]
    launches = json.load(open(path))
    print(f"triton {triton.__version__}, target sm_{arch}, {len(launches)} launches")
    bad = 0
    for name, sig, consts, kw in launches:
        fn = next(getattr(m, name) for m in mods if hasattr(m, name))
        params = list(inspect.signature(fn.fn).parameters)
        full_sig = {p: sig.get(p, "constexpr") for p in params}
        attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if sig.get(p, "").startswith("*")}
        try:
            try:
                src = ASTSource(fn=fn, signature=full_sig, constexprs={(params.index(k),): v for k, v in consts.items()},
                                attrs=attrs)
            except Exception:
                src = ASTSource(fn=fn, signature=full_sig, constexprs=consts)
            t0 = time.time()
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(kw))
            md = k.metadata
            print(f"ok   {time.time() - t0:5.2f}s {name} {kw} smem={getattr(md, 'shared', '?')} {consts}")
        except Exception as e:  # noqa: BLE001
            bad += 1
            print(f"FAIL {name} {kw} {consts} {sig}: {str(e).splitlines()[-1] if str(e) else repr(e)}")
    print(f"{bad} failures")
    return bad


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    if sys.argv[1] == "record":
        ovs = [{}, {"onepass_min_programs": 0, "onepass_min_programs_scalar": 0}]  # the one-pass forward too
        if "--sweep" in sys.argv:
            sys.path.insert(0, os.path.dirname(__file__))
            ovs = [{}, {"num_warps": 2}, {"num_warps": 8}, {"num_stages": 1, "BK_out": 64}]
        dtypes = sys.argv[sys.argv.index("--dtypes") + 1].split(",") if "--dtypes" in sys.argv else ("bf16", "fp32", "fp16")
        dims = [int(x) for x in sys.argv[sys.argv.index("--dims") + 1].split(",")] if "--dims" in sys.argv else (64, 128, 256)
        record(sys.argv[2], ovs, dtypes, dims)
    else:
        arch = int(sys.argv[sys.argv.index("--arch") + 1]) if "--arch" in sys.argv else 90
        sys.exit(1 if compile_all(sys.argv[2], arch) else 0)
