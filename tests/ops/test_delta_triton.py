"""The delta rule's Triton kernels (ops/triton/delta_*.py) against float64 autograd through the torch reference.

On the test device (conftest's --device): compiled on a GPU, through Triton's interpreter on CPU.
Forward output, final state and every gradient (dq, dk, dv, dbeta, dg, dh0; a random loss on both o and the final
state, so dht is exercised) for no gate, the scalar gate and the per-key-dimension gate, chunk and recurrent mode,
odd lengths, T = 1, varlen packs with a length-1 sequence, strong gates, beta near 0 and 1, q/k L2 normalisation,
non-power-of-two head dims with K != V (up to 256), fp32 and fp16. Every output and scratch buffer of the kernels
is NaN-poisoned first, so memory a kernel fails to write shows up as NaN. Relative error ‖x − ref‖ / ‖ref‖: fp32 ≤ 1e-4, fp16 ≤ 1e-2
(fp32 on a GPU with TF32 matmuls: 5e-3). bf16 only on a GPU (the interpreter gives garbage for bf16).
"""
import pytest
import torch

from devices import DEVICE, ON_GPU, gpu_only
from linattn_models import ops
from linattn_models.ops.dispatch import triton_ops
from test_delta import delta_inputs, grads

TF32 = ON_GPU and torch.backends.cuda.matmul.allow_tf32
TOL = {torch.float32: 5e-3 if TF32 else 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
pytestmark = pytest.mark.usefixtures("poisoned_kernels")


def check(q, k, v, g, beta, h0, mode="chunk", dtype=torch.float32, final=True, **kw):
    """Kernels in `dtype` on DEVICE vs the float64 torch reference on the same (rounded) inputs."""
    cast = lambda t: None if t is None else t.to(dtype).to(DEVICE)  # noqa: E731
    x = [cast(t) for t in (q, k, v, g, beta)] + [None if h0 is None else h0.float().to(DEVICE)]
    got = grads(*x, mode=mode, backend="triton", final=final, **kw)
    d = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    ref_kw = {n: val.cpu() if isinstance(val, torch.Tensor) else val for n, val in kw.items()}  # cu_seqlens
    ref = grads(*[d(t) for t in x], mode="chunk", backend="torch", final=final, **ref_kw)
    assert got.keys() == ref.keys()
    errs = {}
    for name, r in ref.items():
        a = got[name]
        assert a.shape == r.shape, name
        want = torch.float32 if name in ("ht", "dh0") else dtype
        assert a.dtype == want, (name, a.dtype)
        assert torch.isfinite(a).all(), f"{name} has NaN/inf (unwritten memory?)"
        errs[name] = ((a.double().cpu() - r).norm() / r.norm().clamp_min(1e-30)).item()
    bad = {n: f"{e:.3g}" for n, e in errs.items() if not e <= TOL[dtype]}
    assert not bad, f"relative errors over {TOL[dtype]}: {bad}"
    return errs


GATES = ["none", "scalar", "vector"]


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
@pytest.mark.parametrize("T,K,V", [(100, 24, 48), (63, 48, 20)])
def test_kernels_fp32(gate, mode, T, K, V):
    check(*delta_inputs(gate, 2, T, 2, K, V, strength=2.0, seed=T), mode=mode)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_single_token(gate, mode):
    """T = 1 (a decoding step): state in and out."""
    check(*delta_inputs(gate, 3, 1, 2, 32, 16), mode=mode)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_varlen(gate, mode):
    """Packed sequences incl. a length-1 one and one of exactly a chunk; chunks never cross a boundary."""
    lens = [37, 1, 64, 29]
    cu = torch.tensor([0] + lens).cumsum(0).to(DEVICE)
    check(*delta_inputs(gate, 1, sum(lens), 2, 16, 24, N=len(lens), strength=2.0), mode=mode, cu_seqlens=cu)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
@pytest.mark.parametrize("strength", [30.0, 300.0])
def test_strong_gates(gate, strength):
    """Log gate sums reach thousands inside a chunk: nothing may overflow."""
    check(*delta_inputs(gate, 1, 90, 2, 16, 16, strength=strength))


@pytest.mark.parametrize("diag_limit", [0.0, 80.0])
def test_vector_gate_both_sub_chunk_paths(diag_limit):
    """The per-dimension gate's pair kernels (gated linear attention's): 0 sends every sub-chunk down the
    elementwise path, 80 every one (decays here are ~15 per sub-chunk) through the rebased matmuls."""
    check(*delta_inputs("vector", 2, 77, 2, 40, 24, strength=15.0), kernel_config={"diag_limit": diag_limit})


@pytest.mark.parametrize("beta_kind", ["small", "one"])
def test_beta_extremes(beta_kind):
    check(*delta_inputs("scalar", 1, 80, 2, 16, 16, beta_kind=beta_kind))


@pytest.mark.parametrize("gate", ["none", "scalar"])
def test_qk_l2norm(gate):
    """use_qk_l2norm on raw (unnormalised) q, k: the gradient flows through the normalisation."""
    check(*delta_inputs(gate, 1, 70, 2, 32, 16, unit_keys=False), use_qk_l2norm=True)


@pytest.mark.parametrize("gate", GATES)
def test_fp16(gate):
    check(*delta_inputs(gate, 2, 80, 2, 32, 32), dtype=torch.float16)


@pytest.mark.parametrize("cfg", [{"wy_blocked": False}, {"dot16_delta_wy": False, "dot16_delta_state": False},
                                 {"dot16_delta_bwd": False, "BV_delta_bwd": 32}, {"dot16_delta_bwd": True}])
@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_forward_switches(gate, cfg):
    """The forward's alternative kernels (kernel_config switches, the defaults tested everywhere else): N by
    doubling on the whole chunk instead of by 16-row blocks; W, U and the state pass from fp32 operands; the
    backward's recomputation and reverse pass on 16-bit operands and buffers."""
    lens = [70, 1, 30]
    cu = torch.tensor([0] + lens).cumsum(0).to(DEVICE)
    check(*delta_inputs(gate, 1, sum(lens), 2, 32, 24, N=len(lens)), dtype=torch.float16, cu_seqlens=cu,
          kernel_config=cfg)


def test_fp16_recurrent_varlen():
    lens = [50, 1, 30]
    cu = torch.tensor([0] + lens).cumsum(0).to(DEVICE)
    check(*delta_inputs("scalar", 1, sum(lens), 2, 16, 16, N=len(lens)), mode="recurrent", dtype=torch.float16,
          cu_seqlens=cu)


@gpu_only("bf16 gives garbage in Triton's interpreter")
@pytest.mark.parametrize("gate", GATES)
def test_bf16(gate):
    check(*delta_inputs(gate, 2, 300, 4, 64, 64), dtype=torch.bfloat16)


@pytest.mark.parametrize("gate", ["none", "scalar"])
def test_no_state(gate):
    """No initial state, final state not returned: dht is None and dg has no chunk-end term from it."""
    q, k, v, g, beta, _ = delta_inputs(gate, 2, 70, 2, 16, 16)
    check(q, k, v, g, beta, None, final=False)


@pytest.mark.parametrize("gate,K,V", [("scalar", 130, 72), ("scalar", 256, 20), ("vector", 130, 24)])
def test_wide_head_dims(gate, K, V):
    """K over one 64-wide tile (several K blocks in the dq/dk kernel) up to 256 (the state passes' limit)."""
    check(*delta_inputs(gate, 1, 40, 1, K, V))


def test_non_contiguous_inputs():
    q, k, v, g, beta, h0 = delta_inputs("scalar", 2, 50, 2, 16, 16)
    tq, tk, tv, tg, tb = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, g, beta))
    assert not tq.is_contiguous()
    check(tq, tk, tv, tg, tb, h0)


def test_only_final_state_used():
    """A loss on the final state alone: the output's gradient is None in the backward."""
    q, k, v, g, beta, h0 = (t.float().to(DEVICE) for t in delta_inputs("scalar", 1, 40, 2, 16, 16))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, g, beta, h0)]
    _, s = ops.gated_delta_rule(*leaves[:5], initial_state=leaves[5], output_final_state=True, backend="triton")
    s.sum().backward()
    ref = [t.double().cpu().clone().requires_grad_(True) for t in (q, k, v, g, beta, h0)]
    _, sr = ops.gated_delta_rule(*ref[:5], initial_state=ref[5], output_final_state=True, backend="torch")
    sr.sum().backward()
    assert ref[0].grad is None  # q only reaches the output
    assert torch.equal(leaves[0].grad, torch.zeros_like(q))
    for a, r in zip(leaves[1:], ref[1:]):
        assert ((a.grad.double().cpu() - r.grad).norm() / r.grad.norm()).item() <= TOL[torch.float32]


def test_empty_and_float64():
    q, k, v, g, beta, h0 = delta_inputs("scalar", 1, 0, 2, 8, 8, dtype=torch.float32, device=DEVICE)
    o, s = ops.gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, backend="triton")
    assert o.shape == (1, 0, 2, 8) and torch.equal(s, h0)
    q, k, v, g, beta, h0 = delta_inputs("scalar", 1, 5, 2, 8, 8, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        ops.gated_delta_rule(q, k, v, g, beta, backend="triton")


def test_poison_is_on():
    assert torch.isnan(triton_ops().alloc.new((3,), torch.float32, DEVICE)).all()


def test_small_blocks():
    """16-wide K and V tiles: several V blocks in the state passes and several K blocks in the dq/dk kernel (the
    K-block shares of dbeta and dg summed by the last kernel), on odd dims."""
    small = {key: 16 for key in ("BK_delta", "BV_delta", "BV_delta_bwd", "BV_delta_state", "BV_delta_rec")}
    check(*delta_inputs("scalar", 1, 70, 2, 40, 36, strength=2.0), kernel_config=small)
    check(*delta_inputs("none", 1, 20, 2, 40, 36), mode="recurrent", kernel_config=small)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_final_state_in_place(gate):
    """final_state_in_place=True (the CUDA-graph decode step): a no-grad recurrent call writes the final state
    into the initial-state buffer and returns that very buffer; values as without it."""
    q, k, v, g, beta, h0 = (t.float().to(DEVICE) for t in delta_inputs(gate, 2, 3, 2, 16, 24))
    with torch.no_grad():
        ref = ops.gated_delta_rule(q, k, v, g, beta, initial_state=h0.clone(), output_final_state=True,
                                   mode="recurrent", backend="triton")
        buf = h0.clone()
        o, s = ops.gated_delta_rule(q, k, v, g, beta, initial_state=buf, output_final_state=True,
                                    mode="recurrent", backend="triton", final_state_in_place=True)
    assert s is buf
    assert torch.equal(o, ref[0]) and torch.equal(s, ref[1])


def test_deterministic():
    """No atomics: the same call twice gives bitwise-identical outputs and gradients."""
    x = [None if t is None else t.float().to(DEVICE) for t in delta_inputs("scalar", 1, 70, 2, 16, 16)]
    a = grads(*x, mode="chunk", backend="triton")
    b = grads(*x, mode="chunk", backend="triton")
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("gate", GATES)
def test_saved_inverse_equals_recomputed(gate):
    """The autograd function keeps the forward's N for the backward; the torch.compile op's backward recomputes
    it (delta_backward without n_buf): the same gradients, bit for bit."""
    x = [None if t is None else t.float().to(DEVICE) for t in delta_inputs(gate, 1, 70, 2, 16, 16)]
    q, k, v, g, beta, h0 = x
    do, dht = torch.randn_like(v), torch.randn_like(h0)
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in x]
    kw = dict(initial_state=leaves[5], output_final_state=True, backend="triton")
    if g is None:
        o, s = ops.delta_rule(leaves[0], leaves[1], leaves[2], leaves[4], **kw)
    else:
        o, s = ops.gated_delta_rule(*leaves[:5], **kw)
    ((o * do).sum() + (s * dht).sum()).backward()
    ref = triton_ops().delta_backward(q, k, v, g, beta, h0, None, q.shape[-1] ** -0.5, do, dht, True)
    for name, leaf, r in zip(("dq", "dk", "dv", "dg", "dbeta", "dh0"), leaves, ref):
        if leaf is not None:
            assert torch.equal(leaf.grad, r), name
