"""Property-based tests (hypothesis) over shapes and gate strengths on the pure-PyTorch ops.

Properties: the chunked form equals the recurrence; splitting a sequence anywhere and carrying the state gives
the same result as one run; outputs stay finite under any gate strength.
"""
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from linattn_models import ops

shapes = st.tuples(st.integers(1, 2), st.integers(0, 90), st.integers(1, 3), st.integers(1, 40), st.integers(1, 40))
strength = st.floats(1e-4, 1e4)


def _inputs(shape, strength, per_dim, seed):
    B, T, H, K, V = shape
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    g = F.logsigmoid(r(B, T, H, K) if per_dim else r(B, T, H)) * strength
    return r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), g, r(B, H, K, V)


def _op(per_dim):
    return ops.gated_linear_attention if per_dim else ops.simple_gla


@settings(max_examples=40, deadline=None)
@given(shapes, strength, st.booleans(), st.integers(0, 2**31 - 1))
def test_chunk_equals_recurrence(shape, strength, per_dim, seed):
    q, k, v, g, h0 = _inputs(shape, strength, per_dim, seed)
    a = _op(per_dim)(q, k, v, g, initial_state=h0, output_final_state=True, mode="chunk")
    b = _op(per_dim)(q, k, v, g, initial_state=h0, output_final_state=True, mode="recurrent")
    for x, y in zip(a, b):
        assert torch.isfinite(x).all()
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(shapes, strength, st.booleans(), st.integers(0, 2**31 - 1), st.floats(0, 1))
def test_state_carry_equals_one_run(shape, strength, per_dim, seed, where):
    q, k, v, g, h0 = _inputs(shape, strength, per_dim, seed)
    cut = int(where * shape[1])
    op = _op(per_dim)
    o, s = op(q, k, v, g, initial_state=h0, output_final_state=True, mode="chunk")
    o1, s1 = op(q[:, :cut], k[:, :cut], v[:, :cut], g[:, :cut], initial_state=h0, output_final_state=True)
    o2, s2 = op(q[:, cut:], k[:, cut:], v[:, cut:], g[:, cut:], initial_state=s1, output_final_state=True)
    assert torch.allclose(torch.cat([o1, o2], 1), o, rtol=1e-9, atol=1e-9)
    assert torch.allclose(s2, s, rtol=1e-9, atol=1e-9)
