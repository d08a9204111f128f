"""The fused block kernels (ops/triton/fused.py: RMSNorm with optional gate, L2 norm, rotary, SwiGLU) on the test device
(compiled on a GPU, Triton's interpreter on CPU), against the torch implementations of ops/fused.py in float64.

Outputs and the gradients of a random loss (x, weight, gate / q, k / g, u) with fresh random inputs; row counts
that are not multiples of the kernels' blocks, non-power-of-two widths; fp32 (‖Δ‖/‖ref‖ ≤ 1e-5), fp16 (≤ 2e-3)
and float64 called on the kernels directly (≤ 1e-12; the API sends float64 to torch). Outputs and scratch are
NaN-poisoned first, so memory a kernel fails to write shows up. bf16 (≤ 1e-2) on a GPU only (the interpreter's
bf16 is garbage). Inputs are made on CPU (same values on every device), then moved to the test device.
"""
import pytest
import torch

from devices import DEVICE, low_precision_dtypes

from linattn_models.ops import fused
from linattn_models.ops.dispatch import triton_ops

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float64] + low_precision_dtypes()
pytestmark = pytest.mark.usefixtures("poisoned_kernels")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def grads(fn, inputs, seed):
    """Output and the gradients of sum(out * w) for a fixed random w, inputs as leaves."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
               for o in outs)
    loss.backward()
    return [t.cpu() for t in list(outs) + [t.grad for t in leaves if t is not None]]


def check(triton_fn, torch_fn, inputs, dtype, seed):
    """triton_fn on the test device in `dtype`, torch_fn on CPU in float64, from the same (rounded) inputs."""
    mine = [t.to(DEVICE, dtype) if t is not None and t.is_floating_point() else t for t in inputs]
    ours = grads(triton_fn, mine, seed)
    ref = grads(torch_fn, [t.cpu().double() if t is not None and t.is_floating_point() else t for t in mine], seed)
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert not a.isnan().any(), f"output/grad {i} has NaN (unwritten memory?)"
        assert rel(a, b) <= TOL[dtype], f"output/grad {i}: rel err {rel(a, b):.2e} > {TOL[dtype]}"


def kernel(dtype, name):
    """The Triton function itself for float64 (the API routes float64 to torch), else the API on Triton."""
    if dtype == torch.float64:
        return getattr(triton_ops().fused, name)
    return None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D", [(37, 100), (16, 256), (5, 8)])
@pytest.mark.parametrize("gated,affine", [(False, True), (True, True), (True, False), (False, False)])
def test_rms_norm(dtype, N, D, gated, affine):
    torch.manual_seed(N * D + gated)
    x = torch.randn(3, N, D) * 3
    w = torch.randn(D) if affine else None
    g = torch.randn(3, N, D) * 2 if gated else None
    eps = 1e-6
    k = kernel(dtype, "rms_norm")
    if k is not None:
        tri = lambda x, w, g: k(x, w, g, eps, x.dtype)  # noqa: E731
    else:
        tri = lambda x, w, g: fused.rms_norm(x, w, eps, gate=g, backend="triton")  # noqa: E731
    ref = lambda x, w, g: fused.rms_norm(x, w, eps, gate=g, backend="torch")  # noqa: E731
    check(tri, ref, [x, w, g], dtype, seed=D)


def test_rms_norm_out_dtype_and_mixed_weight():
    """fp32 input, fp32 weight, fp16 output (the autocast case): one rounding of the fp32 result."""
    torch.manual_seed(0)
    x, w = torch.randn(21, 64), torch.randn(64)
    y = fused.rms_norm(x.to(DEVICE), w.to(DEVICE), 1e-6, out_dtype=torch.float16, backend="triton").cpu()
    assert y.dtype == torch.float16
    ref = fused.rms_norm(x.double(), w.double(), 1e-6, backend="torch")
    assert rel(y, ref) < 1e-3
    assert torch.equal(y, fused.rms_norm(x, w, 1e-6, backend="torch").half())


def l2_norm_fn(dtype):
    k = kernel(dtype, "rms_norm")
    if k is not None:
        return lambda x: k(x, None, None, 1e-6, x.dtype, l2=True)
    return lambda x: fused.l2_norm(x, backend="triton")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 37, 3, 48), (13, 128), (3, 5, 8)])
def test_l2_norm(dtype, shape):
    torch.manual_seed(shape[-1])
    check(l2_norm_fn(dtype), lambda x: fused.l2_norm(x, backend="torch"), [torch.randn(shape) * 3], dtype, seed=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_norm_zero_and_tiny_rows(dtype):
    """|x|² of 0 or about eps: eps keeps r finite (1/sqrt(eps) at 0: y = 0, dx = dy/sqrt(eps)), no NaN."""
    torch.manual_seed(0)
    x = torch.randn(20, 48)
    x[::3] = 0
    x[1::3] *= 1e-4
    check(l2_norm_fn(dtype), lambda x: fused.l2_norm(x, backend="torch"), [x], dtype, seed=3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,H,D", [(2, 7, 3, 10), (1, 33, 2, 64), (3, 1, 1, 2)])
def test_rotary(dtype, B, T, H, D):
    torch.manual_seed(B * T + D)
    q, k = torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    pos = torch.randint(0, 5000, (B, T))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    fn = kernel(dtype, "rotary")
    f = pos.reshape(-1).double()[:, None] * inv_freq.double()[None, :]  # float64 tables for the float64 kernel
    f, dpos, dfreq = f.to(DEVICE), pos.to(DEVICE), inv_freq.to(DEVICE)
    tri = (lambda q, k: fn(q, k, f.cos(), f.sin())) if fn else (lambda q, k: fused.rotary(q, k, dpos, dfreq,
                                                                                          backend="triton"))
    ref = lambda q, k: fused.rotary(q, k, pos, inv_freq.double(), backend="torch")  # noqa: E731
    # positions up to 5000 make cos/sin arguments ~5e3: float32 rounds them to ~2e-4 absolute, hence the
    # float32 kernel vs float64 reference is compared at 1e-3 there (the torch float32 path does the same)
    tol = {torch.float64: 1e-12, torch.float32: 1e-3, torch.float16: 3e-3, torch.bfloat16: 1e-2}[dtype]
    TOL_save = TOL[dtype]
    TOL[dtype] = tol
    try:
        check(tri, ref, [q, k], dtype, seed=T)
    finally:
        TOL[dtype] = TOL_save


def test_rotary_matches_torch_float32_and_expanded_positions():
    """The float32 kernel against the float32 torch path (same rounding of p·θ), positions given expanded."""
    torch.manual_seed(1)
    q, k = torch.randn(2, 50, 4, 32), torch.randn(2, 50, 4, 32)
    pos = torch.arange(50).expand(2, 50)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32))
    a = fused.rotary(q.to(DEVICE), k.to(DEVICE), pos.to(DEVICE), inv_freq.to(DEVICE), backend="triton")
    b = fused.rotary(q, k, pos, inv_freq, backend="torch")
    for x, y in zip(a, b):
        assert (x.cpu() - y).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 2049), (1,)])
def test_swiglu(dtype, shape):
    torch.manual_seed(len(shape))
    g, u = torch.randn(shape) * 3, torch.randn(shape)
    fn = kernel(dtype, "swiglu")
    tri = fn or (lambda g, u: fused.swiglu(g, u, backend="triton"))
    check(tri, lambda g, u: fused.swiglu(g, u, backend="torch"), [g, u], dtype, seed=1)


def test_bad_inputs_name_the_argument():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="gate"):
        fused.rms_norm(x, None, 1e-6, gate=torch.randn(4, 7))
    with pytest.raises(ValueError, match="weight"):
        fused.rms_norm(x, torch.ones(7), 1e-6)
    with pytest.raises(ValueError, match="positions"):
        fused.rotary(torch.randn(1, 3, 2, 4), torch.randn(1, 3, 2, 4), torch.zeros(1, 4, dtype=torch.long),
                     torch.ones(2))
    with pytest.raises(ValueError, match="D even"):
        fused.rotary(torch.randn(1, 3, 2, 5), torch.randn(1, 3, 2, 5), torch.zeros(1, 3, dtype=torch.long),
                     torch.ones(2))
    with pytest.raises(ValueError, match="swiglu"):
        fused.swiglu(torch.randn(3), torch.randn(4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_cross_entropy_sum(dtype, monkeypatch):
    """Loss and d(loss)/d(logits) vs torch's cross_entropy in float64, over several row blocks, ignored rows;
    the logits are left unchanged (the softmax is built in place of a float32 copy)."""
    monkeypatch.setattr(fused, "_CE_ROWS_ELEMENTS", 300)  # blocks of 300 // 37 = 8 rows
    torch.manual_seed(3)
    x = torch.randn(45, 37) * 4
    t = torch.randint(0, 37, (45,))
    t[::7] = -100
    xd = x.to(dtype)
    before = xd.clone()
    w = torch.randn(())
    ours = grads(lambda x: fused.cross_entropy_sum(x, t) * w, [xd], seed=0)
    ref = grads(lambda x: torch.nn.functional.cross_entropy(x, t, reduction="sum") * w, [x.double()], seed=0)
    assert torch.equal(xd, before)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3}[dtype]
    for a, b in zip(ours, ref):
        assert rel(a, b) <= tol, rel(a, b)


def test_causal_lm_loss_matches_transformers():
    from transformers.loss.loss_utils import ForCausalLMLoss

    from linattn_models.models.common.modeling_common import causal_lm_loss
    torch.manual_seed(4)
    x = torch.randn(2, 9, 20, requires_grad=True)
    y = torch.randint(0, 20, (2, 9))
    y[1, :3] = -100
    for kw in ({}, {"num_items_in_batch": torch.tensor(11)}, {"shift_labels": torch.randint(0, 20, (2, 9))}):
        a = causal_lm_loss(x, y, 20, **kw)
        b = ForCausalLMLoss(x, y, 20, **kw)
        ga, gb = torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0]
        assert abs(a.item() - b.item()) < 1e-5 and (ga - gb).abs().max() < 1e-7, kw


def test_linattn_fused_0_sends_the_ops_to_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(triton_ops().fused, "swiglu", lambda g, u: calls.append(1) or g)
    monkeypatch.setenv("LINATTN_BACKEND", "triton")
    g = torch.randn(5, device=DEVICE)
    fused.swiglu(g, g)
    assert calls == [1]
    monkeypatch.setenv("LINATTN_FUSED", "0")
    assert torch.equal(fused.swiglu(g, g), torch.nn.functional.silu(g) * g) and calls == [1]


@pytest.mark.parametrize("dtype", [torch.float32] + low_precision_dtypes())
@pytest.mark.parametrize("case", ["z0", "varlen", "plain"])
def test_linear_attention_normalizer(dtype, case):
    """ops.normalize_linear_attention on the Triton kernel vs the torch path in float64: the normalised output,
    the last key sum, and the gradients of o, q, k (and z0) of a random loss on both."""
    from linattn_models import ops
    torch.manual_seed(7)
    B, T, H, K, V = (1, 200, 2, 20, 6) if case == "varlen" else (2, 150, 3, 20, 6)  # T > 64: several tiles
    q, k = torch.rand(B, T, H, K), torch.rand(B, T, H, K)  # positive, as after a feature map
    o = torch.randn(B, T, H, V)
    z0 = torch.rand(B, H, K) * 5 if case == "z0" else None
    cu = torch.tensor([0, 1, 70, 200]) if case == "varlen" else None

    def fn(backend):
        def run(o, q, k, z0):
            c = None if cu is None else cu.to(q.device)
            out, z = ops.normalize_linear_attention(o, q, k, 0.3, z0=z0, cu_seqlens=c, backend=backend)
            return (out,) if z is None else (out, z)
        return run
    check(fn("triton"), fn("torch"), [o, q, k, z0], dtype, seed=3)


def test_cross_entropy_sum_backward_scale_is_not_rounded():
    """The incoming gradient (here 1/3, like 1/tokens) multiplies in float32: scaling bf16 gradients by a
    bf16-rounded 1/3 (0.33398) would make every gradient 0.2% too large. Per-element bf16 rounding is unbiased,
    so the mean ratio ours / exact over the non-tiny gradients stays within ~1e-4 of 1 (0.2% off otherwise)."""
    torch.manual_seed(5)
    x = (torch.randn(256, 50) * 3).to(torch.bfloat16)
    t = torch.randint(0, 50, (256,))
    a, b = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    (fused.cross_entropy_sum(a, t) / 3).backward()
    (torch.nn.functional.cross_entropy(b, t, reduction="sum") / 3).backward()
    big = b.grad.abs() > 1e-3
    bias = (a.grad.double()[big] / b.grad[big]).mean().item() - 1
    assert abs(bias) < 5e-4, bias


def test_rotary_tables_shared_within_a_pass(monkeypatch):
    """Calls with the same positions tensor and share_key reuse one pair of cos/sin tables (the layers of one
    forward pass); a new positions tensor, an in-place change of it, or another key make new ones; results
    equal the unshared call."""
    made = []
    real_cos = torch.Tensor.cos
    monkeypatch.setattr(torch.Tensor, "cos", lambda self: made.append(1) or real_cos(self))
    torch.manual_seed(2)
    q, k = torch.randn(2, 9, 3, 8, device=DEVICE), torch.randn(2, 9, 3, 8, device=DEVICE)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float32, device=DEVICE) / 8))
    pos = torch.arange(9, device=DEVICE).repeat(2, 1)
    plain = fused.rotary(q, k, pos, inv_freq, backend="triton")
    n0 = len(made)
    a = [fused.rotary(q, k, pos, inv_freq, backend="triton", share_key=("b", 8)) for _ in range(3)]
    assert len(made) == n0 + 1
    for x in a:
        assert all(torch.equal(u, v) for u, v in zip(x, plain))
    pos.add_(1)  # in place: must not reuse the old tables
    b = fused.rotary(q, k, pos, inv_freq, backend="triton", share_key=("b", 8))
    assert len(made) == n0 + 2 and not torch.equal(b[0], plain[0])
    fused.rotary(q, k, pos, inv_freq * 2, backend="triton", share_key=("other", 8))
    assert len(made) == n0 + 3
