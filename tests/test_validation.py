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
