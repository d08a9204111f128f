"""The delta rule ops (ops.delta_rule, ops.gated_delta_rule), torch backend: the chunked WY form against the
token-by-token recurrence (the definition) in float64 — outputs, final states and every gradient (dq, dk, dv, dbeta,
dg, dh0) — plus input validation. The Triton kernels are tested in test_delta_triton.py.
"""
import pytest
import torch
import torch.nn.functional as F

from linattn_models import ops
from linattn_models.ops.delta_reference import l2norm, run_delta_torch

GATES = ["none", "scalar", "vector"]


def delta_inputs(gate, B, T, H, K, V, N=None, strength=1.0, beta_kind="random", unit_keys=True, seed=0,
                 dtype=torch.float64, device="cpu"):
    """q, k [B, T, H, K], v [B, T, H, V], g (None, [B, T, H] or [B, T, H, K]), beta [B, T, H], h0 [N or B, H, K, V].
    unit_keys: |k| in (0.5, 1) (the delta rule's stable range; the ops' use_qk_l2norm does it for raw keys)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    if unit_keys:
        k = l2norm(k) * (0.5 + 0.5 * torch.rand(B, T, H, 1, generator=gen, dtype=torch.float64))
    if beta_kind == "random":
        beta = torch.sigmoid(r(B, T, H))
    elif beta_kind == "small":
        beta = 1e-4 * (1 + torch.rand(B, T, H, generator=gen, dtype=torch.float64))
    else:  # "one": 1 and just below
        beta = 1 - 1e-3 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
        beta[..., ::2] = 1.0
    g = None
    if gate == "scalar":
        g = F.logsigmoid(r(B, T, H) + 3) * strength
    elif gate == "vector":
        g = F.logsigmoid(r(B, T, H, K) + 3) * strength
    h0 = r(N if N is not None else B, H, K, V)
    cast = lambda t: None if t is None else t.to(dtype).to(device)  # noqa: E731
    return cast(q), cast(k), cast(v), cast(g), cast(beta), h0.to(device).to(
        torch.float64 if dtype == torch.float64 else torch.float32)


def call(q, k, v, g, beta, **kw):
    if g is None:
        return ops.delta_rule(q, k, v, beta, **kw)
    return ops.gated_delta_rule(q, k, v, g, beta, **kw)


def grads(q, k, v, g, beta, h0, seed=1, final=True, **kw):
    """o, final state and the gradients of a random loss of both: dict o, ht, dq, dk, dv, dbeta, [dg], [dh0]."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in
              dict(q=q, k=k, v=v, g=g, beta=beta, h0=h0).items() if t is not None}
    o, s = call(leaves["q"], leaves["k"], leaves["v"], leaves.get("g"), leaves["beta"],
                initial_state=leaves.get("h0"), output_final_state=final, **kw)
    gen = torch.Generator().manual_seed(seed)
    loss = (o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
    if final:
        loss = loss + (s.double() * torch.randn(s.shape, generator=gen, dtype=torch.float64).to(s.device)).sum()
    loss.backward()
    out = {"o": o.detach(), "ht": None if s is None else s.detach()}
    out.update({f"d{n}": t.grad for n, t in leaves.items()})
    return {n: t for n, t in out.items() if t is not None}


def assert_close(a, b, tol=1e-10):
    assert a.keys() == b.keys()
    for n in a:
        x, y = a[n], b[n]
        assert x.shape == y.shape, n
        assert torch.isfinite(x).all(), n
        err = ((x - y).abs().max() / y.abs().max().clamp_min(1e-300)).item()
        assert err < tol, f"{n}: relative error {err:.3g}"


def both_modes(*inputs, **kw):
    a = grads(*inputs, mode="chunk", backend="torch", **kw)
    b = grads(*inputs, mode="recurrent", backend="torch", **kw)
    assert_close(a, b)
    return a


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("T", [1, 63, 100, 130])
@pytest.mark.parametrize("qk_l2norm", [False, True])
def test_chunk_matches_recurrent(gate, T, qk_l2norm):
    both_modes(*delta_inputs(gate, 2, T, 2, 16, 12, unit_keys=not qk_l2norm, seed=T), use_qk_l2norm=qk_l2norm)


@pytest.mark.parametrize("gate", GATES)
def test_varlen(gate):
    """Packed sequences incl. a length-1 one and one of exactly a chunk; equal to running each one alone."""
    lens = [37, 1, 64, 29]
    cu = torch.tensor([0] + lens).cumsum(0)
    x = delta_inputs(gate, 1, sum(lens), 2, 16, 8, N=len(lens), strength=2.0)
    packed = both_modes(*x, cu_seqlens=cu)
    q, k, v, g, beta, h0 = x
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        one = call(q[:, s:e], k[:, s:e], v[:, s:e], None if g is None else g[:, s:e], beta[:, s:e],
                   initial_state=h0[i:i + 1], output_final_state=True, mode="chunk", backend="torch")
        assert torch.allclose(packed["o"][:, s:e], one[0], atol=1e-12)
        assert torch.allclose(packed["ht"][i:i + 1], one[1], atol=1e-12)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
@pytest.mark.parametrize("strength", [1e-3, 30.0, 300.0])
def test_gate_strengths(gate, strength):
    """Weak to very strong decay: per-chunk log gate sums reach thousands without overflow."""
    both_modes(*delta_inputs(gate, 1, 70, 2, 16, 16, strength=strength))


@pytest.mark.parametrize("gate", ["none", "scalar"])
@pytest.mark.parametrize("beta_kind", ["small", "one"])
def test_beta_extremes(gate, beta_kind):
    both_modes(*delta_inputs(gate, 2, 90, 2, 16, 16, beta_kind=beta_kind))


@pytest.mark.parametrize("gate", GATES)
def test_no_state(gate):
    """No initial state, final state not returned."""
    q, k, v, g, beta, _ = delta_inputs(gate, 2, 70, 2, 16, 16)
    both_modes(q, k, v, g, beta, None, final=False)


@pytest.mark.parametrize("gate", ["none", "scalar"])
def test_other_chunk_sizes(gate):
    """The chunked form does not depend on the chunk size (16 and 40 against the default 64)."""
    q, k, v, g, beta, h0 = delta_inputs(gate, 1, 100, 2, 16, 8)
    ref = run_delta_torch(q, k, v, beta, g, 0.3, h0, True, None, "recurrent")
    for C in (16, 40):
        o, s = run_delta_torch(q, k, v, beta, g, 0.3, h0, True, None, "chunk", chunk_size=C)
        assert torch.allclose(o, ref[0], atol=1e-11) and torch.allclose(s, ref[1], atol=1e-11)


def test_recurrence_is_the_delta_rule():
    """The recurrence, one step by hand: S_1 = a (I − β k kᵀ) S_0 + β k vᵀ, o_1 = scale S_1ᵀ q."""
    q, k, v, g, beta, h0 = delta_inputs("scalar", 1, 1, 1, 4, 3)
    o, s = ops.gated_delta_rule(q, k, v, g, beta, scale=0.7, initial_state=h0, output_final_state=True,
                                backend="torch")
    kk, bb, a = k[0, 0, 0], beta[0, 0, 0], g[0, 0, 0].exp()
    eye = torch.eye(4, dtype=torch.float64)
    S1 = a * (eye - bb * torch.outer(kk, kk)) @ h0[0, 0] + bb * torch.outer(kk, v[0, 0, 0])
    assert torch.allclose(s[0, 0], S1) and torch.allclose(o[0, 0, 0], 0.7 * S1.T @ q[0, 0, 0])
    # no gate: delta_rule == gated_delta_rule with g = 0
    o1, s1 = ops.delta_rule(q, k, v, beta, initial_state=h0, output_final_state=True, backend="torch")
    o2, s2 = ops.gated_delta_rule(q, k, v, torch.zeros_like(g), beta, initial_state=h0, output_final_state=True,
                                  backend="torch")
    assert torch.allclose(o1, o2) and torch.allclose(s1, s2)


def test_l2norm_matches_normalising_first():
    q, k, v, g, beta, h0 = delta_inputs("scalar", 1, 40, 2, 16, 8, unit_keys=False)
    a = ops.gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True, initial_state=h0, output_final_state=True)
    b = ops.gated_delta_rule(F.normalize(q, dim=-1, eps=0), F.normalize(k, dim=-1, eps=0), v, g, beta,
                             initial_state=h0, output_final_state=True)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)


def test_float32_chunked_close_to_float64():
    """fp32 (the CPU training path) stays close to the float64 result at T = 256."""
    x = delta_inputs("scalar", 1, 256, 2, 32, 32)
    ref = grads(*x, mode="chunk", backend="torch")
    x32 = [None if t is None else t.float() for t in x]
    got = grads(*x32, mode="chunk", backend="torch")
    for n, r in ref.items():
        assert ((got[n].double() - r).norm() / r.norm()).item() < 1e-5, n


def inputs32(B=1, T=10, H=2, K=8, V=8):
    q, k, v, g, beta, h0 = delta_inputs("scalar", B, T, H, K, V, dtype=torch.float32)
    return q, k, v, g, beta


@pytest.mark.parametrize("bad,match", [
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, b[..., :1]), r"beta must have shape \(1, 10, 2\)"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, b[..., None]), "beta must have 3 dimensions"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, b.long()), "beta must be a floating-point"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, b * 0), r"beta .* must lie in \(0, 2\]"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, b + 2), r"beta .* must lie in \(0, 2\]"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, -b), r"beta .* must lie in \(0, 2\]"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, b * float("nan")), "beta contains NaN"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, [0.5]), "beta must be a torch.Tensor"),
    (lambda q, k, v, g, b: ops.gated_delta_rule(q, k, v, -g, b), "must be <= 0"),
    (lambda q, k, v, g, b: ops.gated_delta_rule(q, k, v, g * float("nan"), b), "g contains NaN"),
    (lambda q, k, v, g, b: ops.gated_delta_rule(q, k, v, g[:, :, :1], b), r"g must have shape \(1, 10, 2\)"),
    (lambda q, k, v, g, b: ops.gated_delta_rule(q, k, v, g[..., None, None], b), "g must have 3 dimensions"),
    (lambda q, k, v, g, b: ops.gated_delta_rule(q, k, v, g, torch.cat([b, b], 2)), r"beta must have shape"),
    (lambda q, k, v, g, b: ops.gated_delta_rule(q, k, torch.cat([v, v], 2), g, b), "v must be"),
    (lambda q, k, v, g, b: ops.delta_rule(q, torch.cat([k, k], 2), v, b), "k must have the shape of q"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, b, mode="fast"), "mode must be"),
    (lambda q, k, v, g, b: ops.delta_rule(q, k, v, b, initial_state=torch.zeros(1, 2, 8, 7)),
     "initial_state must have shape"),
])
def test_bad_arguments(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad(*inputs32())


def test_fla_names_and_signatures():
    """fla's delta rule names: same argument names and order, same (o, final_state) return."""
    from linattn_models.ops import (chunk_delta_rule, chunk_gated_delta_rule, fused_recurrent_delta_rule,
                                    fused_recurrent_gated_delta_rule)
    q, k, v, g, beta, h0 = delta_inputs("scalar", 1, 45, 3, 16, 8, N=2, unit_keys=False)
    cu = torch.tensor([0, 20, 45])

    def same(a, b):
        assert torch.allclose(a[0], b[0], atol=1e-10) and torch.allclose(a[1], b[1], atol=1e-10)
    ref = ops.delta_rule(q, k, v, beta, True, 0.3, h0, True, cu)
    same(chunk_delta_rule(q, k, v, beta, 0.3, h0, True, True, cu), ref)
    same(chunk_delta_rule(q=q, k=k, v=v, beta=beta, scale=0.3, initial_state=h0, output_final_state=True,
                          cu_seqlens=cu, use_qk_l2norm_in_kernel=True), ref)
    same(fused_recurrent_delta_rule(q, k, v, beta, 0.3, h0, True, True, cu), ref)
    same(fused_recurrent_gated_delta_rule(q, k, v, beta=beta, scale=0.3, initial_state=h0, output_final_state=True,
                                          use_qk_l2norm_in_kernel=True, cu_seqlens=cu), ref)
    ref = ops.gated_delta_rule(q, k, v, g, beta, False, None, h0, True, cu)
    same(chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu), ref)
    same(fused_recurrent_gated_delta_rule(q, k, v, g, beta=beta, initial_state=h0, output_final_state=True,
                                          cu_seqlens=cu), ref)
    gk = g[..., None].expand(*g.shape, 16)  # a per-key gate equal over K is the scalar gate
    same(fused_recurrent_gated_delta_rule(q, k, v, gk=gk, beta=beta, initial_state=h0, output_final_state=True,
                                          cu_seqlens=cu), ref)
    # beta None: 1 (fla's default in the fused_recurrent names)
    same(fused_recurrent_delta_rule(q, k, v, initial_state=h0[:1], output_final_state=True),
         ops.delta_rule(q, k, v, torch.ones_like(beta), initial_state=h0[:1], output_final_state=True))


def test_fla_unsupported_arguments_are_named():
    from linattn_models.ops import chunk_delta_rule, chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    q, k, v, g, beta, h0 = delta_inputs("scalar", 1, 10, 2, 8, 8)
    with pytest.raises(ValueError, match="head_first"):
        chunk_delta_rule(q, k, v, beta, head_first=True)
    with pytest.raises(ValueError, match="gv"):
        fused_recurrent_gated_delta_rule(q, k, v, g, gv=g, beta=beta)
    with pytest.raises(ValueError, match="either g"):
        fused_recurrent_gated_delta_rule(q, k, v, g, gk=g[..., None].expand(1, 10, 2, 8), beta=beta)
    with pytest.raises(TypeError, match="allow_neg_eigval"):
        chunk_gated_delta_rule(q, k, v, g, beta, allow_neg_eigval=True)
