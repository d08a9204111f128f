"""Inputs and calls shared by the op tests (reference and Triton): fresh random data unless a seed is given."""
import torch

from linattn_models import ops
from linattn_models.check import random_op_inputs

FAMILIES = ["linear_attention", "retention", "simple_gla", "gated_linear_attention"]


def make_inputs(family, B, T, H, K, V, strength=1.0, N=None, seed=None, dtype=torch.float64):
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g (log decays, scaled by strength) or None; h0: [N or B, H, K, V]."""
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    return random_op_inputs(family, B, T, H, K, V, N=N, strength=strength, generator=gen, dtype=dtype)


def call(family, q, k, v, g, **kw):
    if family == "linear_attention":
        return ops.linear_attention(q, k, v, **kw)
    if family == "retention":
        return ops.retention(q, k, v, **kw)
    if family == "simple_gla":
        return ops.simple_gla(q, k, v, g, **kw)
    return ops.gated_linear_attention(q, k, v, g, **kw)
