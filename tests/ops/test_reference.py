"""The pure-PyTorch backend: chunked vs the token-by-token recurrence (the definition), in float64.

Outputs, final states and every gradient (dq, dk, dv, dg, dh0) must agree to float64 rounding.
"""
import pytest
import torch
import torch.nn.functional as F

from op_cases import FAMILIES, call, make_inputs

from linattn_models import ops
from linattn_models.ops.reference import run_torch


def grads(family, q, k, v, g, h0, mode, cu_seqlens=None, seed=0):
    """Output, final state and gradients of a random scalar loss of both (so dht is exercised too)."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v) + ((g,) if g is not None else ()) + (h0,)]
    qq, kk, vv = leaves[:3]
    gg = leaves[3] if g is not None else None
    hh = leaves[-1] if h0 is not None else None
    o, s = call(family, qq, kk, vv, gg, initial_state=hh, output_final_state=True, cu_seqlens=cu_seqlens,
                mode=mode, backend="torch")
    gen = torch.Generator().manual_seed(seed)
    wo, ws = torch.randn(o.shape, generator=gen, dtype=o.dtype), torch.randn(s.shape, generator=gen, dtype=s.dtype)
    ((o * wo).sum() + (s * ws).sum()).backward()
    return [o.detach(), s.detach()] + [t.grad for t in leaves]


def assert_close_all(a, b, tol=1e-10):
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, i
        err = (x - y).abs().max().item() / max(1.0, y.abs().max().item())
        assert err < tol, f"tensor {i}: relative error {err:.3g}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("T,K,V", [(1, 16, 16), (63, 32, 48), (100, 24, 16), (257, 16, 20)])
def test_chunk_matches_recurrent(family, T, K, V):
    q, k, v, g, h0 = make_inputs(family, 2, T, 2, K, V, strength=2.0)
    assert_close_all(grads(family, q, k, v, g, h0, "chunk"), grads(family, q, k, v, g, h0, "recurrent"))


@pytest.mark.parametrize("family", ["simple_gla", "gated_linear_attention"])
@pytest.mark.parametrize("strength", [1e-3, 1.0, 30.0, 300.0])
def test_gate_strengths(family, strength):
    """Weak to very strong decay: per-chunk log gate sums reach thousands without overflow."""
    q, k, v, g, h0 = make_inputs(family, 1, 70, 2, 16, 16, strength=strength)
    a = grads(family, q, k, v, g, h0, "chunk")
    assert all(torch.isfinite(t).all() for t in a)
    assert_close_all(a, grads(family, q, k, v, g, h0, "recurrent"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("K", [64, 100, 256])
def test_head_dims(family, K):
    q, k, v, g, h0 = make_inputs(family, 1, 40, 1, K, K)
    assert_close_all(grads(family, q, k, v, g, h0, "chunk"), grads(family, q, k, v, g, h0, "recurrent"))


@pytest.mark.parametrize("family", FAMILIES)
def test_no_initial_state_equals_zero_state(family):
    q, k, v, g, h0 = make_inputs(family, 2, 50, 2, 16, 16)
    o1, s1 = call(family, q, k, v, g, output_final_state=True, backend="torch")
    o2, s2 = call(family, q, k, v, g, initial_state=torch.zeros_like(h0), output_final_state=True, backend="torch")
    assert torch.equal(o1, o2) and torch.allclose(s1, s2)
    _, none = call(family, q, k, v, g, backend="torch")
    assert none is None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_varlen_equals_separate(family, mode):
    lens = [37, 1, 90, 64]
    T = sum(lens)
    cu = torch.tensor([0] + lens).cumsum(0)
    q, k, v, g, h0 = make_inputs(family, 1, T, 2, 16, 24, strength=2.0, N=len(lens))
    packed = grads(family, q, k, v, g, h0, mode, cu_seqlens=cu)
    ref = grads(family, q, k, v, g, h0, "recurrent", cu_seqlens=cu)
    assert_close_all(packed, ref)
    o, s = packed[0], packed[1]
    for n in range(len(lens)):
        a, b = cu[n].item(), cu[n + 1].item()
        gn = None if g is None else g[:, a:b]
        on, sn = call(family, q[:, a:b], k[:, a:b], v[:, a:b], gn, initial_state=h0[n:n + 1],
                      output_final_state=True, mode="recurrent", backend="torch")
        assert torch.allclose(o[:, a:b], on, atol=1e-10) and torch.allclose(s[n:n + 1], sn, atol=1e-10)


def test_state_chaining_equals_one_run():
    """Two calls with the state carried over equal one call over the whole sequence."""
    q, k, v, g, h0 = make_inputs("gated_linear_attention", 1, 120, 2, 16, 16, strength=2.0)
    o, s = ops.gated_linear_attention(q, k, v, g, initial_state=h0, output_final_state=True)
    o1, s1 = ops.gated_linear_attention(q[:, :77], k[:, :77], v[:, :77], g[:, :77], initial_state=h0,
                                        output_final_state=True)
    o2, s2 = ops.gated_linear_attention(q[:, 77:], k[:, 77:], v[:, 77:], g[:, 77:], initial_state=s1,
                                        output_final_state=True)
    assert torch.allclose(torch.cat([o1, o2], 1), o, atol=1e-10) and torch.allclose(s2, s, atol=1e-10)


def test_retention_decays():
    g = ops.retention_log_decays(4, dtype=torch.float64)
    assert torch.allclose(g.exp(), 1 - 2.0 ** (-5 - torch.arange(4.0, dtype=torch.float64)), rtol=1e-15, atol=0)
    q, k, v, _, h0 = make_inputs("retention", 1, 30, 4, 8, 8)
    gexp = g.view(1, 1, 4).expand(1, 30, 4)
    a = ops.retention(q, k, v, initial_state=h0, output_final_state=True, mode="recurrent")
    b = ops.simple_gla(q, k, v, gexp, initial_state=h0, output_final_state=True, mode="recurrent")
    assert torch.allclose(a[0], b[0], rtol=1e-12, atol=1e-12) and torch.allclose(a[1], b[1], rtol=1e-12, atol=1e-12)


def test_definition_by_hand():
    """The recurrence written out in a few lines here (independent of reference.py) for one head."""
    T, K, V = 9, 4, 3
    q, k, v, g, h0 = make_inputs("gated_linear_attention", 1, T, 1, K, V)
    S = h0[0, 0].clone()
    expect = []
    for t in range(T):
        S = torch.diag(g[0, t, 0].exp()) @ S + torch.outer(k[0, t, 0], v[0, t, 0])
        expect.append(K ** -0.5 * q[0, t, 0] @ S)
    o, s = ops.gated_linear_attention(q, k, v, g, initial_state=h0, output_final_state=True, mode="chunk")
    assert torch.allclose(o[0, :, 0], torch.stack(expect), atol=1e-12) and torch.allclose(s[0, 0], S, atol=1e-12)


def test_linear_normalize():
    q, k, v, _, _ = make_inputs("linear_attention", 1, 50, 2, 8, 8)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    o, _ = ops.linear_attention(q, k, v, normalize=True, mode="chunk")
    att = torch.einsum("bihd,bjhd->bhij", q, k).tril()
    expect = torch.einsum("bhij,bjhv->bihv", att / att.sum(-1, keepdim=True), v)
    assert torch.allclose(o, expect, atol=1e-6)
    cu = torch.tensor([0, 20, 50])
    o2, _ = ops.linear_attention(q, k, v, normalize=True, cu_seqlens=cu)
    o3, _ = ops.linear_attention(q[:, 20:], k[:, 20:], v[:, 20:], normalize=True)
    assert torch.allclose(o2[:, 20:], o3, atol=1e-10) and torch.allclose(o2[:, :20], o[:, :20], atol=1e-10)


def test_normalizer_carried_in_pieces():
    """normalize_linear_attention with z0 from the previous piece equals one call (the layer's decode path)."""
    q, k, v, _, _ = make_inputs("linear_attention", 2, 40, 2, 8, 8)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    o, _ = ops.linear_attention(q, k, v)
    full, z_full = ops.normalize_linear_attention(o, q, k, 8 ** -0.5)
    a, z = ops.normalize_linear_attention(o[:, :13], q[:, :13], k[:, :13], 8 ** -0.5)
    b, z = ops.normalize_linear_attention(o[:, 13:], q[:, 13:], k[:, 13:], 8 ** -0.5, z0=z)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, k.sum(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z_full, z)
    with pytest.raises(ValueError, match="z0 cannot be combined with cu_seqlens"):
        ops.normalize_linear_attention(o, q, k, 1.0, z0=z, cu_seqlens=torch.tensor([0, 40]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    q, k, v, g, h0 = make_inputs("gated_linear_attention", 1, 80, 2, 32, 32, strength=1.0)
    o, s = ops.gated_linear_attention(q.to(dtype), k.to(dtype), v.to(dtype), g.to(dtype),
                                      initial_state=h0.float(), output_final_state=True)
    ref, sref = run_torch(q, k, v, g, 32 ** -0.5, h0, True, None, "recurrent")
    assert o.dtype == dtype and s.dtype == torch.float32
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    assert (o.double() - ref).norm() / ref.norm() < tol
    assert (s.double() - sref).norm() / sref.norm() < tol


def test_empty_sequence():
    q, k, v, g, h0 = make_inputs("gated_linear_attention", 1, 0, 2, 8, 8)
    o, s = ops.gated_linear_attention(q, k, v, g, initial_state=h0, output_final_state=True, mode="chunk")
    assert o.shape == (1, 0, 2, 8) and torch.equal(s, h0)
