"""Gated linear attention on the kernels: the forward and backward as sequences of launches, the autograd
function around them, and `run_triton` (called by ops/api.py). Each launch function sits beside its kernel.

Forward (chunk): b = chunk-local cumsum of g → states pass (the state entering each chunk) → [A] → o; or, for gate
kinds none/head/scalar when the grid fills the device, chunk_fwd.onepass_forward: one kernel, the state kept in
registers across chunks, so only q, k, v (, g) are read and o written.
Backward: b and the chunk states are RECOMPUTED rather than kept from the forward (the vector gate's intra-chunk
matrix A is kept: see _GatedLinearAttention.forward): storing the states costs T/BT·K·V values per head (256 MB in
fp32 at B=4, H=16, T=4096, K=V=128, per layer: more than q, k, v together), while recomputing is one more
sequential pass, about the cost of the forward's state pass. fp16 inputs cast the fp32 state to fp16 for the
tensor-core product, so states beyond fp16's range (65504) would overflow there: use bf16 or fp32 for such inputs.
Then the reverse states pass (dS per chunk, dh0) → [dA, intra] → dv → dq, dk (+ rowsum(S_C ⊙ dS_C) per chunk) →
dg (chunk-local reverse cumsum of q⊙dq − k⊙dk plus that chunk-end term: common.py says why per chunk, not per
sequence; the vector gate's in the dq, dk kernel itself, which holds its K block's fp32 dq, dk).
mode="recurrent" runs recurrent.py forward and the same chunked backward (identical math).
"""
import torch

from ..validate import refuse_double_backward
from . import chunk_bwd, chunk_fwd, common, recurrent, states
from .call import Call, check_float_inputs, empty_result, writes_in_place
from .alloc import new
from .common import GATE_KINDS

_SCALAR, _VECTOR = GATE_KINDS["scalar"], GATE_KINDS["vector"]


def chunk_forward(c, h0, want_final):
    """(o, final state or None, A): A is the vector gate's intra-chunk matrix (else None), kept for the backward."""
    if chunk_fwd.onepass_fits(c):
        o, ht = chunk_fwd.onepass_forward(c, h0=h0, want_final=want_final)
        c.plan.run()
        return o, ht, None
    b = common.local_cumsum(c)
    h, ht = states.chunk_states(c, x=c.k, y=c.v, b=b, init=h0, want_final=want_final, reverse=False)
    A = chunk_fwd.vector_A(c, b=b) if c.GATE == _VECTOR else None
    o = chunk_fwd.chunk_out(c, b=b, h=h, A=A)
    c.plan.run()
    return o, ht, A


def chunk_backward(c, do, dht, h0, want_dh0, A_kept=None):
    """(dq, dk, dv, dg or None, dh0 or None). A_kept: the forward's intra-chunk matrix of the vector gate
    (recomputed when None)."""
    do = do.to(c.dtype).contiguous().view(c.TT, c.H, c.V)
    b = common.local_cumsum(c)
    h, _ = states.chunk_states(c, x=c.k, y=c.v, b=b, init=h0, want_final=False, reverse=False)
    dh, dh0 = states.chunk_states(c, x=c.q, y=do, b=b, init=dht, want_final=want_dh0, reverse=True)
    vector, scalar = c.GATE == _VECTOR, c.GATE == _SCALAR
    # dq, dk in fp32 where the scalar gate's dg is formed from them afterwards, else in the input dtype
    gdtype = torch.float32 if scalar else c.dtype
    dq = new((c.TT, c.H, c.K), gdtype, c.device)
    dk = new((c.TT, c.H, c.K), gdtype, c.device)
    A = dqi = dki = None
    if vector:
        A = chunk_fwd.vector_A(c, b=b) if A_kept is None else A_kept
        dqi, dki = chunk_bwd.vector_intra(c, b=b, dA=chunk_bwd.vector_dA(c, do=do))
    dv = chunk_bwd.chunk_dv(c, do=do, b=b, dh=dh, A=A)
    dg = new(c.g.shape, c.g.dtype, c.device) if vector else None  # written by chunk_dqk
    dgc = new((c.NT, c.H, c.K), torch.float32, c.device) if scalar else dg
    chunk_bwd.chunk_dqk(c, do=do, b=b, h=h, dh=dh, dqi=dqi, dki=dki, dq=dq, dk=dk, dgc=dgc)
    if scalar:
        dq, dk, dg = common.gate_grad(c, dq=dq, dk=dk, dgc=dgc)
    c.plan.run()
    return dq, dk, dv, dg, dh0


class _GatedLinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, gate, cu_seqlens, mode, output_final_state, overrides):
        c = Call(q, k, v, g, gate, scale, cu_seqlens, overrides)
        A = None
        if mode == "recurrent":
            o, ht = recurrent.recurrent_forward(c, h0=h0, want_final=output_final_state)
        else:
            o, ht, A = chunk_forward(c, h0, output_final_state)
        # The vector gate's A [T, H, 64] (fp32) is kept: recomputing it was the backward's costliest kernel
        # (2.4 ms of 5.3 ms fwd+bwd at B=4, H=16, T=4K, K=128 on an H100), for 256 bytes per token and head,
        # about as much as q and k in bf16 at K=64.
        ctx.save_for_backward(q, k, v, g, h0, cu_seqlens, A)
        ctx.scale, ctx.gate, ctx.overrides = scale, gate, overrides
        return o.view(v.shape[:3] + (v.shape[-1],)), ht

    @staticmethod
    def backward(ctx, do, dht):
        refuse_double_backward("the linear-attention ops on the Triton backend", "use backend='torch' for them")
        q, k, v, g, h0, cu_seqlens, A = ctx.saved_tensors
        grads = gla_backward(q, k, v, g, h0, cu_seqlens, ctx.gate, ctx.scale, do, dht,
                             h0 is not None and ctx.needs_input_grad[4], A=A, overrides=ctx.overrides)
        return grads + (None,) * 6


def gla_backward(q, k, v, g, h0, cu_seqlens, gate, scale, do, dht, want_dh0, A=None, overrides=None):
    """(dq, dk, dv, dg or None, dh0 or None) of a call's inputs (the autograd function's backward, and the
    torch.compile custom op's: ops/library.py, which keeps no A, so the vector gate recomputes it)."""
    c = Call(q, k, v, g, gate, scale, cu_seqlens, overrides)
    if do is None:
        do = torch.zeros_like(v)
    dht = dht.contiguous() if dht is not None else None
    dq, dk, dv, dg, dh0 = chunk_backward(c, do, dht, h0, want_dh0, A)
    # the kernels write every gradient in its input's dtype (the scalar gate's gate-gradient kernel casts dq, dk)
    dq, dk, dv = dq.view(q.shape), dk.view(k.shape), dv.view(v.shape)
    if dg is not None:
        dg = dg.view(g.shape)
    return dq, dk, dv, dg, dh0


def run_triton(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode, in_place=False,
               overrides=None):
    """Gated linear attention through the Triton kernels; see ops/api.py. Returns (o in q.dtype, state or None).

    gate: "none" (g None), "head" (g [H] float32 log decays), "scalar" (g [B, T, H]), "vector" (g [B, T, H, K]).
    mode: "chunk" or "recurrent" (same function; the recurrent one suits decoding).
    in_place: write the final state into initial_state and return that buffer, where it is safe (a no-grad
    recurrent call without cu_seqlens, fp32 contiguous state); else ignored. overrides: config.kernel_config's.
    """
    check_float_inputs(q)
    if gate not in GATE_KINDS:
        raise ValueError(f"gate must be one of {tuple(GATE_KINDS)}, got {gate!r}")
    empty = empty_result(q, v, initial_state, output_final_state, cu_seqlens)
    if empty is not None:
        return empty
    if writes_in_place(in_place, mode, cu_seqlens, output_final_state, initial_state):
        c = Call(q, k, v, g, gate, scale, None, overrides)
        o, ht = recurrent.recurrent_forward(c, h0=initial_state, want_final=True, in_place=True)
        return o.view(v.shape[:3] + (v.shape[-1],)), ht
    if initial_state is not None:
        initial_state = initial_state.to(torch.float32).contiguous()
    return _GatedLinearAttention.apply(q, k, v, g, initial_state, scale, gate, cu_seqlens, mode,
                                       bool(output_final_state), overrides)
