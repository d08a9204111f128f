"""Drop-in names for code written against flash-linear-attention (fla) ops.

`from fla.ops.gla import chunk_gla` becomes `from linattn_models.ops import chunk_gla`: same argument names,
order and [B, T, H, K] layout, same (o, final_state) return. Arguments fla has that we do not implement
(head_first=True, reverse=True, a value gate gv) raise an error naming them instead of being ignored.
The delta rule names (chunk_delta_rule, chunk_gated_delta_rule, fused_recurrent_*) take fla's current argument
order, use_qk_l2norm_in_kernel before cu_seqlens.
"""
import torch

from .api import _run, linear_attention, retention
from .delta import delta_rule, gated_delta_rule
from .reference import compute_dtype
from .validate import check_inputs


def _reject(head_first=False, reverse=False, gv=None, **unknown):
    if head_first:
        raise ValueError("head_first=True is not supported: pass q, k, v as [B, T, H, K]")
    if reverse:
        raise ValueError("reverse=True is not supported")
    if gv is not None:
        raise ValueError("gv (a gate on the value dimension) is not supported")
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")


def _vector(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, mode):
    if g is None:
        raise ValueError("g (or gk): log decays [B, T, H, K] are required")
    check_inputs(q, k, v, g, 4, initial_state=initial_state, cu_seqlens=cu_seqlens, scale=scale)
    return _run(q, k, v, g, "vector", scale, initial_state, output_final_state, cu_seqlens, mode, None)


def _scalar_or_gamma(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens, mode):
    """g: [B, T, H] per-token decays, or g_gamma: [H] constant per-head decays, or neither."""
    if g is not None and g_gamma is not None:
        raise ValueError("pass either g ([B, T, H]) or g_gamma ([H]), not both")
    check_inputs(q, k, v, g, None if g is None else 3, initial_state=initial_state, cu_seqlens=cu_seqlens,
                 scale=scale)  # fla's simple GLA takes no gate at all too
    if g_gamma is None:
        gate = "none" if g is None else "scalar"
    else:
        if not isinstance(g_gamma, torch.Tensor) or tuple(g_gamma.shape) != (q.shape[2],):
            raise ValueError(f"g_gamma must be a tensor of shape [H] = ({q.shape[2]},)")
        if g_gamma.device != q.device:
            raise ValueError(f"g_gamma must be on q's device {q.device}, got {g_gamma.device}")
        if g_gamma.device.type == "cpu" and (g_gamma > 0).any():
            raise ValueError("g_gamma holds log decays and must be <= 0")
        gate, g = "head", g_gamma.to(compute_dtype(q))
    return _run(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode, None)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, **kw):
    _reject(**kw)
    return _vector(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, "chunk")


def fused_recurrent_gla(q, k, v, gk=None, gv=None, scale=None, initial_state=None, output_final_state=False,
                        reverse=False, cu_seqlens=None, **kw):
    _reject(gv=gv, reverse=reverse, **kw)
    return _vector(q, k, v, gk, scale, initial_state, output_final_state, cu_seqlens, "recurrent")


def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, **kw):
    _reject(**kw)
    return _scalar_or_gamma(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens, "chunk")


def fused_recurrent_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                               output_final_state=False, reverse=False, cu_seqlens=None, **kw):
    _reject(reverse=reverse, **kw)
    return _scalar_or_gamma(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens,
                            "recurrent")


def chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, **kw):
    _reject(**kw)
    return retention(q, k, v, scale, initial_state, output_final_state, cu_seqlens, mode="chunk")


def fused_recurrent_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False,
                              cu_seqlens=None, **kw):
    _reject(reverse=reverse, **kw)
    return retention(q, k, v, scale, initial_state, output_final_state, cu_seqlens, mode="recurrent")


def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True,
                      cu_seqlens=None, **kw):
    _reject(**kw)
    return linear_attention(q, k, v, normalize, scale, initial_state, output_final_state, cu_seqlens, mode="chunk")


def fused_recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False,
                                normalize=False, cu_seqlens=None, **kw):
    _reject(reverse=reverse, **kw)
    return linear_attention(q, k, v, normalize, scale, initial_state, output_final_state, cu_seqlens,
                            mode="recurrent")


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, cu_seqlens=None, **kw):
    _reject(**kw)
    return delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel, scale, initial_state, output_final_state, cu_seqlens,
                      mode="chunk")


def fused_recurrent_delta_rule(q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False,
                               use_qk_l2norm_in_kernel=False, cu_seqlens=None, **kw):
    """beta None: 1 for every token (fla's default)."""
    _reject(**kw)
    if beta is None:
        beta = torch.ones(q.shape[:3], dtype=q.dtype, device=q.device)
    return delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel, scale, initial_state, output_final_state, cu_seqlens,
                      mode="recurrent")


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, cu_seqlens=None, **kw):
    _reject(**kw)
    return gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel, scale, initial_state, output_final_state,
                            cu_seqlens, mode="chunk")


def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None, initial_state=None,
                                     output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None, **kw):
    """g: [B, T, H] log decays, or gk: [B, T, H, K] per key dimension, or neither (the plain delta
    rule); beta None: 1 for every token (fla's default)."""
    _reject(gv=gv, **kw)
    if g is not None and gk is not None:
        raise ValueError("pass either g ([B, T, H]) or gk ([B, T, H, K]), not both")
    if beta is None:
        beta = torch.ones(q.shape[:3], dtype=q.dtype, device=q.device)
    gate = g if g is not None else gk
    if gate is None:
        return delta_rule(q, k, v, beta, use_qk_l2norm_in_kernel, scale, initial_state, output_final_state,
                          cu_seqlens, mode="recurrent")
    return gated_delta_rule(q, k, v, gate, beta, use_qk_l2norm_in_kernel, scale, initial_state, output_final_state,
                            cu_seqlens, mode="recurrent")


# fla's fused_chunk_* variants compute the same thing as chunk_*.
fused_chunk_gla, fused_chunk_simple_gla = chunk_gla, chunk_simple_gla
fused_chunk_retention, fused_chunk_linear_attn = chunk_retention, chunk_linear_attn

__all__ = ["chunk_gla", "fused_chunk_gla", "fused_recurrent_gla", "chunk_simple_gla", "fused_chunk_simple_gla",
           "fused_recurrent_simple_gla", "chunk_retention", "fused_chunk_retention", "fused_recurrent_retention",
           "chunk_linear_attn", "fused_chunk_linear_attn", "fused_recurrent_linear_attn", "chunk_delta_rule",
           "fused_recurrent_delta_rule", "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"]
