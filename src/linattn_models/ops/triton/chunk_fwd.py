"""Chunked forward, the parallel part: per chunk (grid over chunks), given the entering states S_0 from states.py.
(`chunk_onepass_kernel`, last in this file, does the states pass and this part in one kernel for the gate kinds
none/head/scalar when the grid is large enough; see its docstring.)

With b the chunk-local cumulative log gate (b_i = Σ_{t≤i} g_t inside the chunk) and s the scale:

    A_ij = s Σ_d q_id k_jd e^{b_id − b_jd}   (j ≤ i, else 0)
    o_i  = s (q_i ⊙ e^{b_i}) S_0 + Σ_{j≤i} A_ij v_j

`chunk_out_kernel` computes o; for gate kinds none/head/scalar the factor e^{b_i − b_j} is one number per
(i, j), so A = s (Q Kᵀ) ⊙ e^{b_i − b_j} ⊙ mask is formed on chip. For the vector gate (GATE 3) the factor differs
per d and `chunk_vector_A_kernel` computes A first, in sub-chunks of BC rows, rebased on p = the last row
before the sub-chunk (b_p = 0 for the first):

    A_ij = s (q_i ⊙ e^{b_i − b_p}) · (k_j ⊙ e^{b_p − b_j})       (one matmul)

The q factor is ≤ 1 for every row of the sub-chunk; the k factor is ≤ 1 for j ≤ p and ≤ e^LIMIT for j inside the
sub-chunk when its decay is at most e^-LIMIT (checked per sub-chunk at run time: the usual case). Else the
sub-chunk's own block is formed elementwise in fp32 with no positive exponent, all (i, j) pairs at once.
The matmul's operands are in the input dtype: A enters the output kernel's matmul in that dtype anyway (measured
on an H100: fp32/tf32 operands here tripled this kernel's time). The backward (chunk_bwd.py) uses fp32 there.
"""
import torch
import triton
import triton.language as tl

from .alloc import cdiv, new, np2
from .common import (GATE_HEAD, GATE_NONE, GATE_SCALAR, GATE_VECTOR, chunk_bounds, load_tile, seq_bounds, store_tile,
                     sub_chunk_fits)


@triton.jit
def chunk_vector_A_kernel(q, k, gb, A, cu_seqlens, chunk_indices, scale, T, H: tl.constexpr, K: tl.constexpr,
                          BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, KP: tl.constexpr,
                          LIMIT: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """A [T, H, BT] (fp32), rows of sub-chunk i_c of chunk i_t. Grid (BT // BC, NT, H).

    Columns j < r0 are one matmul rebased on p = r0 − 1. When the sub-chunk `fits` (sub_chunk_fits: the decay
    across it is at most e^-LIMIT, the usual case), its own columns join that matmul, their factor e^{b_p − b_j}
    ≤ e^LIMIT; else (very strong gates) they are formed elementwise in fp32 with no positive exponent at all.
    """
    i_c, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    r0 = i_c * BC
    if r0 < L:
        fits = sub_chunk_fits(gb, start, r0, L, i_h, H, K, BC, KP, LIMIT)
        ncol = tl.minimum(tl.where(fits, r0 + BC, r0), L)  # columns in the matmul
        cols = tl.arange(0, BT)
        r = tl.arange(0, BC)[:, None]
        rc = tl.arange(0, BC)[None, :]
        row_ok = (r0 + r) < L
        acc = tl.zeros([BC, BT], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            rk = i_k * BK + tl.arange(0, BK)
            qi = load_tile(q, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0)
            bi = load_tile(gb, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0)
            b_p = tl.load(gb + ((start + r0 - 1) * H + i_h) * K + rk, mask=rk < tl.where(r0 > 0, K, 0), other=0.0)
            kt = load_tile(k, start, ncol, i_k * BK, H, K, i_h, BT, BK, True, 0.0)  # [BK, BT], j < ncol
            bt = load_tile(gb, start, ncol, i_k * BK, H, K, i_h, BT, BK, True, 0.0)
            # exponents: b_p − b_j ≤ 0 for j ≤ p, ≤ LIMIT inside a fitting sub-chunk; the clamp only guards the
            # masked (zero) columns, whose exponent −b_p may be large
            kg = kt * tl.exp(tl.minimum(b_p[:, None] - bt, LIMIT))
            qg = qi * tl.exp(tl.minimum(bi - b_p[None, :], 0.0))
            acc += tl.dot(qg.to(q.dtype.element_ty), kg.to(q.dtype.element_ty), input_precision=DOT_PREC)
        A_rows = A + ((start + r0 + r) * H + i_h) * BT
        if fits:
            tl.store(A_rows + cols[None, :], tl.where(r0 + r >= cols[None, :], acc, 0.0) * scale, mask=row_ok)
        else:
            # the sub-chunk's own block: all BC x BC pairs at once as a [BC, BC, BK] product summed over d (a
            # loop over the BC columns with a load each was latency-bound: 1.3 ms per call at B=4, H=16, T=2K
            # on an H100, 3x fla's two intra kernels together)
            diag = tl.zeros([BC, BC], dtype=tl.float32)
            for i_k in range(tl.cdiv(K, BK)):
                qi = load_tile(q, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0).to(tl.float32)
                bi = load_tile(gb, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0)
                kj = load_tile(k, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0).to(tl.float32)
                diag += tl.sum(qi[:, None, :] * kj[None, :, :]
                               * tl.exp(tl.minimum(bi[:, None, :] - bi[None, :, :], 0.0)), axis=2)
            # the matmul part lives in columns < r0, the own block in r0..r0+BC (causal there): disjoint stores
            tl.store(A_rows + cols[None, :], acc * scale,
                     mask=row_ok & ((cols[None, :] < r0) | (cols[None, :] >= r0 + BC)))
            tl.store(A_rows + r0 + rc, tl.where(r >= rc, diag, 0.0) * scale, mask=row_ok)


@triton.jit
def chunk_out_kernel(q, k, v, gb, gh, h, A, o, cu_seqlens, chunk_indices, scale, T, H: tl.constexpr,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     GATE: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """o [T, H, V] for chunk i_t, V block i_v; h [NT, H, K, V] entering states. Grid (V blocks, NT, H)."""
    i_v, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    dt = q.dtype.element_ty
    rv = i_v * BV + tl.arange(0, BV)
    rt = tl.arange(0, BT)
    hp = h + (i_t.to(tl.int64) * H + i_h) * K * V
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    P = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        rk = i_k * BK + tl.arange(0, BK)
        qt = load_tile(q, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        hk = tl.load(hp + rk[:, None] * V + rv[None, :], mask=(rk[:, None] < K) & (rv[None, :] < V), other=0.0)
        if GATE == GATE_VECTOR:
            bq = load_tile(gb, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
            qt = (qt * tl.exp(tl.minimum(bq, 0.0))).to(dt)
        else:
            kt = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, True, 0.0)  # [BK, BT]
            P += tl.dot(qt, kt, input_precision=DOT_PREC)
        acc += tl.dot(qt, hk.to(dt), input_precision=DOT_PREC)
    if GATE == GATE_VECTOR:
        P = tl.load(A + ((start + rt[:, None]) * H + i_h) * BT + rt[None, :], mask=rt[:, None] < L, other=0.0)
    else:
        causal = rt[:, None] >= rt[None, :]
        if GATE == GATE_NONE:
            P = tl.where(causal, P, 0.0) * scale
        else:
            if GATE == GATE_HEAD:
                b = (rt + 1).to(tl.float32) * tl.load(gh + i_h).to(tl.float32)
            else:
                b = tl.load(gb + (start + rt) * H + i_h, mask=rt < L, other=0.0)
            acc *= tl.exp(tl.minimum(b, 0.0))[:, None]
            P = tl.where(causal, P * tl.exp(tl.minimum(b[:, None] - b[None, :], 0.0)), 0.0) * scale
    vt = load_tile(v, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
    acc = acc * scale + tl.dot(P.to(dt), vt, input_precision=DOT_PREC)
    store_tile(o, acc, start, L, i_v * BV, H, V, i_h, BT, BV)


@triton.jit
def chunk_onepass_kernel(q, k, v, g, gh, h_init, o, h_final, cu_seqlens, chunk_offsets, scale, T,
                         H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr,
                         BV: tl.constexpr, GATE: tl.constexpr, HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr,
                         VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """The whole chunked forward in one pass, for gate kinds none/head/scalar: per (sequence, head, V block) the
    chunks in order, the state S [K, BV] in registers: o_C from S as chunk_out_kernel does, then S updated as
    states.py does. Nothing but o (and the final state) is written, so the forward moves q, k, v and o only
    (the two-kernel form also writes the chunk states, as large as two of q, k, v at BT=64, and reads them back).
    The price is parallelism: N·H·(V/BV) programs, each sequential over its chunks; attention.chunk_forward
    takes this form only when that fills the device. The scalar gate's chunk-local cumsum is taken here.
    Grid (V blocks, N·H); KP ≥ K (one K block: o needs all of q·S).
    """
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L_seq, _ = seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, VARLEN)
    dt = q.dtype.element_ty
    rk = tl.arange(0, KP)
    rv = i_v * BV + tl.arange(0, BV)
    rt = tl.arange(0, BT)
    m_kv = (rk[:, None] < K) & (rv[None, :] < V)
    o_kv = rk[:, None] * V + rv[None, :]
    S = tl.zeros([KP, BV], dtype=tl.float32)
    if HAS_INIT:
        S += tl.load(h_init + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0)
    causal = rt[:, None] >= rt[None, :]
    if GATE == GATE_HEAD:  # the head gate's factors are the same for every chunk: made once, out of the loop
        g_h = tl.load(gh + i_h).to(tl.float32)
        b = (rt + 1).to(tl.float32) * g_h
        eb = tl.exp(b)
        decay = tl.where(causal, tl.exp(tl.minimum(b[:, None] - b[None, :], 0.0)), 0.0) * scale
    for c in range(tl.cdiv(L_seq, BT)):
        start = bos + c * BT
        L = tl.minimum(bos + L_seq - start, BT)
        qt = load_tile(q, start, L, 0, H, K, i_h, BT, KP, False, 0.0)  # [BT, KP]
        kt = load_tile(k, start, L, 0, H, K, i_h, BT, KP, True, 0.0)  # [KP, BT]
        vt = load_tile(v, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)  # [BT, BV]
        P = tl.dot(qt, kt, input_precision=DOT_PREC)
        acc = tl.dot(qt, S.to(dt), input_precision=DOT_PREC)
        if GATE == GATE_NONE:
            P = tl.where(causal, P, 0.0) * scale
            vs = vt
        else:
            if GATE == GATE_HEAD:
                b_C = L.to(tl.float32) * g_h
                acc *= eb[:, None]
                P *= decay
            else:
                b = tl.cumsum(tl.load(g + (start + rt) * H + i_h, mask=rt < L, other=0.0).to(tl.float32), axis=0)
                b_C = tl.sum(tl.where(rt == L - 1, b, 0.0), axis=0)
                acc *= tl.exp(tl.minimum(b, 0.0))[:, None]
                P = tl.where(causal, P * tl.exp(tl.minimum(b[:, None] - b[None, :], 0.0)), 0.0) * scale
            # the state update's factor e^{b_C - b_s} goes on v ([BT, BV], half of k's [K, BT] at BV=64, and k
            # stays as loaded); rows past L are zero in vt already, the clamp guards their b
            vs = (vt * tl.exp(tl.minimum(b_C - b, 0.0))[:, None]).to(dt)
            S *= tl.exp(b_C)
        store_tile(o, acc * scale + tl.dot(P.to(dt), vt, input_precision=DOT_PREC), start, L, i_v * BV, H, V, i_h,
                   BT, BV)
        S += tl.dot(kt, vs, input_precision=DOT_PREC)
    if STORE_FINAL:
        tl.store(h_final + i_nh.to(tl.int64) * K * V + o_kv, S, mask=m_kv)


# --- host-side launches (queued on the call's plan; see call.py) --------------------------------------------------
def vector_A(c, *, b):
    """The vector gate's intra-chunk matrix A [B·T, H, BT] (fp32)."""
    cfg = c.cfg
    A = new((c.TT, c.H, cfg["BT"]), torch.float32, c.device)
    c.plan.queue(chunk_vector_A_kernel, (cfg["BT"] // cfg["BC"], c.NT, c.H), q=c.q, k=c.k, gb=b, A=A,
                 scale=c.scale, H=c.H, K=c.K, BC=cfg["BC"], BK=cfg["BK_A"], KP=np2(c.K), LIMIT=c.diag_limit_A,
                 DOT_PREC=c.prec, **c.chunk_args(), **c.launch)
    return A


def chunk_out(c, *, b, h, A, v=None):
    """o [B·T, H, V] from the entering chunk states h (and the vector gate's A); v: c.v unless given (the delta
    rule's V_new, [B·T, H, V] in the input dtype)."""
    cfg = c.cfg
    o = new((c.TT, c.H, c.V), c.dtype, c.device)
    c.plan.queue(chunk_out_kernel, (cdiv(c.V, cfg["BV_out"]), c.NT, c.H), q=c.q, k=c.k, v=c.v if v is None else v,
                 gb=b, gh=c.g_head, h=h, A=c.opt(A), o=o, scale=c.scale, H=c.H, K=c.K, V=c.V, BK=cfg["BK_out"],
                 BV=cfg["BV_out"], GATE=c.GATE, DOT_PREC=c.prec, **c.chunk_args(), **c.launch)
    return o


def onepass_fits(c):
    """Whether the one-pass forward runs: gate none/head/scalar, K small enough, and enough programs (config)."""
    cfg = c.cfg
    programs = c.N * c.H * cdiv(c.V, cfg["BV_onepass"])
    least = cfg["onepass_min_programs_scalar" if c.GATE == GATE_SCALAR.value else "onepass_min_programs"]
    return c.GATE != GATE_VECTOR.value and c.K <= cfg["onepass_max_K"] and programs >= least


def onepass_forward(c, *, h0, want_final):
    """(o [B·T, H, V], final state or None) in one kernel."""
    cfg = c.cfg
    o = new((c.TT, c.H, c.V), c.dtype, c.device)
    ht = new((c.N, c.H, c.K, c.V), torch.float32, c.device) if want_final else None
    c.plan.queue(chunk_onepass_kernel, (cdiv(c.V, cfg["BV_onepass"]), c.N * c.H), q=c.q, k=c.k, v=c.v,
                 g=c.opt(c.g), gh=c.g_head, h_init=c.opt(h0), o=o, h_final=c.opt(ht), cu_seqlens=c.cu,
                 chunk_offsets=c.chunk_offsets, scale=c.scale, T=c.T, H=c.H, K=c.K, V=c.V, BT=cfg["BT"],
                 KP=np2(c.K), BV=cfg["BV_onepass"], GATE=c.GATE, HAS_INIT=h0 is not None, STORE_FINAL=want_final,
                 VARLEN=c.varlen, DOT_PREC=c.prec, num_warps=cfg["warps_onepass"],
                 num_stages=c.launch["num_stages"])
    return o, ht
