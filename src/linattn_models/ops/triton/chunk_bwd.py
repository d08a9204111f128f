"""Chunked backward, the parallel part (docs/math.md). Per chunk, with S_0 its entering state, dS_C the gradient of
its leaving state (both from states.py), b the chunk-local cumulative log gate, s the scale, A as in chunk_fwd.py:

    dA_ij = s (dO_i · v_j)  for j ≤ i, else 0
    dv_j  = Σ_{i≥j} A_ij dO_i + (k_j ⊙ e^{b_C − b_j}) dS_C
    dq_i  = s (dO_i S_0ᵀ) ⊙ e^{b_i} + Σ_{j≤i} dA_ij (k_j ⊙ e^{b_i − b_j})
    dk_j  = (v_j dS_Cᵀ) ⊙ e^{b_C − b_j} + Σ_{i≥j} dA_ij (q_i ⊙ e^{b_i − b_j})

The gate gradient follows from the full dq, dk (chunk_dqk_kernel for the vector gate, common.gate_grad_kernel
for the scalar one). For gates none/head/scalar the intra
sums are two matmuls with the masked factor e^{b_i − b_j} on chip; transposed products are computed from loaded
operands (dAᵀ = V dOᵀ, Aᵀ = K Qᵀ), never by transposing a dot result (a Hopper miscompile, docs/gpu.md). For the vector
gate, `chunk_vector_dA_kernel` stores dA and `chunk_vector_intra_bwd_kernel` forms the intra sums in sub-chunks
of BC rows, rebased on a row between i and j:
    dq_i += e^{b_i − b_p} ⊙ Σ_{j≤p} dA_ij (k_j ⊙ e^{b_p − b_j})      p = last row before i's sub-chunk
    dk_j += e^{b_m − b_j} ⊙ Σ_{i>m} dA_ij (q_i ⊙ e^{b_i − b_m})      m = last row of j's sub-chunk
and the sub-chunk's own block either as fp32 (tf32) matmuls on the same rebasings (its decay at most e^-LIMIT, as
in chunk_fwd.py) or summed elementwise with no positive exponent.
"""
import torch
import triton
import triton.language as tl

from .alloc import cdiv, new, np2

from .common import GATE_HEAD, GATE_NONE, GATE_VECTOR, chunk_bounds, load_tile, store_tile, sub_chunk_fits


@triton.jit
def _scalar_decay(gb, gh, start, L, i_h, H: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr):
    """b [BT] (chunk-local cumulative log gate) and b_C for the head (1) and scalar (2) gates."""
    rt = tl.arange(0, BT)
    if GATE == GATE_HEAD:
        g_h = tl.load(gh + i_h).to(tl.float32)
        b = (rt + 1).to(tl.float32) * g_h
        b_C = L.to(tl.float32) * g_h
    else:
        b = tl.load(gb + (start + rt) * H + i_h, mask=rt < L, other=0.0)
        b_C = tl.load(gb + (start + L - 1) * H + i_h)
    return b, b_C


@triton.jit
def chunk_dv_kernel(q, k, do, gb, gh, dh, A, dv, cu_seqlens, chunk_indices, scale, T, H: tl.constexpr,
                    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    GATE: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """dv [T, H, V]; dh [NT, H, K, V] = dS_C per chunk. Grid (V blocks, NT, H)."""
    i_v, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    dt = q.dtype.element_ty
    rv = i_v * BV + tl.arange(0, BV)
    rt = tl.arange(0, BT)
    hp = dh + (i_t.to(tl.int64) * H + i_h) * K * V
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    Pt = tl.zeros([BT, BT], dtype=tl.float32)  # Pt[j, i] = k_j · q_i
    for i_k in range(tl.cdiv(K, BK)):
        rk = i_k * BK + tl.arange(0, BK)
        kt = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        dhk = tl.load(hp + rk[:, None] * V + rv[None, :], mask=(rk[:, None] < K) & (rv[None, :] < V), other=0.0)
        if GATE == GATE_VECTOR:
            bk = load_tile(gb, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
            b_C = tl.load(gb + ((start + L - 1) * H + i_h) * K + rk, mask=rk < K, other=0.0)
            kg = (kt * tl.exp(tl.minimum(b_C[None, :] - bk, 0.0))).to(dt)
            acc += tl.dot(kg, dhk.to(dt), input_precision=DOT_PREC)
        else:
            acc += tl.dot(kt, dhk.to(dt), input_precision=DOT_PREC)
            qt = load_tile(q, start, L, i_k * BK, H, K, i_h, BT, BK, True, 0.0)  # [BK, BT]
            Pt += tl.dot(kt, qt, input_precision=DOT_PREC)
    if GATE == GATE_VECTOR:  # Aᵀ read straight from memory: Pt[j, i] = A[i, j]
        Pt = tl.load(A + ((start + rt[None, :]) * H + i_h) * BT + rt[:, None], mask=rt[None, :] < L, other=0.0)
    else:
        causal_t = rt[None, :] >= rt[:, None]  # i >= j
        if GATE == GATE_NONE:
            Pt = tl.where(causal_t, Pt, 0.0) * scale
        else:
            b, b_C = _scalar_decay(gb, gh, start, L, i_h, H, BT, GATE)
            acc *= tl.where(rt < L, tl.exp(tl.minimum(b_C - b, 0.0)), 0.0)[:, None]
            Pt = tl.where(causal_t, Pt * tl.exp(tl.minimum(b[None, :] - b[:, None], 0.0)), 0.0) * scale
    dot_ = load_tile(do, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
    acc += tl.dot(Pt.to(dt), dot_, input_precision=DOT_PREC)
    store_tile(dv, acc, start, L, i_v * BV, H, V, i_h, BT, BV)


@triton.jit
def chunk_dqk_kernel(q, k, v, do, gb, gh, h, dh, dqi, dki, dq, dk, dgc, cu_seqlens, chunk_indices, scale, T,
                     H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, GATE: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """dq, dk [T, H, K] for chunk i_t, K block i_k. GATE 3: dqi, dki (fp32) hold the intra sums; add the rest.

    The gate gradient needs the chunk-end term rowsum(S_C ⊙ dS_C), S_C the state leaving the chunk:
        rowsum(S_C ⊙ dS_C) = e^{b_C} ⊙ rowsum(S_0 ⊙ dS_C) + Σ_j k_j ⊙ (v_j dS_Cᵀ) ⊙ e^{b_C − b_j}
    GATE 3 finishes dg here (`dgc` is dg [T, H, K]: this program holds the full-precision dq, dk of its K block);
    GATE 2 stores the term in dgc [NT, H, K] and common.gate_grad_kernel sums over K. Grid (K blocks, NT, H).
    """
    NEED_DG: tl.constexpr = GATE >= 2
    i_k, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    dt = q.dtype.element_ty
    rk = i_k * BK + tl.arange(0, BK)
    rt = tl.arange(0, BT)
    off = (i_t.to(tl.int64) * H + i_h) * K * V
    acc_q = tl.zeros([BT, BK], dtype=tl.float32)
    acc_k = tl.zeros([BT, BK], dtype=tl.float32)
    dA = tl.zeros([BT, BT], dtype=tl.float32)  # dA[i, j] = dO_i · v_j
    dAt = tl.zeros([BT, BT], dtype=tl.float32)  # dAt[j, i] = v_j · dO_i
    hs = tl.zeros([BK], dtype=tl.float32)  # rowsum(S_0 ⊙ dS_C)
    for i_v in range(tl.cdiv(V, BV)):
        rv = i_v * BV + tl.arange(0, BV)
        m_vk = (rv[:, None] < V) & (rk[None, :] < K)
        hT = tl.load(h + off + rk[None, :] * V + rv[:, None], mask=m_vk, other=0.0)  # [BV, BK]
        dhT = tl.load(dh + off + rk[None, :] * V + rv[:, None], mask=m_vk, other=0.0)
        if NEED_DG:
            hs += tl.sum(hT.to(tl.float32) * dhT.to(tl.float32), axis=0)
        hT = hT.to(dt)
        dhT = dhT.to(dt)
        dot_ = load_tile(do, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
        vt = load_tile(v, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
        acc_q += tl.dot(dot_, hT, input_precision=DOT_PREC)
        acc_k += tl.dot(vt, dhT, input_precision=DOT_PREC)
        if GATE != 3:
            dA += tl.dot(dot_, load_tile(v, start, L, i_v * BV, H, V, i_h, BT, BV, True, 0.0),
                         input_precision=DOT_PREC)
            dAt += tl.dot(vt, load_tile(do, start, L, i_v * BV, H, V, i_h, BT, BV, True, 0.0),
                          input_precision=DOT_PREC)
    if GATE == GATE_VECTOR:
        bk = load_tile(gb, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        b_C = tl.load(gb + ((start + L - 1) * H + i_h) * K + rk, mask=rk < K, other=0.0)
        acc_q = acc_q * scale * tl.exp(tl.minimum(bk, 0.0))
        acc_q += load_tile(dqi, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        acc_k = acc_k * tl.exp(tl.minimum(b_C[None, :] - bk, 0.0))
        kt = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0).to(tl.float32)
        term = tl.exp(b_C) * hs + tl.sum(kt * acc_k, axis=0)
        acc_k += load_tile(dki, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        # dg_t = Σ_{i ≥ t in the chunk} (q_i ⊙ dq_i − k_i ⊙ dk_i) + term (common.py), from fp32 dq, dk
        qt = load_tile(q, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0).to(tl.float32)
        x = qt * acc_q - kt * acc_k
        store_tile(dgc, tl.cumsum(x, axis=0, reverse=True) + term[None, :], start, L, i_k * BK, H, K, i_h, BT, BK)
    else:
        causal = rt[:, None] >= rt[None, :]
        causal_t = rt[None, :] >= rt[:, None]
        if GATE == GATE_NONE:
            acc_q = acc_q * scale
            dA = tl.where(causal, dA, 0.0) * scale
            dAt = tl.where(causal_t, dAt, 0.0) * scale
        else:
            b, b_C = _scalar_decay(gb, gh, start, L, i_h, H, BT, GATE)
            acc_q = acc_q * (scale * tl.exp(tl.minimum(b, 0.0)))[:, None]
            acc_k = acc_k * tl.where(rt < L, tl.exp(tl.minimum(b_C - b, 0.0)), 0.0)[:, None]
            dA = tl.where(causal, dA * tl.exp(tl.minimum(b[:, None] - b[None, :], 0.0)), 0.0) * scale
            dAt = tl.where(causal_t, dAt * tl.exp(tl.minimum(b[None, :] - b[:, None], 0.0)), 0.0) * scale
        kt = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        if NEED_DG:
            term = tl.exp(b_C) * hs + tl.sum(kt.to(tl.float32) * acc_k, axis=0)
            tl.store(dgc + (i_t.to(tl.int64) * H + i_h) * K + rk, term, mask=rk < K)
        qt = load_tile(q, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        acc_q += tl.dot(dA.to(dt), kt, input_precision=DOT_PREC)
        acc_k += tl.dot(dAt.to(dt), qt, input_precision=DOT_PREC)
    store_tile(dq, acc_q, start, L, i_k * BK, H, K, i_h, BT, BK)
    store_tile(dk, acc_k, start, L, i_k * BK, H, K, i_h, BT, BK)


@triton.jit
def chunk_vector_dA_kernel(v, do, dA, cu_seqlens, chunk_indices, scale, T, H: tl.constexpr, V: tl.constexpr,
                           BT: tl.constexpr, BV: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """dA [T, H, BT] (fp32) = s (dO Vᵀ) ⊙ causal mask, full rows. Grid (NT, H)."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    rt = tl.arange(0, BT)
    acc = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        dot_ = load_tile(do, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
        vt = load_tile(v, start, L, i_v * BV, H, V, i_h, BT, BV, True, 0.0)
        acc += tl.dot(dot_, vt, input_precision=DOT_PREC)
    acc = tl.where(rt[:, None] >= rt[None, :], acc, 0.0) * scale
    tl.store(dA + ((start + rt[:, None]) * H + i_h) * BT + rt[None, :], acc, mask=rt[:, None] < L)


@triton.jit
def chunk_vector_intra_bwd_kernel(q, k, gb, dA, dq, dk, cu_seqlens, chunk_indices, T, H: tl.constexpr,
                                  K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                                  KP: tl.constexpr, LIMIT: tl.constexpr, VARLEN: tl.constexpr,
                                  DOT_PREC: tl.constexpr):
    """Intra-chunk parts of dq, dk (fp32) for the vector gate, rows of sub-chunk i_c, K block i_k.

    As in chunk_vector_A_kernel, the own block of a sub-chunk that fits (sub_chunk_fits) is two fp32 (tf32)
    matmuls (dq rebased on p, dk on m, exponents ≤ LIMIT); else it is summed elementwise.
    Grid (K blocks · BT/BC, NT, H).
    """
    NC: tl.constexpr = BT // BC
    i_kc, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_k, i_c = i_kc // NC, i_kc % NC
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    dt = q.dtype.element_ty
    r0 = i_c * BC
    if r0 < L:
        fits = sub_chunk_fits(gb, start, r0, L, i_h, H, K, BC, KP, LIMIT)
        rk = i_k * BK + tl.arange(0, BK)
        rc = tl.arange(0, BC)
        ri = r0 + rc
        rt = tl.arange(0, BT)
        qi = load_tile(q, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0)
        ki = load_tile(k, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0)
        bi = load_tile(gb, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0)
        b_p = tl.load(gb + ((start + r0 - 1) * H + i_h) * K + rk, mask=rk < tl.where(r0 > 0, K, 0), other=0.0)
        m = tl.minimum(r0 + BC, L) - 1
        b_m = tl.load(gb + ((start + m) * H + i_h) * K + rk, mask=rk < K, other=0.0)
        acc_q = tl.zeros([BC, BK], dtype=tl.float32)  # rebased on p: times e^{b_i − b_p} at the end
        acc_k = tl.zeros([BC, BK], dtype=tl.float32)  # rebased on m: times e^{b_m − b_j} at the end
        # dq from earlier sub-chunks
        if i_c > 0:
            kj = load_tile(k, start, r0, i_k * BK, H, K, i_h, BT, BK, False, 0.0)  # rows j < r0
            bj = load_tile(gb, start, r0, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
            kg = (kj * tl.exp(tl.minimum(b_p[None, :] - bj, 0.0))).to(dt)
            dA_i = tl.load(dA + ((start + ri[:, None]) * H + i_h) * BT + rt[None, :],
                           mask=(ri[:, None] < L) & (rt[None, :] < r0), other=0.0)
            acc_q += tl.dot(dA_i.to(dt), kg, input_precision=DOT_PREC)
        # dk from later sub-chunks
        if m + 1 < L:
            mi = (rt > m) & (rt < L)
            qa = tl.load(q + ((start + rt[:, None]) * H + i_h) * K + rk[None, :],
                         mask=mi[:, None] & (rk[None, :] < K), other=0.0)
            ba = tl.load(gb + ((start + rt[:, None]) * H + i_h) * K + rk[None, :],
                         mask=mi[:, None] & (rk[None, :] < K), other=0.0)
            qg = (qa * tl.exp(tl.minimum(ba - b_m[None, :], 0.0))).to(dt)
            dA_t = tl.load(dA + ((start + rt[None, :]) * H + i_h) * BT + ri[:, None],
                           mask=mi[None, :] & (ri[:, None] < L), other=0.0)  # [BC (j), BT (i)]
            acc_k += tl.dot(dA_t.to(dt), qg, input_precision=DOT_PREC)
        acc_q *= tl.exp(tl.minimum(bi - b_p[None, :], 0.0))
        acc_k *= tl.exp(tl.minimum(b_m[None, :] - bi, 0.0))
        if fits:
            # the own block as fp32 (tf32) matmuls on the same rebasings (chunk_vector_A_kernel says why fp32);
            # factors ≤ e^LIMIT, the clamps only guard masked rows
            dA_s = tl.load(dA + ((start + ri[:, None]) * H + i_h) * BT + ri[None, :],
                           mask=(ri[:, None] < L) & (ri[None, :] < L), other=0.0)  # [BC (i), BC (j)]
            dA_sT = tl.load(dA + ((start + ri[None, :]) * H + i_h) * BT + ri[:, None],
                            mask=(ri[:, None] < L) & (ri[None, :] < L), other=0.0)  # [BC (j), BC (i)]
            ks = ki * tl.exp(tl.minimum(b_p[None, :] - bi, LIMIT))
            qs = qi * tl.exp(tl.minimum(bi - b_m[None, :], LIMIT))
            acc_q += tl.dot(dA_s, ks, input_precision=DOT_PREC) * tl.exp(tl.minimum(bi - b_p[None, :], 0.0))
            acc_k += tl.dot(dA_sT, qs, input_precision=DOT_PREC) * tl.exp(tl.minimum(b_m[None, :] - bi, 0.0))
        else:  # the own block elementwise: no exponent is positive
            for jj in range(BC):
                j = r0 + jj
                mj = rk < tl.where(j < L, K, 0)  # (a scalar & vector mask trips the interpreter)
                kj1 = tl.load(k + ((start + j) * H + i_h) * K + rk, mask=mj, other=0.0).to(tl.float32)
                qj1 = tl.load(q + ((start + j) * H + i_h) * K + rk, mask=mj, other=0.0).to(tl.float32)
                bj1 = tl.load(gb + ((start + j) * H + i_h) * K + rk, mask=mj, other=0.0)
                # column j of dA for rows i of the sub-chunk (i >= j), and row j for its columns (i <= j)
                dA_col = tl.load(dA + ((start + ri) * H + i_h) * BT + j, mask=(ri < L) & (ri >= j), other=0.0)
                dA_row = tl.load(dA + ((start + j) * H + i_h) * BT + ri, mask=ri <= tl.where(j < L, j, -1),
                                 other=0.0)
                acc_q += dA_col[:, None] * kj1[None, :] * tl.exp(tl.minimum(bi - bj1[None, :], 0.0))
                acc_k += dA_row[:, None] * qj1[None, :] * tl.exp(tl.minimum(bj1[None, :] - bi, 0.0))
        store_tile(dq, acc_q, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK)
        store_tile(dk, acc_k, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK)


# --- host-side launches (queued on the call's plan; see call.py) --------------------------------------------------
def vector_dA(c, *, do):
    """dA [B·T, H, BT] (fp32) = s (dO Vᵀ) ⊙ causal mask."""
    cfg = c.cfg
    dA = new((c.TT, c.H, cfg["BT"]), torch.float32, c.device)
    c.plan.queue(chunk_vector_dA_kernel, (c.NT, c.H), v=c.v, do=do, dA=dA, scale=c.scale, H=c.H, V=c.V,
                 BV=cfg["BV_dA"], DOT_PREC=c.prec, **c.chunk_args(), **c.launch)
    return dA


def vector_intra(c, *, b, dA):
    """The vector gate's intra-chunk parts of dq, dk (fp32 [B·T, H, K] each; chunk_dqk finishes them)."""
    cfg = c.cfg
    dqi = new((c.TT, c.H, c.K), torch.float32, c.device)
    dki = new((c.TT, c.H, c.K), torch.float32, c.device)
    grid = (cdiv(c.K, cfg["BK_intra"]) * (cfg["BT"] // cfg["BC"]), c.NT, c.H)
    c.plan.queue(chunk_vector_intra_bwd_kernel, grid, q=c.q, k=c.k, gb=b, dA=dA, dq=dqi, dk=dki, H=c.H, K=c.K,
                 BC=cfg["BC"], BK=cfg["BK_intra"], KP=np2(c.K), LIMIT=c.diag_limit, DOT_PREC=c.prec,
                 **c.chunk_args(), **c.launch)
    return dqi, dki


def chunk_dv(c, *, do, b, dh, A):
    """dv [B·T, H, V] in the input dtype, from the state gradients dh per chunk (and the vector gate's A)."""
    cfg = c.cfg
    dv = new((c.TT, c.H, c.V), c.dtype, c.device)
    c.plan.queue(chunk_dv_kernel, (cdiv(c.V, cfg["BV_dv"]), c.NT, c.H), q=c.q, k=c.k, do=do, gb=b, gh=c.g_head,
                 dh=dh, A=c.opt(A), dv=dv, scale=c.scale, H=c.H, K=c.K, V=c.V, BK=cfg["BK_dv"], BV=cfg["BV_dv"],
                 GATE=c.GATE, DOT_PREC=c.prec, **c.chunk_args(), **c.launch)
    return dv


def chunk_dqk(c, *, do, b, h, dh, dqi, dki, dq, dk, dgc):
    """Fill dq, dk [B·T, H, K] (and, for the vector gate, its dg into dgc; for the scalar gate the chunk-end terms
    rowsum(S_C ⊙ dS_C) into dgc [NT, H, K])."""
    cfg = c.cfg
    c.plan.queue(chunk_dqk_kernel, (cdiv(c.K, cfg["BK_dqk"]), c.NT, c.H), q=c.q, k=c.k, v=c.v, do=do, gb=b,
                 gh=c.g_head, h=h, dh=dh, dqi=c.opt(dqi), dki=c.opt(dki), dq=dq, dk=dk, dgc=c.opt(dgc),
                 scale=c.scale, H=c.H, K=c.K, V=c.V, BK=cfg["BK_dqk"], BV=cfg["BV_dqk"], GATE=c.GATE,
                 DOT_PREC=c.prec, **c.chunk_args(), **c.launch)
