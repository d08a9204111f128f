"""The recurrent form, one token at a time (decoding, short prompts, mode="recurrent"):

    S_t = diag(e^{g_t}) S_{t−1} + k_tᵀ v_t,     o_t = s q_t S_t,     S_0 = h0,  final state S_T

Per (sequence, head) and V block; the whole key dim sits in one [BK ≥ K, BV] fp32 state tile in registers, so
each o_t is complete without a reduction across programs. Grid (V blocks, N·H). Memory-bound on q, k, v, o and
the state read/written once. Its backward is the chunked backward (the same function).
"""
import torch
import triton
import triton.language as tl

from .alloc import cdiv, new

from .common import GATE_HEAD, GATE_SCALAR, GATE_VECTOR, seq_bounds


@triton.jit
def recurrent_kernel(q, k, v, g, gh, h0, o, ht, cu_seqlens, scale, T, H: tl.constexpr, K: tl.constexpr,
                     V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                     HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr, VARLEN: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L, _ = seq_bounds(i_n, cu_seqlens, cu_seqlens, T, 1, VARLEN)
    rk = tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    mk, mv = rk < K, rv < V
    m_kv = mk[:, None] & mv[None, :]
    o_kv = rk[:, None] * V + rv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0)
    if GATE == GATE_HEAD:
        decay = tl.exp(tl.load(gh + i_h).to(tl.float32))
    for t in range(L):
        row = (bos + t) * H + i_h
        q_t = tl.load(q + row * K + rk, mask=mk, other=0.0).to(tl.float32)
        k_t = tl.load(k + row * K + rk, mask=mk, other=0.0).to(tl.float32)
        v_t = tl.load(v + row * V + rv, mask=mv, other=0.0).to(tl.float32)
        if GATE == GATE_HEAD:
            S *= decay
        elif GATE == GATE_SCALAR:
            S *= tl.exp(tl.load(g + row).to(tl.float32))
        elif GATE == GATE_VECTOR:
            S *= tl.exp(tl.load(g + row * K + rk, mask=mk, other=0.0).to(tl.float32))[:, None]
        S += k_t[:, None] * v_t[None, :]
        o_t = tl.sum(q_t[:, None] * S, axis=0) * scale
        tl.store(o + row * V + rv, o_t.to(o.dtype.element_ty), mask=mv)
    if STORE_FINAL:
        tl.store(ht + i_nh.to(tl.int64) * K * V + o_kv, S, mask=m_kv)


def recurrent_forward(c, *, h0, want_final, in_place=False):
    """(o [B·T, H, V], final state or None). in_place: write the final state into h0 and return it (each program
    reads its state tile once, first, and writes the same tile last, so no program sees another's update)."""
    cfg = c.cfg
    o = new((c.TT, c.H, c.V), c.dtype, c.device)
    ht = None
    if in_place:
        ht = h0
    elif want_final:
        ht = new((c.N, c.H, c.K, c.V), torch.float32, c.device)
    # one kernel: launched at once (nothing to compile alongside)
    recurrent_kernel[(cdiv(c.V, cfg["BV_rec"]), c.N * c.H)](
        q=c.q, k=c.k, v=c.v, g=c.opt(c.g), gh=c.g_head, h0=c.opt(h0), o=o, ht=c.opt(ht), cu_seqlens=c.cu,
        scale=c.scale, T=c.T, H=c.H, K=c.K, V=c.V, BK=cfg["BK_rec"], BV=cfg["BV_rec"], GATE=c.GATE,
        HAS_H0=h0 is not None, STORE_FINAL=want_final, VARLEN=c.varlen, num_warps=cfg["num_warps"])
    return o, ht
