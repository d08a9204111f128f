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

N is formed in blocks of BS = 16 rows (unit_lower_inverse): the diagonal blocks' inverses D_m by forward
substitution, all blocks at once, then the rest by four matmuls. (A row-by-row solve of the whole chunk took 63
dependent steps on a [64, 64] tile: 1.38 of 2.83 ms of the forward on an H200, B=4 T=4K H=16 D=128 bf16.)
|N_ij| ≤ β_i for |k| ≤ 1 (docs/math.md, 'Delta rule'), so its fp32 solve needs no pivoting.
Every exponent is ≤ 0 (b decreases inside a chunk; the clamps only guard masked rows). The products with N, W and
S take fp32 operands (tf32 on a GPU unless fp32 inputs ask for ieee): V_new = U − W S is the state's prediction
error, which cancels, so its operands are not rounded to the input dtype.
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
def unit_lower_inverse(A, scratch, start, L, i_h, H: tl.constexpr, BT: tl.constexpr, DOT_PREC: tl.constexpr):
    """N = (I + A)^{-1} for a chunk's strictly lower A [BT, BT] (fp32; rows past L are 0), in blocks of BS = 16.

    With D the block diagonal of the diagonal blocks' inverses and M = D · (A below the diagonal blocks), which is
    nilpotent (M^{BT/BS} = 0): N = (I + M)^{-1} D = (I − M)(I + M²)(I + M⁴)… D. Its terms are those of the blocked
    substitution N_mn = −D_m Σ_j A_mj N_jn, so it is as accurate; only the BS-row diagonal blocks are solved row
    by row (BS − 1 steps, every block at once as [BT/BS, BS, BS]). scratch: this chunk's rows of a [T, H, BT] fp32
    buffer, through which A and D change layout (the caller overwrites it with N)."""
    BS: tl.constexpr = 16
    rt = tl.arange(0, BT)
    ptr = scratch + ((start + rt[:, None]) * H + i_h) * BT + rt[None, :]
    tl.store(ptr, A, mask=rt[:, None] < L)
    tl.debug_barrier()  # the stores above are read below by other threads of this program
    rb = tl.arange(0, BT // BS)[:, None, None]
    ri = tl.arange(0, BS)[None, :, None]
    rj = tl.arange(0, BS)[None, None, :]
    p3 = scratch + ((start + rb * BS + ri) * H + i_h) * BT + rb * BS + rj
    A3 = tl.load(p3, mask=rb * BS + ri < L, other=0.0)  # the diagonal blocks, [BT/BS, BS, BS]
    D3 = tl.where(ri == rj, 1.0, 0.0) + tl.zeros([BT // BS, BS, BS], dtype=tl.float32)
    for i in range(1, BS):  # row i of every block: e_i − Σ_{j<i} A_ij D_j (rows j < i are final)
        a_i = tl.sum(tl.where(ri == i, A3, 0.0), axis=1)  # [blocks, j]
        D3 = tl.where(ri == i, D3 - tl.sum(a_i[:, :, None] * D3, axis=1)[:, None, :], D3)
    tl.debug_barrier()  # every thread has read A's diagonal blocks before they are overwritten
    tl.store(p3, D3, mask=rb * BS + ri < L)
    tl.debug_barrier()
    same = rt[:, None] // BS == rt[None, :] // BS
    D = tl.load(ptr, mask=(rt[:, None] < L) & same, other=0.0)  # block diagonal [BT, BT]
    M = tl.dot(D, tl.where(same, 0.0, A), input_precision=DOT_PREC)
    eye = tl.where(rt[:, None] == rt[None, :], 1.0, 0.0)
    X = eye - M
    for s in tl.static_range(1, 4):  # the factors (I + M^(2^s)) while 2^s < BT/BS (BT ≤ 128)
        if (1 << s) * BS < BT:
            M = tl.dot(M, M, input_precision=DOT_PREC)
            X += tl.dot(X, M, input_precision=DOT_PREC)
    N = tl.dot(X, D, input_precision=DOT_PREC)
    tl.debug_barrier()  # D is read by every thread before the caller stores N over it
    return N


@triton.jit
def delta_wy_kernel(k, v, beta, gb, pk, n_out, w, u, cu_seqlens, chunk_indices, T, H: tl.constexpr, K: tl.constexpr,
                    V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                    VARLEN: tl.constexpr, DOT_PREC: tl.constexpr):
    """N [T, H, BT] (fp32, row i of the chunk's N), W [T, H, K], U [T, H, V] for chunk i_t, head i_h."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    rt = tl.arange(0, BT)
    valid = rt < L
    bet = tl.load(beta + (start + rt) * H + i_h, mask=valid, other=0.0).to(tl.float32)
    if GATE == _VECTOR:
        G = load_square(pk, start, L, i_h, H, BT, False)  # ⟨k_i, k_j⟩, the gate inside
    else:
        G = tl.zeros([BT, BT], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            kt = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0).to(tl.float32)
            kT = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, True, 0.0).to(tl.float32)
            G += tl.dot(kt, kT, input_precision=DOT_PREC)
    if GATE == _SCALAR:
        b = tl.load(gb + (start + rt) * H + i_h, mask=valid, other=0.0)
        G *= tl.exp(tl.minimum(b[:, None] - b[None, :], 0.0))
        rw = bet * tl.exp(tl.minimum(b, 0.0))  # R_W = β ⊙ K ⊙ e^b, by row
    else:
        rw = bet
    A = tl.where(rt[:, None] > rt[None, :], G * bet[:, None], 0.0)
    N = unit_lower_inverse(A, n_out, start, L, i_h, H, BT, DOT_PREC)
    tl.store(n_out + ((start + rt[:, None]) * H + i_h) * BT + rt[None, :], N, mask=valid[:, None])
    for i_k in range(tl.cdiv(K, BK)):
        kt = load_tile(k, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0).to(tl.float32)
        if GATE == _VECTOR:
            bk = load_tile(gb, start, L, i_k * BK, H, K, i_h, BT, BK, False, 0.0)
            kt = kt * tl.exp(tl.minimum(bk, 0.0))
        store_tile(w, tl.dot(N, kt * rw[:, None], input_precision=DOT_PREC), start, L, i_k * BK, H, K, i_h, BT, BK)
    for i_v in range(tl.cdiv(V, BV)):
        vt = load_tile(v, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0).to(tl.float32)
        store_tile(u, tl.dot(N, vt * bet[:, None], input_precision=DOT_PREC), start, L, i_v * BV, H, V, i_h, BT, BV)


def launch_wy(queue, *, k, v, beta, gb, pk, n_out, w, u, cu_seqlens, chunk_indices, T, NT, H, K, V, BT, BK, BV, GATE,
              VARLEN, DOT_PREC, num_warps, num_stages):
    queue(delta_wy_kernel, (NT, H), k=k, v=v, beta=beta, gb=gb, pk=pk, n_out=n_out, w=w, u=u, cu_seqlens=cu_seqlens,
          chunk_indices=chunk_indices, T=T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=GATE, VARLEN=VARLEN,
          DOT_PREC=DOT_PREC, num_warps=num_warps, num_stages=num_stages)


@triton.jit
def delta_state_kernel(k, w, u, gb, h0, ht, h, vn, cu_seqlens, chunk_offsets, T, H: tl.constexpr, K: tl.constexpr,
                       V: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
                       HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr, VARLEN: tl.constexpr,
                       DOT_PREC: tl.constexpr):
    """The sequential pass of sequence i_n, head i_h, V block i_v; KP ≥ K (V_new needs all of W S).
    h [NT, H, K, V]: the state entering each chunk; vn [T, H, V]: V_new (both in their buffers' dtype: the
    input's for the forward's output kernel, which rounds them to it anyway; fp32 for the backward);
    ht [N, H, K, V] fp32 (STORE_FINAL)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L_seq, c0 = seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, VARLEN)
    rk = tl.arange(0, KP)
    rv = i_v * BV + tl.arange(0, BV)
    rt = tl.arange(0, BT)
    m_kv = (rk[:, None] < K) & (rv[None, :] < V)
    o_kv = rk[:, None] * V + rv[None, :]
    S = tl.zeros([KP, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0)
    for c in range(tl.cdiv(L_seq, BT)):
        start = bos + c * BT
        L = tl.minimum(bos + L_seq - start, BT)
        tl.store(h + ((c0 + c) * H + i_h).to(tl.int64) * K * V + o_kv, S.to(h.dtype.element_ty), mask=m_kv)
        wt = load_tile(w, start, L, 0, H, K, i_h, BT, KP, False, 0.0).to(tl.float32)
        x = (load_tile(u, start, L, i_v * BV, H, V, i_h, BT, BV, False, 0.0).to(tl.float32)
             - tl.dot(wt, S, input_precision=DOT_PREC))  # V_new; rows past L are 0
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
        S += tl.dot(kT, x, input_precision=DOT_PREC)
    if STORE_FINAL:
        tl.store(ht + i_nh.to(tl.int64) * K * V + o_kv, S, mask=m_kv)


def launch_state(queue, *, k, w, u, gb, h0, ht, h, vn, cu_seqlens, chunk_offsets, T, N, H, K, V, BT, KP, BV, GATE,
                 HAS_H0, STORE_FINAL, VARLEN, DOT_PREC, num_warps, num_stages):
    queue(delta_state_kernel, (triton.cdiv(V, BV), N * H), k=k, w=w, u=u, gb=gb, h0=h0, ht=ht, h=h, vn=vn,
          cu_seqlens=cu_seqlens, chunk_offsets=chunk_offsets, T=T, H=H, K=K, V=V, BT=BT, KP=KP, BV=BV, GATE=GATE,
          HAS_H0=HAS_H0, STORE_FINAL=STORE_FINAL, VARLEN=VARLEN, DOT_PREC=DOT_PREC, num_warps=num_warps,
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
