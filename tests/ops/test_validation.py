"""Bad input to the public ops gets a clear error naming the argument."""
import pytest
import torch

from linattn_models import ops


def inputs(B=1, T=10, H=2, K=8, V=8):
    return torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V), -torch.rand(B, T, H, K)


@pytest.mark.parametrize("bad,match", [
    (lambda q, k, v, g: ops.gated_linear_attention(q[0], k, v, g), "q must have 4 dimensions"),
    (lambda q, k, v, g: ops.gated_linear_attention(q, k[:, :5], v, g), "k must have the shape of q"),
    (lambda q, k, v, g: ops.gated_linear_attention(q, k, v[:, :, :1], g), "v must be"),
    (lambda q, k, v, g: ops.gated_linear_attention(q, k, v, g[..., 0]), "g must have 4 dimensions"),
    (lambda q, k, v, g: ops.simple_gla(q, k, v, g[..., :1, 0]), r"g must have shape \(1, 10, 2\)"),
    (lambda q, k, v, g: ops.retention(q.long(), k, v), "q must be a floating-point"),
    (lambda q, k, v, g: ops.retention(q, k.half(), v), "share one dtype"),
    (lambda q, k, v, g: ops.retention(q, k, v, mode="fast"), "mode must be"),
    (lambda q, k, v, g: ops.retention(q, k, v, backend="cuda"), "backend must be"),
    (lambda q, k, v, g: ops.retention(q, k, v, scale="x"), "scale must be"),
    (lambda q, k, v, g: ops.retention(q, k, v, scale=float("nan")), "scale must be finite"),
    (lambda q, k, v, g: ops.retention(q, k, v, initial_state=torch.zeros(1, 2, 8, 7)), "initial_state must have shape"),
    (lambda q, k, v, g: ops.retention(q, k, v, initial_state=torch.zeros(1, 2, 8, 8).double()), "initial_state must be"),
    (lambda q, k, v, g: ops.retention(q, k, v, initial_state=torch.zeros(1, 2, 8, 8, dtype=torch.int32)),
     "initial_state must be"),
    (lambda q, k, v, g: ops.retention(q, k, v, initial_state=[0]), "initial_state must be a torch.Tensor"),
    (lambda q, k, v, g: ops.gated_linear_attention(q, k, v, g.abs() + 0.1), "must be <= 0"),
    (lambda q, k, v, g: ops.gated_linear_attention(q, k, v, g * float("nan")), "NaN or inf"),
    (lambda q, k, v, g: ops.linear_attention(q, k, v, normalize=True, initial_state=torch.zeros(1, 2, 8, 8)),
     "normalize=True cannot take an initial_state"),
])
def test_bad_arguments(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad(*inputs())


def test_cu_seqlens_errors():
    q, k, v, g = inputs(T=10)
    with pytest.raises(ValueError, match="B == 1"):
        q2, k2, v2, _ = inputs(B=2)
        ops.retention(q2, k2, v2, cu_seqlens=torch.tensor([0, 5, 10]))
    for cu in ([0, 6, 5, 10], [0, 5, 9], [1, 5, 10]):
        with pytest.raises(ValueError, match="cu_seqlens must start at 0, never decrease and end at T=10"):
            ops.retention(q, k, v, cu_seqlens=torch.tensor(cu))
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D int"):
        ops.retention(q, k, v, cu_seqlens=torch.tensor([0.0, 10.0]))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        ops.retention(q, k, v, cu_seqlens=torch.tensor([0, 4, 10]), initial_state=torch.zeros(1, 2, 8, 8))


def test_devices_must_match():
    q, k, v, g = inputs()
    meta = torch.empty_like(v, device="meta")
    with pytest.raises(ValueError, match="one device"):
        ops.retention(q, k, meta)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, g = inputs()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ops.retention(q, k, v, backend="triton")


def test_backend_env(monkeypatch):
    monkeypatch.setenv("LINATTN_BACKEND", "bogus")
    q, k, v, g = inputs()
    with pytest.raises(ValueError, match="LINATTN_BACKEND"):
        ops.retention(q, k, v)
    monkeypatch.setenv("LINATTN_BACKEND", "torch")
    assert ops.resolve_backend(None, q.device) == "torch"


def test_noncontiguous_views_work():
    q, k, v, g = inputs(T=20)
    qt = torch.randn(1, 2, 20, 8).transpose(1, 2)  # strided view
    o1, _ = ops.gated_linear_attention(qt, k, v, g)
    o2, _ = ops.gated_linear_attention(qt.contiguous(), k, v, g)
    assert torch.allclose(o1, o2)


@pytest.mark.parametrize("op", ["gated_linear_attention", "simple_gla"])
def test_missing_gate_is_an_error(op):
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match=r"g \(the log decays.*is required, got None"):
        getattr(ops, op)(q, k, v, None)


def test_float32_state_for_float64_inputs():
    """The documented contract: states are float32. float64 inputs take one too, and compute in float64."""
    q, k, v, g = (t.double() for t in inputs())
    h0 = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    o64, s64 = ops.gated_linear_attention(q, k, v, g, initial_state=h0, output_final_state=True)
    o32, s32 = ops.gated_linear_attention(q, k, v, g, initial_state=h0.float(), output_final_state=True)
    assert o32.dtype == s32.dtype == torch.float64
    ref_o, ref_s = ops.gated_linear_attention(q, k, v, g, initial_state=h0.float().double(), output_final_state=True)
    assert torch.equal(o32, ref_o) and torch.equal(s32, ref_s)
    assert (o32 - o64).abs().max() < 1e-5
    with pytest.raises(TypeError, match="initial_state must be float32"):
        ops.gated_linear_attention(q.float(), k.float(), v.float(), g.float(), initial_state=h0.half())


def _triton_ops_to_second_order():
    """(name, fn(x) -> output) for every custom autograd op whose backward runs kernels."""
    from linattn_models.ops import fused

    def att(name):
        def f(x):
            B, T, H, K = x.shape
            g = -torch.rand(B, T, H, K, device=x.device)
            return {"linear_attention": lambda: ops.linear_attention(x, x * 2, x, backend="triton")[0],
                    "retention": lambda: ops.retention(x, x * 2, x, backend="triton")[0],
                    "simple_gla": lambda: ops.simple_gla(x, x * 2, x, g[..., 0], backend="triton")[0],
                    "gated_linear_attention": lambda: ops.gated_linear_attention(x, x * 2, x, g, backend="triton")[0]}[name]()
        return f
    yield from ((n, att(n)) for n in ("linear_attention", "retention", "simple_gla", "gated_linear_attention"))
    yield "rms_norm", lambda x: fused.rms_norm(x, None, 1e-6, gate=x * 2, backend="triton")
    yield "swiglu", lambda x: fused.swiglu(x, x * 2, backend="triton")
    pos = lambda x: torch.arange(x.shape[1], device=x.device).expand(x.shape[:2])  # noqa: E731
    inv = lambda x: torch.ones(x.shape[-1] // 2, device=x.device)  # noqa: E731
    yield "rotary", lambda x: fused.rotary(x, x * 2, pos(x), inv(x), backend="triton")[0]
    yield "normalize_linear_attention", lambda x: ops.normalize_linear_attention(
        x, x.abs(), x.abs(), 0.5, backend="triton")[0]
    yield "cross_entropy_sum", lambda x: fused.cross_entropy_sum(x.reshape(-1, x.shape[-1]),
                                                                 torch.zeros(x[..., 0].numel(), dtype=torch.long))


@pytest.mark.parametrize("name,fn", list(_triton_ops_to_second_order()))
def test_double_backward_is_refused_not_silently_dropped(name, fn):
    """create_graph=True through a kernel-backed backward used to return a gradient with no graph (a gradient
    penalty silently dropped); now it is an error naming the op."""
    from devices import DEVICE
    x = torch.randn(1, 12, 2, 8, device=DEVICE, requires_grad=True)
    (gx,) = torch.autograd.grad(fn(x).square().sum(), x)  # first order still works
    assert torch.isfinite(gx).all()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)


def test_recompute_supports_double_backward():
    """linear_recomputing_input under create_graph=True: second-order gradients equal the plain linear(fn(x))."""
    from linattn_models.modules import linear_recomputing_input
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 5, bias=False).double()
    x, u = torch.randn(4, 6, dtype=torch.float64, requires_grad=True), torch.randn(4, 6, dtype=torch.float64)
    fn = lambda a, b: torch.tanh(a) * b  # noqa: E731
    res = []
    for y in (linear_recomputing_input(lin, fn, x, u), lin(fn(x, u))):
        gx, gw = torch.autograd.grad(y.square().sum(), (x, lin.weight), create_graph=True)
        res.append(torch.autograd.grad(gx.square().sum() + gw.sin().sum(), (x, lin.weight)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_environment_variables_in_one_place(monkeypatch):
    """env.py lists every LINATTN_* variable the package reads, the README's table documents each, and a value the
    parser does not understand is an error naming the variable."""
    import re

    from linattn_models import env
    from devices import ROOT as root
    read = set()
    for path in (root / "src" / "linattn_models").rglob("*.py"):
        read |= set(re.findall(r"LINATTN_[A-Z_]+", path.read_text()))
    assert read == set(env.VARIABLES), read ^ set(env.VARIABLES)
    readme = (root / "README.md").read_text()
    assert all(f"| `{name}` |" in readme for name in env.VARIABLES)
    monkeypatch.setenv("LINATTN_FUSED", "maybe")
    with pytest.raises(ValueError, match="LINATTN_FUSED"):
        env.flag("LINATTN_FUSED")
    for src in (root / "src" / "linattn_models").rglob("*.py"):
        if src.name != "env.py":
            assert "os.environ.get(\"LINATTN" not in src.read_text(), src


def test_default_device_is_any_accelerator_torch_sees(monkeypatch):
    """The CLIs and the self-check run on the accelerator torch reports (an Intel XPU too), else on CPU."""
    from linattn_models.ops import bf16_supported, default_device
    real = torch.accelerator.current_accelerator(check_available=True)
    assert default_device() == (real.type if real is not None else "cpu")
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("xpu"))
    assert default_device() == "xpu"
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)
    assert default_device() == "cpu"
    assert bf16_supported("cpu") is False
