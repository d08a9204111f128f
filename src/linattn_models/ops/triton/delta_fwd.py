"""The delta rule, forward kernels (docs/math.md, 'Delta rule'): the WY transform per chunk, the state pass, decoding.

Per (sequence, head), chunks of BT rows, b the chunk-local cumulative log gate (scalar gate; b = 0 without one),
Γ_ij = e^{b_i − b_j} (j ≤ i, else 0), s the scale, and row vectors as in docs/math.md:

    delta_wy_kernel     A = strictly lower [β_i (K Kᵀ ⊙ Γ)_ij],   N = (I + A)^{-1}  (fp32, unit_lower_inverse)
                        W = N (β ⊙ K ⊙ e^b),   U = N (β ⊙ V)                      grid (chunks, H)
    delta_state_kernel  per chunk in order, the state S [K, BV] (fp32) on chip, stored entering each chunk:
                        V_new = U − W S (stored),   S ← e^{b_C} S + (K ⊙ e^{b_C − b})ᵀ V_new
                                                                                  grid (V blocks, N·H)
    the output          O = s [(Q ⊙ e^b) S + ((Q Kᵀ) ⊙ Γ) V_new], parallel over chunks: gated linear attention's
                        output kernel (chunk_fwd.chunk_out_kernel) with V_new for V (its O has this form).
    delta_recurrent_kernel   token by token: S ← e^{g_t} S; u = β_t (v_t − k_t S); S += k_tᵀ u; o_t = s q_t S

Per-key-dimension gate (GATE_VECTOR, KDA-style): b is [BT, K]; the pair products ⟨k_i, k_j⟩ and ⟨q_i, k_j⟩
(Σ_d x_id y_jd e^{b_id − b_jd}) come from gated linear attention's rebased sub-chunk kernel
(chunk_fwd.chunk_vector_A_kernel, stored [T, H, BT] fp32: `pk`, `pq`); the rest is elementwise per d:
W = N (β ⊙ K ⊙ e^b), O = s [(Q ⊙ e^b) S + P V_new], S ← Diag(e^{b_C}) S + (K ⊙ e^{b_C − b})ᵀ V_new.

N is formed in 4 blocks of 16 rows (blocked_inverse, the default, wy_blocked): the inverses D_i of the diagonal
blocks by recursive doubling (unit_lower_inverse: the inverse of the diagonal blocks of s rows gives that of 2s rows
by two matmuls), then N_ij = −D_i Σ_{j≤m<i} A_im N_mj below the diagonal; only the 10 blocks on and below the
diagonal are formed. wy_blocked=False runs the doubling on the whole [64, 64] tile (10 products). H200, B=4 T=4K
H=16 D=128 bf16, the W/U/N kernel: a row-by-row solve (63 dependent steps) 1.38 ms, the whole-tile doubling 0.30,
the blocks at 4 warps 0.42 (the [16, 16] products leave warps idle), at 2 warps with 16-bit W/U products 0.21.
|N_ij| ≤ β_i for |k| ≤ 1 (docs/math.md, 'Delta rule'), and each step is the exact block inverse, so it needs no
pivoting. Every exponent is ≤ 0 (b decreases inside a chunk; the clamps only guard masked rows). N is fp32 (tf32
products on a GPU unless fp32 inputs ask for ieee). The forward's W, U products and state pass take input-dtype
(16-bit) operands by default (dot16_delta_wy, dot16_delta_state; fp32 inputs keep fp32), as fla's do: on the H200
0.35 → 0.21 and 0.215 → 0.14 ms, o error against float64 4.1e-3 → 4.4e-3 (gated; fla's 4.4e-3). W, U, h and V_new
are stored in the buffers' dtype: the input's in the forward, fp32 in the backward's recomputation (unless
dot16_delta_bwd, which recomputes them as the forward made them).
Each kernel's launch function sits below it and takes keyword arguments; `queue(kernel, grid, **kw)` launches it
(queues it on the call's plan: launch.Plan).
"""
import triton
import triton.language as tl

from .chunk_fwd import chunk_vector_A_kernel
from .common import GATE_SCALAR, GATE_VECTOR, chunk_bounds, load_tile, seq_bounds, store_tile

_SCALAR: tl.constexpr = tl.constexpr(GATE_SCALAR)  # the gate kinds, as constants the kernels can read
_VECTOR: tl.constexpr = tl.constexpr(GATE_VECTOR)


@triton.jit
def load_square(ptr, start, L, i_h, H: tl.constexpr, BT: tl.constexpr, TRANS: tl.constexpr):
    """A chunk's [BT, BT] matrix stored by rows in a [T, H, BT] buffer (rows past L read as 0); TRANS: its
    transpose, read as such from memory."""
    rt = tl.arange(0, BT)
    if TRANS:
        return tl.load(ptr + ((start + rt[None, :]) * H + i_h) * BT + rt[:, None], mask=rt[None, :] < L, other=0.0)
    return tl.load(ptr + ((start + rt[:, None]) * H + i_h) * BT + rt[None, :], mask=rt[:, None] < L, other=0.0)


@triton.jit
def unit_lower_inverse(A, BT: tl.constexpr, DOT_PREC: tl.constexpr):
    """N = (I + A)^{-1} for a chunk's strictly lower A [BT, BT] (fp32), by recursive doubling with matmuls only:
    D_s, the inverse of the diagonal blocks of s rows, gives D_2s = D_s − D_s A_s D_s, A_s the lower-left s-block
    inside each 2s-block (the exact inverse of [[L11, 0], [L21, L22]]); D_2 = I − A_1 needs no product."""
    rt = tl.arange(0, BT)
    lower = rt[:, None] > rt[None, :]
    N = tl.where(rt[:, None] == rt[None, :], 1.0, 0.0) - tl.where((rt[:, None] // 2 == rt[None, :] // 2) & lower, A,
                                                                  0.0)
    for lvl in tl.static_range(1, 7):  # s = 2, 4, ... while s < BT (BT ≤ 128)
        if (1 << lvl) < BT:
            blk = rt[:, None] // (2 << lvl) == rt[None, :] // (2 << lvl)
            half = rt[:, None] // (1 << lvl) > rt[None, :] // (1 << lvl)
            N -= tl.dot(N, tl.dot(tl.where(blk & half, A, 0.0), N, input_precision=DOT_PREC),
                        input_precision=DOT_PREC)
    return N


@triton.jit
def pair_block(k, start, L, r0: tl.constexpr, c0: tl.constexpr, i_h, H: tl.constexpr, K: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
               DOT_PREC: tl.constexpr):
    """K_r K_cᵀ [BC, BC] (fp32) of the BC-row blocks at chunk rows r0 and c0 (rows past L read as 0); the
    operands in the input dtype (products of 16-bit floats are exact), Kᵀ read transposed from memory."""
    G = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        kr = load_tile(k, start + r0, L - r0, i_k * BK, H, K, i_h, BC, BK, False, 0.0)
        kc = load_tile(k, start + c0, L - c0, i_k * BK, H, K, i_h, BC, BK, True, 0.0)
        G += tl.dot(kr, kc, input_precision=DOT_PREC)
    return G


@triton.jit
def a_block(k, gb, pk, bet, start, L, r0: tl.constexpr, c0: tl.constexpr, i_h, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
            BC: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, DOT_PREC: tl.constexpr):
    """The [BC, BC] block of A = strictly lower [β_i (K Kᵀ ⊙ Γ)_ij] at chunk rows r0, columns c0 (c0 ≤ r0);
    bet: β of rows r0..r0+BC."""
    rc = tl.arange(0, BC)
    if GATE == _VECTOR:  # ⟨k_i, k_j⟩ with the gate inside, 0 above the diagonal
        G = tl.load(pk + ((start + r0 + rc[:, None]) * H + i_h) * BT + c0 + rc[None, :],
                    mask=(r0 + rc)[:, None] < L, other=0.0)
    else:
        G = pair_block(k, start, L, r0, c0, i_h, H, K, BC, BK, DOT_PREC)
        if GATE == _SCALAR:
            b_r = tl.load(gb + (start + r0 + rc) * H + i_h, mask=r0 + rc < L, other=0.0)
            b_c = tl.load(gb + (start + c0 + rc) * H + i_h, mask=c0 + rc < L, other=0.0)
            G *= tl.exp(tl.minimum(b_r[:, None] - b_c[None, :], 0.0))
    G = G * bet[:, None]
    if r0 == c0:
        G = tl.where(rc[:, None] > rc[None, :], G, 0.0)
    return G


@triton.jit
def store_block(n_out, X, start, L, r0: tl.constexpr, c0: tl.constexpr, i_h, H: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    rc = tl.arange(0, BC)
    tl.store(n_out + ((start + r0 + rc[:, None]) * H + i_h) * BT + c0 + rc[None, :], X,
             mask=(r0 + rc)[:, None] < L)


@triton.jit
def blocked_inverse(k, beta, gb, pk, n_out, start, L, i_h, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                    BK: tl.constexpr, GATE: tl.constexpr, DOT_PREC: tl.constexpr):
    """N = (I + A)^{-1} of one chunk by 4 blocks of BC = BT/4 rows, stored into n_out: the diagonal blocks'
    inverses D_i by doubling (unit_lower_inverse), then block forward substitution,
    N_ij = −D_i Σ_{j≤m<i} A_im N_mj (N_jj = D_j). Only the 10 blocks on and below the diagonal are formed: 16-row
    products, ~1/15 of the flops of the doubling on the whole [BT, BT] tile."""
    BC: tl.constexpr = BT // 4
    rc = tl.arange(0, BC)
    b0 = tl.load(beta + (start + rc) * H + i_h, mask=rc < L, other=0.0).to(tl.float32)
    b1 = tl.load(beta + (start + BC + rc) * H + i_h, mask=BC + rc < L, other=0.0).to(tl.float32)
    b2 = tl.load(beta + (start + 2 * BC + rc) * H + i_h, mask=2 * BC + rc < L, other=0.0).to(tl.float32)
    b3 = tl.load(beta + (start + 3 * BC + rc) * H + i_h, mask=3 * BC + rc < L, other=0.0).to(tl.float32)
    D0 = unit_lower_inverse(a_block(k, gb, pk, b0, start, L, 0, 0, i_h, H, K, BT, BC, BK, GATE, DOT_PREC), BC,
                            DOT_PREC)
    D1 = unit_lower_inverse(a_block(k, gb, pk, b1, start, L, BC, BC, i_h, H, K, BT, BC, BK, GATE, DOT_PREC), BC,
                            DOT_PREC)
    D2 = unit_lower_inverse(a_block(k, gb, pk, b2, start, L, 2 * BC, 2 * BC, i_h, H, K, BT, BC, BK, GATE,
                                    DOT_PREC), BC, DOT_PREC)
    D3 = unit_lower_inverse(a_block(k, gb, pk, b3, start, L, 3 * BC, 3 * BC, i_h, H, K, BT, BC, BK, GATE,
                                    DOT_PREC), BC, DOT_PREC)
    A10 = a_block(k, gb, pk, b1, start, L, BC, 0, i_h, H, K, BT, BC, BK, GATE, DOT_PREC)
    A21 = a_block(k, gb, pk, b2, start, L, 2 * BC, BC, i_h, H, K, BT, BC, BK, GATE, DOT_PREC)
    A32 = a_block(k, gb, pk, b3, start, L, 3 * BC, 2 * BC, i_h, H, K, BT, BC, BK, GATE, DOT_PREC)
    A20 = a_block(k, gb, pk, b2, start, L, 2 * BC, 0, i_h, H, K, BT, BC, BK, GATE, DOT_PREC)
    A31 = a_block(k, gb, pk, b3, start, L, 3 * BC, BC, i_h, H, K, BT, BC, BK, GATE, DOT_PREC)
    A30 = a_block(k, gb, pk, b3, start, L, 3 * BC, 0, i_h, H, K, BT, BC, BK, GATE, DOT_PREC)
    N10 = -tl.dot(D1, tl.dot(A10, D0, input_precision=DOT_PREC), input_precision=DOT_PREC)
    N21 = -tl.dot(D2, tl.dot(A21, D1, input_precision=DOT_PREC), input_precision=DOT_PREC)
    N32 = -tl.dot(D3, tl.dot(A32, D2, input_precision=DOT_PREC), input_precision=DOT_PREC)
    N20 = -tl.dot(D2, tl.dot(A20, D0, input_precision=DOT_PREC) + tl.dot(A21, N10, input_precision=DOT_PREC),
                  input_precision=DOT_PREC)
    N31 = -tl.dot(D3, tl.dot(A31, D1, input_precision=DOT_PREC) + tl.dot(A32, N21, input_precision=DOT_PREC),
                  input_precision=DOT_PREC)
    N30 = -tl.dot(D3, tl.dot(A30, D0, input_precision=DOT_PREC) + tl.dot(A31, N10, input_precision=DOT_PREC)
                  + tl.dot(A32, N20, input_precision=DOT_PREC), input_precision=DOT_PREC)
    Z = tl.zeros([BC, BC], dtype=tl.float32)
    store_block(n_out, D0, start, L, 0, 0, i_h, H, BT, BC)
    store_block(n_out, Z, start, L, 0, BC, i_h, H, BT, BC)
    store_block(n_out, Z, start, L, 0, 2 * BC, i_h, H, BT, BC)
    store_block(n_out, Z, start, L, 0, 3 * BC, i_h, H, BT, BC)
    store_block(n_out, N10, start, L, BC, 0, i_h, H, BT, BC)
    store_block(n_out, D1, start, L, BC, BC, i_h, H, BT, BC)
    store_block(n_out, Z, start, L, BC, 2 * BC, i_h, H, BT, BC)
    store_block(n_out, Z, start, L, BC, 3 * BC, i_h, H, BT, BC)
    store_block(n_out, N20, start, L, 2 * BC, 0, i_h, H, BT, BC)
    store_block(n_out, N21, start, L, 2 * BC, BC, i_h, H, BT, BC)
    store_block(n_out, D2, start, L, 2 * BC, 2 * BC, i_h, H, BT, BC)
    store_block(n_out, Z, start, L, 2 * BC, 3 * BC, i_h, H, BT, BC)
    store_block(n_out, N30, start, L, 3 * BC, 0, i_h, H, BT, BC)
    store_block(n_out, N31, start, L, 3 * BC, BC, i_h, H, BT, BC)
    store_block(n_out, N32, start, L, 3 * BC, 2 * BC, i_h, H, BT, BC)
    store_block(n_out, D3, start, L, 3 * BC, 3 * BC, i_h, H, BT, BC)


@triton.jit
def delta_wy_kernel(k, v, beta, gb, pk, n_out, w, u, cu_seqlens, chunk_indices, T, H: tl.constexpr, K: tl.constexpr,
                    V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                    VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, HAS_N: tl.constexpr, BLOCKED: tl.constexpr,
                    DOT16: tl.constexpr):
    """N [T, H, BT] (fp32, row i of the chunk's N; read instead when HAS_N), W [T, H, K], U [T, H, V] (in their
    buffers' dtypes) for chunk i_t, head i_h. BLOCKED: N by 16-row blocks (blocked_inverse, then read back from
    n_out: global stores of a block are visible to its other threads after a barrier), else by doubling on the
    whole tile. DOT16: W and U from N rounded to the input dtype (16-bit tensor-core products)."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    rt = tl.arange(0, BT)
    valid = rt < L
    bet = tl.load(beta + (start + rt) * H + i_h, mask=valid, other=0.0).to(tl.float32)
    if GATE == _SCALAR:
        b = tl.load(gb + (start + rt) * H + i_h, mask=valid, other=0.0)
        rw = bet * tl.exp(tl.minimum(b, 0.0))  # R_W = β ⊙ K ⊙ e^b, by row
    else:
        rw = bet
    if HAS_N:  # the backward: N as the forward stored it
        N = load_square(n_out, start, L, i_h, H, BT, False)
    elif BLOCKED:
        blocked_inverse(k, beta, gb, pk, n_out, start, L, i_h, H, K, BT, BK, GATE, DOT_PREC)
        tl.debug_barrier()
        N = load_square(n_out, start, L, i_h, H, BT, False)
    else:
        if GATE == _VECTOR:
            G = load_square(pk, start, L, i_h, H, BT, False)  # ⟨k_i, k_j⟩, the gate inside
        else:
            G = tl.zeros([BT, BT], dtype=tl.float32)
            for i_k in range(tl.cdiv(K, BK)):
                kt = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)  # input dtype: products of
                kT = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, True, 0.0)  # 16-bit floats are exact
                G += tl.dot(kt, kT, input_precision=DOT_PREC)
            if GATE == _SCALAR:
                G *= tl.exp(tl.minimum(b[:, None] - b[None, :], 0.0))
        N = unit_lower_inverse(tl.where(rt[:, None] > rt[None, :], G * bet[:, None], 0.0), BT, DOT_PREC)
        tl.store(n_out + ((start + rt[:, None]) * H + i_h) * BT + rt[None, :], N, mask=valid[:, None])
    if DOT16:
        N = N.to(k.dtype.element_ty)
    for i_k in range(tl.cdiv(K, BK)):
        kt = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0).to(tl.float32)
        if GATE == _VECTOR:
            bk = load_tile(gb, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
            kt = kt * tl.exp(tl.minimum(bk, 0.0))
        store_tile(w, tl.dot(N, (kt * rw[:, None]).to(N.dtype), input_precision=DOT_PREC), start, L, i_k * BK, H,
                   K, i_h, BT, BK)
    for i_v in range(tl.cdiv(V, BV)):
        vt = load_tile(v, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0).to(tl.float32)
        store_tile(u, tl.dot(N, (vt * bet[:, None]).to(N.dtype), input_precision=DOT_PREC), start, L, i_v * BV, H,
                   V, i_h, BT, BV)


def launch_wy(queue, *, k, v, beta, gb, pk, n_out, w, u, cu_seqlens, chunk_indices, T, NT, H, K, V, BT, BK, BV, GATE,
              VARLEN, DOT_PREC, HAS_N, BLOCKED, DOT16, num_warps, num_stages):
    queue(delta_wy_kernel, (NT, H), k=k, v=v, beta=beta, gb=gb, pk=pk, n_out=n_out, w=w, u=u, cu_seqlens=cu_seqlens,
          chunk_indices=chunk_indices, T=T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=GATE, VARLEN=VARLEN,
          DOT_PREC=DOT_PREC, HAS_N=HAS_N, BLOCKED=BLOCKED, DOT16=DOT16, num_warps=num_warps, num_stages=num_stages)


@triton.jit
def delta_state_kernel(k, w, u, gb, h0, ht, h, vn, cu_seqlens, chunk_offsets, T, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                       HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr, VARLEN: tl.constexpr,
                       DOT_PREC: tl.constexpr, DOT16: tl.constexpr):
    """The sequential pass of sequence i_n, head i_h, V block i_v; KP ≥ K (V_new needs all of W S).
    h [NT, H, K, V]: the state entering each chunk; vn [T, H, V]: V_new (both in their buffers' dtype: the
    input's for the forward's output kernel, which rounds them to it anyway; fp32 for the backward);
    ht [N, H, K, V] fp32 (STORE_FINAL). DOT16 (the forward, 16-bit inputs): both products take operands in the
    input dtype, S and V_new rounded to it (as the output kernel reads them), the state kept in fp32."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L_seq, c0 = seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, VARLEN)
    rk = tl.arange(0, KP)
    rv = i_v * BV + tl.arange(0, BV)
    rt = tl.arange(0, BT)
    m_kv = (rk[:, None] < K) & (rv[None, :] < V)
    o_kv = rk[:, None] * V + rv[None, :]
    od: tl.constexpr = k.dtype.element_ty if DOT16 else tl.float32  # the products' operand dtype
    S = tl.zeros([KP, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0)
    for c in range(tl.cdiv(L_seq, BT)):
        start = bos + c * BT
        L = tl.minimum(bos + L_seq - start, BT)
        tl.store(h + ((c0 + c) * H + i_h).to(tl.int64) * K * V + o_kv, S.to(h.dtype.element_ty), mask=m_kv)
        ws = tl.dot(load_tile(w, start, L, 0, H, K, i_h, BT, KP, False, 0.0).to(od), S.to(od), input_precision=DOT_PREC)
        x = load_tile(u, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0).to(tl.float32) - ws  # V_new; 0 past L
        store_tile(vn, x, start, L, i_v * BV, H, V, i_h, BT, BV)
        kT = load_tile(k, start, L, 0, H, K, i_h, BT, KP, True, 0.0).to(tl.float32)  # [KP, BT]
        if GATE == _SCALAR:
            b = tl.load(gb + (start + rt) * H + i_h, mask=rt < L, other=0.0)
            b_C = tl.load(gb + (start + L - 1) * H + i_h)
            kT = kT * tl.where(rt < L, tl.exp(tl.minimum(b_C - b, 0.0)), 0.0)[None, :]
            S *= tl.exp(b_C)
        elif GATE == _VECTOR:
            b_C = tl.load(gb + ((start + L - 1) * H + i_h) * K + rk, mask=rk < K, other=0.0)  # [KP]
            bT = load_tile(gb, start, L, 0, H, K, i_h, BT, KP, True, 0.0)  # [KP, BT]; kT is 0 past L
            kT = kT * tl.exp(tl.minimum(b_C[:, None] - bT, 0.0))
            S *= tl.exp(b_C)[:, None]
        S += tl.dot(kT.to(od), x.to(od), input_precision=DOT_PREC)
    if STORE_FINAL:
        tl.store(ht + i_nh.to(tl.int64) * K * V + o_kv, S, mask=m_kv)


def launch_state(queue, *, k, w, u, gb, h0, ht, h, vn, cu_seqlens, chunk_offsets, T, N, H, K, V, BT, KP, BV, GATE,
                 HAS_H0, STORE_FINAL, VARLEN, DOT_PREC, DOT16, num_warps, num_stages):
    queue(delta_state_kernel, (triton.cdiv(V, BV), N * H), k=k, w=w, u=u, gb=gb, h0=h0, ht=ht, h=h, vn=vn,
          cu_seqlens=cu_seqlens, chunk_offsets=chunk_offsets, T=T, H=H, K=K, V=V, BT=BT, KP=KP, BV=BV, GATE=GATE,
          HAS_H0=HAS_H0, STORE_FINAL=STORE_FINAL, VARLEN=VARLEN, DOT_PREC=DOT_PREC, DOT16=DOT16, num_warps=num_warps,
          num_stages=num_stages)


@triton.jit
def delta_recurrent_kernel(q, k, v, beta, g, h0, o, ht, cu_seqlens, scale, T, H: tl.constexpr, K: tl.constexpr,
                           V: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                           HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr, VARLEN: tl.constexpr):
    """Token by token for sequence i_n, head i_h, V block i_v (the delta step reads all of K: KP ≥ K).
    g is the raw log gate [T, H] (scalar) or [T, H, K] (vector). Each program reads its state tile first and
    writes the same tile last."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L, _ = seq_bounds(i_n, cu_seqlens, cu_seqlens, T, 1, VARLEN)
    rk = tl.arange(0, KP)
    rv = i_v * BV + tl.arange(0, BV)
    mk, mv = rk < K, rv < V
    m_kv = mk[:, None] & mv[None, :]
    o_kv = rk[:, None] * V + rv[None, :]
    S = tl.zeros([KP, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0)
    for t in range(L):
        row = (bos + t) * H + i_h
        q_t = tl.load(q + row * K + rk, mask=mk, other=0.0).to(tl.float32)
        k_t = tl.load(k + row * K + rk, mask=mk, other=0.0).to(tl.float32)
        v_t = tl.load(v + row * V + rv, mask=mv, other=0.0).to(tl.float32)
        b_t = tl.load(beta + row).to(tl.float32)
        if GATE == _SCALAR:
            S *= tl.exp(tl.load(g + row).to(tl.float32))
        elif GATE == _VECTOR:
            S *= tl.exp(tl.load(g + row * K + rk, mask=mk, other=0.0).to(tl.float32))[:, None]
        x = b_t * (v_t - tl.sum(k_t[:, None] * S, axis=0))
        S += k_t[:, None] * x[None, :]
        tl.store(o + row * V + rv, (tl.sum(q_t[:, None] * S, axis=0) * scale).to(o.dtype.element_ty), mask=mv)
    if STORE_FINAL:
        tl.store(ht + i_nh.to(tl.int64) * K * V + o_kv, S, mask=m_kv)


def launch_recurrent(queue, *, q, k, v, beta, g, h0, o, ht, cu_seqlens, scale, T, N, H, K, V, KP, BV, GATE, HAS_H0,
                     STORE_FINAL, VARLEN, num_warps):
    queue(delta_recurrent_kernel, (triton.cdiv(V, BV), N * H), q=q, k=k, v=v, beta=beta, g=g, h0=h0, o=o, ht=ht,
          cu_seqlens=cu_seqlens, scale=scale, T=T, H=H, K=K, V=V, KP=KP, BV=BV, GATE=GATE, HAS_H0=HAS_H0,
          STORE_FINAL=STORE_FINAL, VARLEN=VARLEN, num_warps=num_warps)


def launch_pair(queue, *, x, k, gb, out, cu_seqlens, chunk_indices, scale, T, NT, H, K, BT, BC, BK, KP, LIMIT,
                VARLEN, DOT_PREC, num_warps, num_stages):
    """Per-key-dimension gate: out [T, H, BT] (fp32) = scale ⟨x_i, k_j⟩ = scale Σ_d x_id k_jd e^{b_id − b_jd} for
    j ≤ i, else 0, by gated linear attention's rebased sub-chunk kernel (chunk_fwd.chunk_vector_A_kernel):
    x = k gives G (the delta rule's A / β), x = q gives P (the forward's output kernel takes s P)."""
    queue(chunk_vector_A_kernel, (BT // BC, NT, H), q=x, k=k, gb=gb, A=out, cu_seqlens=cu_seqlens,
          chunk_indices=chunk_indices, scale=scale, T=T, H=H, K=K, BT=BT, BC=BC, BK=BK, KP=KP, LIMIT=LIMIT,
          VARLEN=VARLEN, DOT_PREC=DOT_PREC, num_warps=num_warps, num_stages=num_stages)
