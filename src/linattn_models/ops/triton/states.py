"""The sequential pass over chunks: chunk-boundary states (forward) and state gradients (backward).

One kernel for both directions, per (sequence, head) and [BK, BV] tile of the state, with b the chunk-local
cumulative log gate and C the chunk's last valid row:

    forward  (REVERSE=0, x=k, y=v):   store S (the state entering the chunk), then
             S ← diag(e^{b_C}) S + (k ⊙ e^{b_C − b})ᵀ v,            starting from h0 (or 0), ending in S_T
    backward (REVERSE=1, x=q, y=dO):  store dS (the gradient of the state leaving the chunk), then
             dS ← diag(e^{b_C}) dS + s (q ⊙ e^{b})ᵀ dO,             starting from dS_T (or 0), ending in dh0

All exponents are ≤ 0 (b decreases inside a chunk). Stored per global chunk index: buf[NT, H, K, V].
Grid (K blocks, V blocks, N·H).
"""
import torch
import triton
import triton.language as tl

from .alloc import cdiv, new

from .common import GATE_HEAD, GATE_NONE, GATE_SCALAR, load_tile, seq_bounds


@triton.jit
def chunk_state_kernel(x, y, gb, gh, h_init, buf, h_final, cu_seqlens, chunk_offsets, scale, T,
                       H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                       BV: tl.constexpr, GATE: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr,
                       STORE_FINAL: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L_seq, c0 = seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, VARLEN)
    rk = i_k * BK + tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    m_kv = (rk[:, None] < K) & (rv[None, :] < V)
    o_kv = rk[:, None] * V + rv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_INIT:
        S += tl.load(h_init + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0)
    rt = tl.arange(0, BT)
    if GATE == GATE_HEAD:
        g_h = tl.load(gh + i_h).to(tl.float32)
    NT = tl.cdiv(L_seq, BT)
    for j in range(NT):
        if REVERSE:
            c = NT - 1 - j
        else:
            c = j
        start = bos + c * BT
        L = tl.minimum(bos + L_seq - start, BT)
        tl.store(buf + ((c0 + c) * H + i_h) * K * V + o_kv, S.to(buf.dtype.element_ty), mask=m_kv)
        xt = load_tile(x, start, L, i_k * BK, H, K, i_h, BT, BK, True, 0.0)  # [BK, BT]
        yt = load_tile(y, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)  # [BT, BV]
        if GATE == GATE_NONE:
            if REVERSE:
                xt = (xt * scale).to(xt.dtype)
        elif GATE == GATE_HEAD or GATE == GATE_SCALAR:
            if GATE == GATE_HEAD:
                b = (rt + 1).to(tl.float32) * g_h
                b_C = L.to(tl.float32) * g_h
            else:
                b = tl.load(gb + (start + rt) * H + i_h, mask=rt < L, other=0.0)
                b_C = tl.load(gb + (start + L - 1) * H + i_h)
            if REVERSE:
                f = tl.exp(tl.minimum(b, 0.0)) * scale
            else:
                f = tl.exp(tl.minimum(b_C - b, 0.0))
            xt = (xt * tl.where(rt < L, f, 0.0)[None, :]).to(xt.dtype)
            S *= tl.exp(b_C)
        else:
            bt = load_tile(gb, start, L, i_k * BK, H, K, i_h, BT, BK, True, 0.0)  # [BK, BT]
            b_C = tl.load(gb + ((start + L - 1) * H + i_h) * K + rk, mask=rk < K, other=0.0)
            if REVERSE:
                f = tl.exp(tl.minimum(bt, 0.0)) * scale
            else:
                f = tl.exp(tl.minimum(b_C[:, None] - bt, 0.0))
            xt = (xt * f).to(xt.dtype)
            S *= tl.exp(b_C)[:, None]
        S += tl.dot(xt, yt.to(xt.dtype), input_precision=DOT_PREC)
    if STORE_FINAL:
        tl.store(h_final + i_nh.to(tl.int64) * K * V + o_kv, S, mask=m_kv)


def chunk_states(c, *, x, y, b, init, want_final, reverse):
    """Queue the states pass (forward: x=k, y=v, init=h0; reverse: x=q, y=dO, init=dS_T). Returns (buf [NT, H, K,
    V] in c.hdtype, the final state (dh0 when reverse) [N, H, K, V] fp32 or None)."""
    cfg = c.cfg
    buf = new((c.NT, c.H, c.K, c.V), c.hdtype, c.device)
    final = new((c.N, c.H, c.K, c.V), torch.float32, c.device) if want_final else None
    grid = (cdiv(c.K, cfg["BK_state"]), cdiv(c.V, cfg["BV_state"]), c.N * c.H)
    c.plan.queue(chunk_state_kernel, grid, x=x, y=y, gb=b, gh=c.g_head, h_init=c.opt(init), buf=buf,
                 h_final=c.opt(final), cu_seqlens=c.cu, chunk_offsets=c.chunk_offsets, scale=c.scale, T=c.T,
                 H=c.H, K=c.K, V=c.V, BT=cfg["BT"], BK=cfg["BK_state"], BV=cfg["BV_state"], GATE=c.GATE,
                 REVERSE=reverse, HAS_INIT=init is not None, STORE_FINAL=want_final, VARLEN=c.varlen,
                 DOT_PREC=c.prec, **c.launch)
    return buf, final
