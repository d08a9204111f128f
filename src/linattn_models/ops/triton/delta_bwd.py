"""The delta rule, backward kernels (docs/math.md, 'Delta rule'), after W, U (delta_fwd.delta_wy_kernel, from the
forward's kept N) and the state pass recomputed in fp32 (S_0 entering each chunk, V_new).

Per chunk, S_0 its entering state, dS_C the gradient of its leaving state, P = (Q Kᵀ) ⊙ Γ (diagonal included),
G = (K Kᵀ) ⊙ Γ, s the scale; A, N, W, U, V_new as in the forward:

    delta_dvn_local_kernel (per chunk, grid (V blocks, chunks, H)): s Pᵀ dO, the first term of (B1)
    delta_state_bwd_kernel (the reverse pass over chunks, grid (V blocks, N·H)):
        (B1) dV_new  = s Pᵀ dO + (K ⊙ e^{b_C − b}) dS_C
        (B2) dS_prev = e^{b_C} dS_C + s (Q ⊙ e^b)ᵀ dO − Wᵀ dV_new            dh0 = dS_prev of the first chunk
    delta_intra_bwd_kernel (per chunk, grid (chunks, H)), looping over V:
        dR_U = Nᵀ dV_new,   dV = β ⊙ dR_U,   dβ ← rowsum(dR_U ⊙ V),   dg ← −rowsum(V ⊙ dV)
        dP̃ = s (dO V_newᵀ) ⊙ Γ (diagonal included),   dÃ = −strictly_lower(dR_U V_newᵀ) ⊙ Γ     (stored, fp32)
    delta_qk_bwd_kernel (per chunk and K block, grid (K blocks, chunks, H)), looping over V:
        dQ   = s (dO S_0ᵀ) ⊙ e^b + dP̃ K
        dR_W = −Nᵀ (dV_new S_0ᵀ)
        dK   = β e^b ⊙ dR_W + (β ⊙ dÃ) K  +  (V_new dS_Cᵀ) ⊙ e^{b_C − b} + dP̃ᵀ Q + (β ⊙ dÃ)ᵀ K
        dβ  ← rowsum(dR_W ⊙ K ⊙ e^b) + rowsum(dÃ ⊙ K Kᵀ),   dg ← rowsum(Q ⊙ dQ),
        and the chunk-end term ⟨S_C, dS_C⟩ = e^{b_C} ⟨S_0, dS_C⟩ + Σ K ⊙ (V_new dS_Cᵀ) ⊙ e^{b_C − b}
        (partial sums over the program's K block, finished by the next kernel)
    delta_finish_bwd_kernel (grid (chunks, H)): dβ, and the scalar gate's gradient in the v form (docs/math.md, 'Delta rule'),
        dg_t = Σ_{t ≤ i ≤ C} (q_i · dq_i − v_i · dv_i) + ⟨S_C, dS_C⟩     (chunk-local: its error does not grow in T)

Per-key-dimension gate (GATE_VECTOR): the pair factor e^{b_id − b_jd} differs per d, so the products with dP and
D = β ⊙ dA, (X ⋆ Y)_i = Σ_j X_ij (y_j ⊙ e^{b_i − b_j}) and (X ⋆ᵀ Y)_j = Σ_i X_ij (y_i ⊙ e^{b_i − b_j}), come from
gated linear attention's rebased sub-chunk kernel (chunk_bwd.chunk_vector_intra_bwd_kernel, run twice: dP ⋆ K,
dP ⋆ᵀ Q, and D ⋆ K, D ⋆ᵀ K); dP and D are stored without the gate, P and G come from the forward's pair
kernel, and the gate gradient is the k-split form (docs/math.md, 'Delta rule') per d, finished in delta_qk_bwd_kernel.

Transposed operands (Nᵀ, Pᵀ, dP̃ᵀ, dÃᵀ, Qᵀ, Wᵀ, S_0ᵀ) are loaded transposed from memory, never formed by
transposing a dot result (a Hopper miscompile, GPU.md). Arithmetic and matmul operands are fp32.
"""
import triton
import triton.language as tl

from .chunk_bwd import chunk_vector_intra_bwd_kernel
from .common import GATE_SCALAR, GATE_VECTOR, chunk_bounds, load_tile, seq_bounds, store_tile
from .delta_fwd import load_square

_SCALAR: tl.constexpr = tl.constexpr(GATE_SCALAR)
_VECTOR: tl.constexpr = tl.constexpr(GATE_VECTOR)


@triton.jit
def _chunk_gate(gb, start, L, i_h, H: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr):
    """(b [BT], b_C) of the scalar gate; zeros without a gate."""
    rt = tl.arange(0, BT)
    if GATE == _SCALAR:
        b = tl.load(gb + (start + rt) * H + i_h, mask=rt < L, other=0.0)
        b_C = tl.load(gb + (start + L - 1) * H + i_h)
    else:
        b = tl.zeros([BT], dtype=tl.float32)
        b_C = tl.sum(b, axis=0)
    return b, b_C


@triton.jit
def _pair_t(q, k, gb, pq, start, L, i_h, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr,
            GATE: tl.constexpr, DOT_PREC: tl.constexpr):
    """Pᵀ of a chunk, [BT, BT] fp32: Pt[j, i] = P_ij = ⟨q_i, k_j⟩ e^{b_i − b_j} for i ≥ j, else 0."""
    if GATE == _VECTOR:
        return load_square(pq, start, L, i_h, H, BT, True)  # the gate inside
    rt = tl.arange(0, BT)
    Pt = tl.dot(load_tile(k, start, L, 0, H, K, i_h, BT, KP, False, 0.0),
                load_tile(q, start, L, 0, H, K, i_h, BT, KP, True, 0.0), input_precision=DOT_PREC)  # 16-bit: exact
    b, _ = _chunk_gate(gb, start, L, i_h, H, BT, GATE)
    return tl.where(rt[None, :] >= rt[:, None], Pt * tl.exp(tl.minimum(b[None, :] - b[:, None], 0.0)), 0.0)


@triton.jit
def delta_dvn_local_kernel(q, k, do, gb, pq, dvn, cu_seqlens, chunk_indices, scale, T, H: tl.constexpr,
                           K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr,
                           GATE: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """dvn [T, H, V] (fp32) = s Pᵀ dO, (B1)'s chunk-local term, parallel over chunks; the reverse pass adds the
    rest. Grid (V blocks, chunks, H)."""
    i_v, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    Pt = _pair_t(q, k, gb, pq, start, L, i_h, H, K, BT, KP, GATE, DOT_PREC)
    dot_ = load_tile(do, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0).to(tl.float32)
    store_tile(dvn, tl.dot(Pt, dot_, input_precision=DOT_PREC) * scale, start, L, i_v * BV, H, V, i_h, BT, BV)


def launch_dvn_local(queue, *, q, k, do, gb, pq, dvn, cu_seqlens, chunk_indices, scale, T, NT, H, K, V, BT, KP, BV,
                     GATE, VARLEN, DOT_PREC, num_warps, num_stages):
    queue(delta_dvn_local_kernel, (triton.cdiv(V, BV), NT, H), q=q, k=k, do=do, gb=gb, pq=pq, dvn=dvn,
          cu_seqlens=cu_seqlens, chunk_indices=chunk_indices, scale=scale, T=T, H=H, K=K, V=V, BT=BT, KP=KP, BV=BV,
          GATE=GATE, VARLEN=VARLEN, DOT_PREC=DOT_PREC, num_warps=num_warps, num_stages=num_stages)


@triton.jit
def delta_state_bwd_kernel(q, k, w, do, gb, dht, dh, dvn, dh0, cu_seqlens, chunk_offsets, scale, T,
                           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr,
                           BV: tl.constexpr, GATE: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                           VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, DOT16: tl.constexpr):
    """dh [NT, H, K, V] = dS_C of each chunk (in its buffer's dtype), dh0 [N, H, K, V]; dvn [T, H, V] (fp32)
    holds s Pᵀ dO (delta_dvn_local_kernel) and leaves as dV_new. KP ≥ K. Only the products with dS and dV_new are
    sequential. DOT16: their operands in the input dtype (dS and dV_new rounded to it; both kept in fp32)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L_seq, c0 = seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, VARLEN)
    rk = tl.arange(0, KP)
    rv = i_v * BV + tl.arange(0, BV)
    rt = tl.arange(0, BT)
    m_kv = (rk[:, None] < K) & (rv[None, :] < V)
    o_kv = rk[:, None] * V + rv[None, :]
    od: tl.constexpr = k.dtype.element_ty if DOT16 else tl.float32  # the products' operand dtype
    dS = tl.zeros([KP, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0)
    NT = tl.cdiv(L_seq, BT)
    for j in range(NT):
        c = NT - 1 - j
        start = bos + c * BT
        L = tl.minimum(bos + L_seq - start, BT)
        tl.store(dh + ((c0 + c) * H + i_h).to(tl.int64) * K * V + o_kv, dS.to(dh.dtype.element_ty), mask=m_kv)
        kt = load_tile(k, start, L, 0, H, K, i_h, BT, KP, False, 0.0).to(tl.float32)  # [BT, KP]
        qT = load_tile(q, start, L, 0, H, K, i_h, BT, KP, True, 0.0).to(tl.float32)  # [KP, BT]
        dot_ = load_tile(do, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0).to(tl.float32)
        if GATE == _VECTOR:
            b_C = tl.load(gb + ((start + L - 1) * H + i_h) * K + rk, mask=rk < K, other=0.0)  # [KP]
            bk = load_tile(gb, start, L, 0, H, K, i_h, BT, KP, False, 0.0)
            kc = kt * tl.exp(tl.minimum(b_C[None, :] - bk, 0.0))  # kt is 0 past L
            qT = qT * tl.exp(tl.minimum(load_tile(gb, start, L, 0, H, K, i_h, BT, KP, True, 0.0), 0.0))
            decay = tl.exp(b_C)[:, None]
        else:
            b, b_C = _chunk_gate(gb, start, L, i_h, H, BT, GATE)
            kc = kt * tl.where(rt < L, tl.exp(tl.minimum(b_C - b, 0.0)), 0.0)[:, None]
            qT = qT * tl.exp(tl.minimum(b, 0.0))[None, :]
            decay = tl.exp(b_C)
        wT = load_tile(w, start, L, 0, H, K, i_h, BT, KP, True, 0.0)  # [KP, BT]
        x = (load_tile(dvn, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
             + tl.dot(kc.to(od), dS.to(od), input_precision=DOT_PREC))
        dS = (dS * decay + tl.dot(qT.to(od), dot_.to(od), input_precision=DOT_PREC) * scale
              - tl.dot(wT.to(od), x.to(od), input_precision=DOT_PREC))
        store_tile(dvn, x, start, L, i_v * BV, H, V, i_h, BT, BV)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + o_kv, dS, mask=m_kv)


def launch_state_bwd(queue, *, q, k, w, do, gb, dht, dh, dvn, dh0, cu_seqlens, chunk_offsets, scale, T, N, H, K, V,
                     BT, KP, BV, GATE, HAS_DHT, STORE_DH0, VARLEN, DOT_PREC, DOT16, num_warps, num_stages):
    queue(delta_state_bwd_kernel, (triton.cdiv(V, BV), N * H), q=q, k=k, w=w, do=do, gb=gb, dht=dht, dh=dh,
          dvn=dvn, dh0=dh0, cu_seqlens=cu_seqlens, chunk_offsets=chunk_offsets, scale=scale, T=T, H=H, K=K, V=V,
          BT=BT, KP=KP, BV=BV, GATE=GATE, HAS_DHT=HAS_DHT, STORE_DH0=STORE_DH0, VARLEN=VARLEN, DOT_PREC=DOT_PREC,
          DOT16=DOT16, num_warps=num_warps, num_stages=num_stages)


@triton.jit
def delta_intra_bwd_kernel(v, do, beta, gb, pk, n_buf, vn, dvn, dv, dpg, dag, dbeta_v, dgv, cu_seqlens, chunk_indices,
                           scale, T, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                           GATE: tl.constexpr, VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """dv [T, H, V]; dP̃, dÃ [T, H, BT] (fp32); dbeta_v = rowsum(dR_U ⊙ V), dgv = rowsum(V ⊙ dV) [T, H] (fp32)."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    rt = tl.arange(0, BT)
    valid = rt < L
    bet = tl.load(beta + (start + rt) * H + i_h, mask=valid, other=0.0).to(tl.float32)
    Nt = load_square(n_buf, start, L, i_h, H, BT, True)  # Nt[j, i] = N_ij
    dP = tl.zeros([BT, BT], dtype=tl.float32)
    dA = tl.zeros([BT, BT], dtype=tl.float32)
    dbv = tl.zeros([BT], dtype=tl.float32)
    vdv = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        dot_ = load_tile(do, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0).to(tl.float32)
        vnT = load_tile(vn, start, L, i_v * BV, H, V, i_h, BT, BV, True, 0.0).to(tl.float32)  # [BV, BT]
        dP += tl.dot(dot_, vnT, input_precision=DOT_PREC)
        dRU = tl.dot(Nt, load_tile(dvn, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0),
                     input_precision=DOT_PREC)
        vt = load_tile(v, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0).to(tl.float32)
        dvb = dRU * bet[:, None]
        store_tile(dv, dvb, start, L, i_v * BV, H, V, i_h, BT, BV)
        dbv += tl.sum(dRU * vt, axis=1)
        vdv += tl.sum(vt * dvb, axis=1)
        dA += tl.dot(dRU, vnT, input_precision=DOT_PREC)
    if GATE == _VECTOR:  # the pair kernels apply the gate: store dP and D = β ⊙ dA without it
        dP = tl.where(rt[:, None] >= rt[None, :], dP, 0.0) * scale
        dA = tl.where(rt[:, None] > rt[None, :], -dA, 0.0)
        dbv += tl.sum(dA * load_square(pk, start, L, i_h, H, BT, False), axis=1)  # rowsum(dA ⊙ G)
        dA = dA * bet[:, None]
    else:
        b, _ = _chunk_gate(gb, start, L, i_h, H, BT, GATE)
        gam = tl.exp(tl.minimum(b[:, None] - b[None, :], 0.0))
        dP = tl.where(rt[:, None] >= rt[None, :], dP * gam, 0.0) * scale
        dA = tl.where(rt[:, None] > rt[None, :], -dA * gam, 0.0)
    sq = ((start + rt[:, None]) * H + i_h) * BT + rt[None, :]
    tl.store(dpg + sq, dP, mask=valid[:, None])
    tl.store(dag + sq, dA, mask=valid[:, None])
    tl.store(dbeta_v + (start + rt) * H + i_h, dbv, mask=valid)
    tl.store(dgv + (start + rt) * H + i_h, vdv, mask=valid)


def launch_intra_bwd(queue, *, v, do, beta, gb, pk, n_buf, vn, dvn, dv, dpg, dag, dbeta_v, dgv, cu_seqlens,
                     chunk_indices, scale, T, NT, H, V, BT, BV, GATE, VARLEN, DOT_PREC, num_warps, num_stages):
    queue(delta_intra_bwd_kernel, (NT, H), v=v, do=do, beta=beta, gb=gb, pk=pk, n_buf=n_buf, vn=vn, dvn=dvn, dv=dv,
          dpg=dpg, dag=dag, dbeta_v=dbeta_v, dgv=dgv, cu_seqlens=cu_seqlens, chunk_indices=chunk_indices,
          scale=scale, T=T, H=H, V=V, BT=BT, BV=BV, GATE=GATE, VARLEN=VARLEN, DOT_PREC=DOT_PREC,
          num_warps=num_warps, num_stages=num_stages)


@triton.jit
def delta_qk_bwd_kernel(q, k, vn, dvn, do, beta, gb, h, dh, n_buf, dpg, dag, ia_q, ia_k, ib_q, ib_k, dq, dk, dgk,
                        part_beta, part_q, term, cu_seqlens, chunk_indices, scale, T, TT, NT, H: tl.constexpr,
                        K: tl.constexpr,
                        V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                        VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, DOT16: tl.constexpr):
    """dq, dk [T, H, K] for K block i_k (DOT16: the products of the loop over V from input-dtype operands); part_beta, part_q [NK, T, H] and term [NK, NT, H] (fp32): this block's
    share of dβ, of rowsum(q ⊙ dq) and of ⟨S_C, dS_C⟩ (part_q, term: scalar gate only).
    Vector gate: ia_q = dP ⋆ K, ia_k = dP ⋆ᵀ Q, ib_q = D ⋆ K, ib_k = D ⋆ᵀ K (fp32, from gated linear attention's
    chunk_bwd.chunk_vector_intra_bwd_kernel), and this kernel writes the gate gradient dgk [T, H, K] itself (B7):
    dg = chunk-local reverse cumsum of q ⊙ dq + k ⊙ (dk^r − dk^w), plus rowsum(S_C ⊙ dS_C)."""
    i_k, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    rk = i_k * BK + tl.arange(0, BK)
    rt = tl.arange(0, BT)
    valid = rt < L
    off = (i_t.to(tl.int64) * H + i_h) * K * V
    od: tl.constexpr = do.dtype.element_ty if DOT16 else tl.float32  # the V loop's operand dtype
    acc_q = tl.zeros([BT, BK], dtype=tl.float32)  # dO S_0ᵀ
    acc_kw = tl.zeros([BT, BK], dtype=tl.float32)  # V_new dS_Cᵀ
    acc_w = tl.zeros([BT, BK], dtype=tl.float32)  # dV_new S_0ᵀ = −dW
    hs = tl.zeros([BK], dtype=tl.float32)  # rowsum(S_0 ⊙ dS_C)
    for i_v in range(tl.cdiv(V, BV)):
        rv = i_v * BV + tl.arange(0, BV)
        m_vk = (rv[:, None] < V) & (rk[None, :] < K)
        hT = tl.load(h + off + rk[None, :] * V + rv[:, None], mask=m_vk, other=0.0)  # [BV, BK] = S_0ᵀ
        dhT = tl.load(dh + off + rk[None, :] * V + rv[:, None], mask=m_vk, other=0.0)
        hs += tl.sum(hT.to(tl.float32) * dhT.to(tl.float32), axis=0)
        dot_ = load_tile(do, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
        vnt = load_tile(vn, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
        dvnt = load_tile(dvn, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0)
        hT, dhT, vnt, dvnt, dot_ = hT.to(od), dhT.to(od), vnt.to(od), dvnt.to(od), dot_.to(od)
        acc_q += tl.dot(dot_, hT, input_precision=DOT_PREC)
        acc_kw += tl.dot(vnt, dhT, input_precision=DOT_PREC)
        acc_w += tl.dot(dvnt, hT, input_precision=DOT_PREC)
    bet = tl.load(beta + (start + rt) * H + i_h, mask=valid, other=0.0).to(tl.float32)
    qt = load_tile(q, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0).to(tl.float32)
    k_in = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
    kt = k_in.to(tl.float32)
    Nt = load_square(n_buf, start, L, i_h, H, BT, True)
    dRW = -tl.dot(Nt, acc_w, input_precision=DOT_PREC)
    row = i_k * TT * H + (start + rt) * H + i_h
    if GATE == _VECTOR:
        bk = load_tile(gb, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        b_C = tl.load(gb + ((start + L - 1) * H + i_h) * K + rk, mask=rk < K, other=0.0)
        eb = tl.exp(tl.minimum(bk, 0.0))
        acc_kw *= tl.where(valid[:, None], tl.exp(tl.minimum(b_C[None, :] - bk, 0.0)), 0.0)
        t_end = tl.exp(b_C) * hs + tl.sum(kt * acc_kw, axis=0)  # rowsum(S_C ⊙ dS_C), per d
        dq_ = acc_q * eb * scale + load_tile(ia_q, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        dkr = dRW * eb * bet[:, None] + load_tile(ib_q, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
        dkw = (acc_kw + load_tile(ia_k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
               + load_tile(ib_k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0))
        dk_ = dkr + dkw
        db = tl.sum(dRW * kt * eb, axis=1)  # (rowsum(dA ⊙ G) is in delta_intra_bwd_kernel's share)
        x = qt * dq_ + kt * (dkr - dkw)
        store_tile(dgk, tl.cumsum(x, axis=0, reverse=True) + t_end[None, :], start, L, i_k * BK, H, K, i_h, BT, BK)
    else:
        b, b_C = _chunk_gate(gb, start, L, i_h, H, BT, GATE)
        eb = tl.exp(tl.minimum(b, 0.0))
        kT = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, True, 0.0)  # input dtype, for K Kᵀ (exact)
        dPg = load_square(dpg, start, L, i_h, H, BT, False)
        dPgT = load_square(dpg, start, L, i_h, H, BT, True)
        dAg = load_square(dag, start, L, i_h, H, BT, False)
        dAgT = load_square(dag, start, L, i_h, H, BT, True)
        acc_kw *= tl.where(valid, tl.exp(tl.minimum(b_C - b, 0.0)), 0.0)[:, None]
        t_end = tl.exp(b_C) * tl.sum(hs, axis=0) + tl.sum(tl.sum(kt * acc_kw, axis=1), axis=0)
        dq_ = acc_q * (eb * scale)[:, None] + tl.dot(dPg, kt, input_precision=DOT_PREC)
        dk_ = (dRW * (bet * eb)[:, None] + tl.dot(dAg * bet[:, None], kt, input_precision=DOT_PREC)
               + acc_kw + tl.dot(dPgT, qt, input_precision=DOT_PREC)
               + tl.dot(dAgT * bet[None, :], kt, input_precision=DOT_PREC))
        db = (tl.sum(dRW * kt * eb[:, None], axis=1)
              + tl.sum(dAg * tl.dot(k_in, kT, input_precision=DOT_PREC), axis=1))
        if GATE == _SCALAR:
            tl.store(part_q + row, tl.sum(qt * dq_, axis=1), mask=valid)
            tl.store(term + (i_k * NT + i_t) * H + i_h, t_end)
    store_tile(dq, dq_, start, L, i_k * BK, H, K, i_h, BT, BK)
    store_tile(dk, dk_, start, L, i_k * BK, H, K, i_h, BT, BK)
    tl.store(part_beta + row, db, mask=valid)


def launch_qk_bwd(queue, *, q, k, vn, dvn, do, beta, gb, h, dh, n_buf, dpg, dag, ia_q, ia_k, ib_q, ib_k, dq, dk, dgk,
                  part_beta, part_q, term, cu_seqlens, chunk_indices, scale, T, TT, NT, H, K, V, BT, BK, BV, GATE,
                  VARLEN, DOT_PREC, DOT16, num_warps, num_stages):
    queue(delta_qk_bwd_kernel, (triton.cdiv(K, BK), NT, H), q=q, k=k, vn=vn, dvn=dvn, do=do, beta=beta, gb=gb,
          h=h, dh=dh, n_buf=n_buf, dpg=dpg, dag=dag, ia_q=ia_q, ia_k=ia_k, ib_q=ib_q, ib_k=ib_k, dq=dq, dk=dk, dgk=dgk,
          part_beta=part_beta, part_q=part_q, term=term,
          cu_seqlens=cu_seqlens, chunk_indices=chunk_indices, scale=scale, T=T, TT=TT, NT=NT, H=H, K=K, V=V, BT=BT,
          BK=BK, BV=BV, GATE=GATE, VARLEN=VARLEN, DOT_PREC=DOT_PREC, DOT16=DOT16, num_warps=num_warps,
          num_stages=num_stages)


@triton.jit
def delta_finish_bwd_kernel(dbeta_v, dgv, part_beta, part_q, term, dbeta, dg, cu_seqlens, chunk_indices, T, TT,
                            NT, H: tl.constexpr, BT: tl.constexpr, NK: tl.constexpr, GATE: tl.constexpr,
                            VARLEN: tl.constexpr):
    """dβ = dbeta_v + Σ_blocks part_beta; scalar gate: dg = chunk-local reverse cumsum of
    (Σ_blocks part_q − dgv) + Σ_blocks term. Stored in beta's and g's dtypes. Grid (chunks, H)."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    rt = tl.arange(0, BT)
    valid = rt < L
    row = (start + rt) * H + i_h
    db = tl.load(dbeta_v + row, mask=valid, other=0.0)
    for i_k in range(NK):
        db += tl.load(part_beta + i_k * TT * H + row, mask=valid, other=0.0)
    tl.store(dbeta + row, db.to(dbeta.dtype.element_ty), mask=valid)
    if GATE == _SCALAR:
        x = -tl.load(dgv + row, mask=valid, other=0.0)
        c = tl.zeros([1], dtype=tl.float32)
        for i_k in range(NK):
            x += tl.load(part_q + i_k * TT * H + row, mask=valid, other=0.0)
            c += tl.load(term + (i_k * NT + i_t) * H + i_h + tl.zeros([1], dtype=tl.int32))
        out = tl.cumsum(x, axis=0, reverse=True) + tl.sum(c, axis=0)
        tl.store(dg + row, out.to(dg.dtype.element_ty), mask=valid)


def launch_finish_bwd(queue, *, dbeta_v, dgv, part_beta, part_q, term, dbeta, dg, cu_seqlens, chunk_indices, T, TT,
                      NT, H, BT, NK, GATE, VARLEN, num_warps):
    queue(delta_finish_bwd_kernel, (NT, H), dbeta_v=dbeta_v, dgv=dgv, part_beta=part_beta, part_q=part_q,
          term=term, dbeta=dbeta, dg=dg, cu_seqlens=cu_seqlens, chunk_indices=chunk_indices, T=T, TT=TT, NT=NT, H=H,
          BT=BT, NK=NK, GATE=GATE, VARLEN=VARLEN, num_warps=num_warps)


def launch_pair_bwd(queue, *, x, k, gb, dA, out_x, out_k, cu_seqlens, chunk_indices, T, NT, H, K, BT, BC, BK, KP,
                    LIMIT, VARLEN, DOT_PREC, num_warps, num_stages):
    """Per-key-dimension gate: out_x = dA ⋆ K, out_k = dA ⋆ᵀ X (fp32 [T, H, K]) for a lower-triangular dA [T, H, BT]
    stored without the gate, by gated linear attention's rebased sub-chunk kernel
    (chunk_bwd.chunk_vector_intra_bwd_kernel)."""
    queue(chunk_vector_intra_bwd_kernel, (triton.cdiv(K, BK) * (BT // BC), NT, H), q=x, k=k, gb=gb, dA=dA,
          dq=out_x, dk=out_k, cu_seqlens=cu_seqlens, chunk_indices=chunk_indices, T=T, H=H, K=K, BT=BT, BC=BC, BK=BK,
          KP=KP, LIMIT=LIMIT, VARLEN=VARLEN, DOT_PREC=DOT_PREC, num_warps=num_warps, num_stages=num_stages)
