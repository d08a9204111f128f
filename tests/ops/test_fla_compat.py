"""fla's op names and call signatures work on our ops (issue 8): swap the import, keep the call."""
import pytest
import torch
import torch.nn.functional as F

from linattn_models import ops
from linattn_models.ops import (chunk_gla, chunk_linear_attn, chunk_retention, chunk_simple_gla, fused_chunk_gla,
                                fused_recurrent_gla, fused_recurrent_linear_attn, fused_recurrent_retention,
                                fused_recurrent_simple_gla)


def data(T=45, H=3, K=16, V=8, N=2):
    q, k = torch.randn(1, T, H, K, dtype=torch.float64), torch.randn(1, T, H, K, dtype=torch.float64)
    v = torch.randn(1, T, H, V, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(1, T, H, K, dtype=torch.float64))
    h0 = torch.randn(N, H, K, V, dtype=torch.float64)
    return q, k, v, g, h0, torch.tensor([0, 20, T])


def same(a, b):
    assert torch.allclose(a[0], b[0], atol=1e-10) and torch.allclose(a[1], b[1], atol=1e-10)


def test_gla_signatures():
    q, k, v, g, h0, cu = data()
    ref = ops.gated_linear_attention(q, k, v, g, 0.3, h0, True, cu)
    same(chunk_gla(q, k, v, g, 0.3, h0, True, cu), ref)
    same(chunk_gla(q=q, k=k, v=v, g=g, scale=0.3, initial_state=h0, output_final_state=True, cu_seqlens=cu), ref)
    same(fused_chunk_gla(q, k, v, g, scale=0.3, initial_state=h0, output_final_state=True, cu_seqlens=cu), ref)
    same(fused_recurrent_gla(q, k, v, gk=g, scale=0.3, initial_state=h0, output_final_state=True, cu_seqlens=cu), ref)


def test_simple_gla_and_gamma():
    q, k, v, g, h0, cu = data()
    gs = g[..., 0]
    ref = ops.simple_gla(q, k, v, gs, None, h0, True, cu)
    same(chunk_simple_gla(q, k, v, g=gs, initial_state=h0, output_final_state=True, cu_seqlens=cu), ref)
    same(fused_recurrent_simple_gla(q, k, v, gs, initial_state=h0, output_final_state=True, cu_seqlens=cu), ref)
    # g_gamma: constant per-head decays; with RetNet's decays it is retention.
    gamma = ops.retention_log_decays(3, dtype=torch.float64)  # ops.retention uses fp64 decays for fp64 inputs
    ret = ops.retention(q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    same(chunk_simple_gla(q, k, v, g_gamma=gamma, initial_state=h0, output_final_state=True, cu_seqlens=cu), ret)
    same(chunk_retention(q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu), ret)
    same(fused_recurrent_retention(q, k, v, None, h0, True, cu_seqlens=cu), ret)
    # Another set of constant decays equals simple_gla with that gate broadcast.
    gamma2 = -torch.rand(3, dtype=torch.float64)
    exp = ops.simple_gla(q, k, v, gamma2.view(1, 1, 3).expand(1, 45, 3), None, h0, True, cu)
    same(chunk_simple_gla(q, k, v, g_gamma=gamma2, initial_state=h0, output_final_state=True, cu_seqlens=cu), exp)


def test_linear_attn_defaults():
    q, k, v, g, h0, cu = data()
    q, k = F.elu(q) + 1, F.elu(k) + 1
    # fla: chunk_linear_attn normalizes by default, fused_recurrent_linear_attn does not.
    same(chunk_linear_attn(q, k, v, output_final_state=True), ops.linear_attention(q, k, v, True, output_final_state=True))
    same(fused_recurrent_linear_attn(q, k, v, initial_state=h0[:1], output_final_state=True),
         ops.linear_attention(q, k, v, False, initial_state=h0[:1], output_final_state=True))


def test_unsupported_arguments_are_named():
    q, k, v, g, h0, cu = data()
    with pytest.raises(ValueError, match="head_first"):
        chunk_gla(q, k, v, g, head_first=True)
    with pytest.raises(ValueError, match="reverse"):
        fused_recurrent_gla(q, k, v, g, reverse=True)
    with pytest.raises(ValueError, match="gv"):
        fused_recurrent_gla(q, k, v, g, gv=g)
    with pytest.raises(TypeError, match="chunk_size_x"):
        chunk_retention(q, k, v, chunk_size_x=3)
    with pytest.raises(ValueError, match="g_gamma must be"):
        chunk_simple_gla(q, k, v, g_gamma=torch.zeros(2))
    with pytest.raises(ValueError, match="either g"):
        chunk_simple_gla(q, k, v, g=g[..., 0], g_gamma=torch.zeros(3))
