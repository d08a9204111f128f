"""The Triton kernels (ops/triton/) against the float64 torch reference: on the test device (conftest's --device),
compiled on a GPU, through Triton's interpreter on CPU.

Forward output, final state and every gradient (dq, dk, dv, dg, dh0; a random loss on both o and the final
state, so dht is exercised) for every gate kind, chunk and recurrent mode, varlen packs with a length-1 sequence,
odd lengths, non-power-of-two head dims with K != V, strong gates, fp32 and fp16. Every output and scratch buffer
of the kernels is NaN-poisoned before the run, so memory a kernel fails to write shows up as NaN.
Relative error ‖x − ref‖ / ‖ref‖: fp32 ≤ 1e-4 (ieee dots: the interpreter's, and on a GPU torch's default of
no tf32), fp16 and bf16 ≤ 1e-2 (the GPU check's tolerances). bf16 runs on a GPU only: the interpreter gives
garbage for bf16. The reference runs in float64 on the same device from the same rounded inputs.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from devices import DEVICE, TOL, gpu_only, low_precision_dtypes
from op_cases import FAMILIES, call, make_inputs

from linattn_models import ops
from linattn_models.ops.dispatch import triton_ops

pytestmark = pytest.mark.usefixtures("poisoned_kernels")


def run(family, backend, q, k, v, g, h0, mode, cu=None, final=True, seed=1, kernel_config=None):
    """o, final state and the gradients of a random loss of both (dq, dk, dv, [dg], [dh0])."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (q, k, v, g, h0)]
    qq, kk, vv, gg, hh = leaves
    extra = {} if kernel_config is None else {"kernel_config": kernel_config}
    o, s = call(family, qq, kk, vv, gg, initial_state=hh, output_final_state=final, cu_seqlens=cu, mode=mode,
                backend=backend, **extra)
    gen = torch.Generator().manual_seed(seed)
    w = lambda t: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)  # noqa: E731
    loss = (o.double() * w(o)).sum()
    if final:
        loss = loss + (s.double() * w(s)).sum()
    loss.backward()
    out = {"o": o, "ht": s, "dq": qq.grad, "dk": kk.grad, "dv": vv.grad}
    if g is not None:
        out["dg"] = gg.grad
    if h0 is not None:
        out["dh0"] = hh.grad
    return {n: t for n, t in out.items() if t is not None}


def check(family, q, k, v, g, h0, mode="chunk", dtype=torch.float32, cu=None, final=True, dg_scale=False,
          kernel_config=None):
    """Kernels in `dtype` vs the float64 reference on the same (rounded) inputs.

    dg_scale: measure dg's error against the size of its summands, ‖q⊙dq‖ + ‖k⊙dk‖, instead of ‖dg‖. dg is a
    reverse cumsum of q⊙dq − k⊙dk (docs/math.md, 'Gate gradient'); under very strong gates the exact dg is ~e^(-30) while the
    summands are O(1) and cancel, so fp32 leaves an absolute error of ~1e-7 of the summands (as in fla).
    """
    q, k, v = (t.to(DEVICE, dtype) for t in (q, k, v))
    g = None if g is None else g.to(DEVICE, dtype)
    h0f = None if h0 is None else h0.to(DEVICE, torch.float32)
    cu_dev = None if cu is None else cu.to(DEVICE)
    got = run(family, "triton", q, k, v, g, h0f, mode, cu_dev, final, kernel_config=kernel_config)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    ref = run(family, "torch", d(q), d(k), d(v), d(g), d(h0f), "chunk", cu_dev, final)  # on the device: fast
    assert got.keys() == ref.keys()
    for name, r in ref.items():
        x = got[name]
        assert x.shape == r.shape, name
        want = torch.float32 if name in ("ht", "dh0") else dtype
        assert x.dtype == want, (name, x.dtype)
        assert torch.isfinite(x).all(), f"{name} has NaN/inf (unwritten memory?)"
        den = r.norm()
        if name == "dg" and dg_scale:
            qdq, kdk = d(q) * ref["dq"], d(k) * ref["dk"]
            if g.ndim == 3:  # scalar gate: the summands are summed over the key dim
                qdq, kdk = qdq.sum(-1), kdk.sum(-1)
            qdq, kdk = qdq.norm(), kdk.norm()
            den = torch.maximum(den, qdq + kdk)
        err = ((x.double() - r).norm() / den.clamp_min(1e-30)).item()
        assert err <= TOL[dtype], f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
@pytest.mark.parametrize("T,K,V", [(100, 24, 48), (63, 48, 20)])
def test_kernels_fp32(family, mode, T, K, V):
    check(family, *make_inputs(family, 2, T, 2, K, V, strength=2.0), mode=mode)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_single_token(family, mode):
    """T = 1 (a decoding step): state in and out."""
    check(family, *make_inputs(family, 3, 1, 2, 32, 16), mode=mode)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_varlen(family, mode):
    """Packed sequences incl. a length-1 one and one of exactly a chunk; chunks never cross a boundary."""
    lens = [37, 1, 64, 29]
    cu = torch.tensor([0] + lens).cumsum(0)
    check(family, *make_inputs(family, 1, sum(lens), 2, 16, 24, strength=2.0, N=len(lens)), mode=mode, cu=cu)


@pytest.mark.parametrize("family", ["simple_gla", "gated_linear_attention"])
@pytest.mark.parametrize("strength", [1e-3, 300.0])
def test_gate_strength(family, strength):
    """Very strong gates: log gate sums reach thousands inside a chunk; nothing may overflow."""
    check(family, *make_inputs(family, 1, 90, 2, 16, 16, strength=strength), dg_scale=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", low_precision_dtypes())
def test_low_precision(family, dtype):
    check(family, *make_inputs(family, 2, 80, 2, 32, 32), dtype=dtype)


@gpu_only("the shipped block sizes at the models' head dims take minutes in the interpreter")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode,varlen", [("chunk", False), ("chunk", True), ("recurrent", False)])
def test_model_head_dims(family, dtype, mode, varlen):
    """D = 128 (K = V) and K = 128, V = 256 (RetNet/GLA heads), T over 9 chunks, a grid of >= 128 programs so
    the one-pass forward runs where it would for a user; varlen packs with a length-1 sequence."""
    if varlen:
        lens = [400, 1, 64, 259]
        cu = torch.tensor([0] + lens).cumsum(0)
        check(family, *make_inputs(family, 1, sum(lens), 8, 128, 256, strength=2.0, N=len(lens)), mode=mode,
              dtype=dtype, cu=cu)
    else:
        check(family, *make_inputs(family, 2, 600, 32, 128, 128, strength=2.0), mode=mode, dtype=dtype)


@pytest.mark.parametrize("family", ["retention", "gated_linear_attention"])
def test_fp16_recurrent_varlen(family):
    lens = [50, 1, 30]
    cu = torch.tensor([0] + lens).cumsum(0)
    check(family, *make_inputs(family, 1, sum(lens), 2, 16, 16, N=len(lens)), mode="recurrent", dtype=torch.float16, cu=cu)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_state(family):
    """No initial state, final state not returned: dht is None and dg has no constant term."""
    q, k, v, g, _ = make_inputs(family, 2, 70, 2, 16, 16)
    check(family, q, k, v, g, None, final=False)


def test_large_head_dim_multiple_blocks():
    """K, V above one 64-wide tile: several K/V blocks in every kernel."""
    check("gated_linear_attention", *make_inputs("gated_linear_attention", 1, 40, 1, 130, 72))
    check("simple_gla", *make_inputs("simple_gla", 1, 40, 1, 130, 72))


def test_non_contiguous_inputs():
    q, k, v, g, h0 = make_inputs("gated_linear_attention", 2, 50, 2, 16, 16)
    tq, tk, tv, tg = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, g))
    assert not tq.is_contiguous()
    check("gated_linear_attention", tq, tk, tv, tg, h0)


def test_poison_is_on():
    mod = triton_ops()
    assert torch.isnan(mod.alloc.new((3,), torch.float32, DEVICE)).all()


def test_empty_and_float64():
    q, k, v, g, h0 = (t.to(DEVICE) for t in make_inputs("gated_linear_attention", 1, 0, 2, 8, 8))
    o, s = ops.gated_linear_attention(q.float(), k.float(), v.float(), g.float(), initial_state=h0.float(),
                                      output_final_state=True, backend="triton")
    assert o.shape == (1, 0, 2, 8) and torch.equal(s, h0.float())
    with pytest.raises(TypeError, match="float64"):
        q, k, v, g, h0 = (t.to(DEVICE) for t in make_inputs("gated_linear_attention", 1, 5, 2, 8, 8))
        ops.gated_linear_attention(q, k, v, g, backend="triton")


def test_gate_grad_error_does_not_grow_with_length():
    """dg is summed per chunk: its fp16 error stays at the level of dq's at T=2048 (summed over the whole
    sequence it was 4.5x dq's at T=4096 in fp16 here, and 1.5e-2..5.7e-2 in bf16 on an H100)."""
    q, k, v, g, _ = make_inputs("simple_gla", 1, 2048, 1, 32, 32, seed=3)
    g = F.logsigmoid(torch.randn(g.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 2)
    q, k, v, g = (t.to(DEVICE, torch.half) for t in (q, k, v, g))
    got = run("simple_gla", "triton", q, k, v, g, None, "chunk")
    ref = run("simple_gla", "torch", *(t.double() for t in (q, k, v, g)), None, "chunk")
    err = {n: ((got[n].double() - ref[n]).norm() / ref[n].norm()).item() for n in ("dq", "dk", "dg")}
    assert err["dg"] <= 2 * max(err["dq"], err["dk"]), err


@pytest.mark.parametrize("diag_limit", [0.0, 80.0])
def test_vector_gate_both_sub_chunk_paths(diag_limit):
    """GLA's sub-chunk blocks: 0 sends every sub-chunk down the elementwise path, 80 every one (decays here are
    ~15 per sub-chunk) through the rebased matmuls; both must match the reference."""
    check("gated_linear_attention", *make_inputs("gated_linear_attention", 2, 77, 2, 40, 24), kernel_config={"diag_limit": diag_limit})


@pytest.mark.parametrize("family", ["linear_attention", "retention", "simple_gla"])
@pytest.mark.parametrize("case", ["odd", "varlen", "no_state", "fp16", "wide", "one_token", "whole_chunks"])
def test_onepass_forward(monkeypatch, family, case):
    """The one-pass forward (chunk_onepass_kernel; on by default only where the grid fills a GPU), forced on:
    odd lengths and head dims, a varlen pack, no state in or out, fp16, K, V over one 64-wide block, T = 1, and
    T a multiple of the chunk (the last chunk full)."""
    from linattn_models.ops.triton import chunk_fwd
    calls = []
    real = chunk_fwd.onepass_forward
    monkeypatch.setattr(chunk_fwd, "onepass_forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    forced = functools.partial(check, kernel_config={"onepass_min_programs": 0, "onepass_min_programs_scalar": 0})
    if case == "odd":
        forced(family, *make_inputs(family, 2, 100, 2, 24, 48, strength=2.0))
    elif case == "varlen":
        lens = [37, 1, 64, 29]
        cu = torch.tensor([0] + lens).cumsum(0)
        forced(family, *make_inputs(family, 1, sum(lens), 2, 16, 24, strength=2.0, N=len(lens)), cu=cu)
    elif case == "no_state":
        q, k, v, g, _ = make_inputs(family, 2, 70, 2, 16, 16)
        forced(family, q, k, v, g, None, final=False)
    elif case == "fp16":
        forced(family, *make_inputs(family, 2, 80, 2, 32, 32), dtype=torch.float16)
    elif case == "wide":
        forced(family, *make_inputs(family, 1, 70, 1, 130, 72))
    elif case == "one_token":
        forced(family, *make_inputs(family, 3, 1, 2, 32, 16))
    else:
        forced(family, *make_inputs(family, 2, 128, 2, 16, 32, strength=2.0))
    assert calls, "the one-pass forward did not run"


def test_parallel_compile_glue(monkeypatch):
    """launch.Plan.run: the first time a plan's specialisation key is seen, every queued launch is warmed up
    (compiled) with its very grid and keyword arguments before the launches run in order; the next time, launches
    only; launches that differ only in a non-constexpr int (another T) share the key, a constexpr change does not;
    a failing warmup warns and the launches still run. (Fake kernels: the interpreter has no compile step; the
    GPU runs exercise Triton's real AsyncCompileMode.)"""
    import triton

    from linattn_models.ops.triton import launch
    events = []

    class Param:
        def __init__(self, name, is_constexpr):
            self.name, self.is_constexpr = name, is_constexpr

    class Kernel:
        params = [Param("x", False), Param("T", False), Param("BT", True)]

        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def warmup(self, grid, **kw):
            if self.fail:
                raise RuntimeError("compile error")
            events.append(("warmup", self.name, grid, kw))

        def __getitem__(self, grid):
            return lambda **kw: events.append(("launch", self.name, grid, kw))

    class Mode:  # stands in for triton.AsyncCompileMode
        def __init__(self, pool):
            events.append(("mode", pool is not None))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(launch, "INTERPRET", False)
    monkeypatch.setattr(launch, "_COMPILED", set())
    monkeypatch.setattr(triton, "AsyncCompileMode", Mode, raising=False)
    a, b = Kernel("a"), Kernel("b")
    x = torch.zeros(4)

    def queue_two(plan, T=100, BT=64):
        plan.queue(a, (1, 2), x=x, T=T, BT=BT, num_warps=4)
        plan.queue(b, (5,), x=x, T=T, BT=BT, num_warps=8)

    plan = launch.Plan()
    queue_two(plan)
    plan.run()
    kw = lambda w: {"x": x, "T": 100, "BT": 64, "num_warps": w}  # noqa: E731
    assert events == [("mode", True), ("warmup", "a", (1, 2), kw(4)), ("warmup", "b", (5,), kw(8)),
                      ("launch", "a", (1, 2), kw(4)), ("launch", "b", (5,), kw(8))]
    events.clear()
    queue_two(plan, T=200)  # T is no constexpr and 200 specialises like 100 (not 1, not a multiple of 16)
    plan.run()
    assert [e[0] for e in events] == ["launch", "launch"], "a seen key must not compile again"
    events.clear()
    queue_two(plan, BT=32)  # a constexpr changed: a new variant
    plan.run()
    assert [e[0] for e in events] == ["mode", "warmup", "warmup", "launch", "launch"]
    events.clear()
    plan.queue(Kernel("c", fail=True), (1,), x=x, T=1, BT=64)
    plan.queue(a, (1,), x=x, T=1, BT=64)
    with pytest.warns(UserWarning, match="parallel Triton compile failed"):
        plan.run()
    assert [e[:2] for e in events] == [("mode", True), ("launch", "c"), ("launch", "a")]


def test_out_of_shared_memory_falls_back_to_one_stage(monkeypatch):
    """launch.Plan.run: a launch whose pipelined variant needs more shared memory than the device has (Triton's
    OutOfResources at launch) warns once and runs at num_stages=1, then and on later runs of the same plan; at 1
    stage the error is raised. (A fake kernel: the interpreter has no shared-memory limit.)"""
    import warnings

    from triton.runtime.errors import OutOfResources

    from linattn_models.ops.triton import launch
    stages = []

    class Kernel:
        __name__ = "k"

        def __init__(self, limit):
            self.limit = limit

        def __getitem__(self, grid):
            def go(**kw):
                if kw["num_stages"] > self.limit:
                    raise OutOfResources(300000, 232448, "shared memory")
                stages.append(kw["num_stages"])
            return go

    monkeypatch.setattr(launch, "_ONE_STAGE", set())
    plan = launch.Plan()
    ok, big = Kernel(limit=3), Kernel(limit=1)
    for run in range(2):
        plan.queue(ok, (1,), T=7, num_stages=3)
        plan.queue(big, (1,), T=7, num_stages=3)
        if run == 0:
            with pytest.warns(UserWarning, match="running it at 1 stage"):
                plan.run()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # remembered: straight to 1 stage, no second failure
                plan.run()
    assert stages == [3, 1, 3, 1]
    plan.queue(Kernel(limit=0), (1,), T=7, num_stages=1)
    with pytest.raises(OutOfResources):
        plan.run()
