"""Inputs and calls shared by the op tests (reference and Triton): fresh random data unless a seed is given."""
import torch
import torch.nn.functional as F

from linattn_models import ops

FAMILIES = ["linear", "retention", "simple_gla", "gla"]


def make_inputs(family, B, T, H, K, V, strength=1.0, N=None, seed=None, dtype=torch.float64):
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g (log decays, scaled by strength) or None; h0: [N or B, H, K, V]."""
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    g = None
    if family == "simple_gla":
        g = F.logsigmoid(r(B, T, H)) * strength
    elif family == "gla":
        g = F.logsigmoid(r(B, T, H, K)) * strength
    h0 = r(N if N is not None else B, H, K, V)
    return q, k, v, g, h0


def call(family, q, k, v, g, **kw):
    if family == "linear":
        return ops.linear_attention(q, k, v, **kw)
    if family == "retention":
        return ops.retention(q, k, v, **kw)
    if family == "simple_gla":
        return ops.simple_gla(q, k, v, g, **kw)
    return ops.gated_linear_attention(q, k, v, g, **kw)
