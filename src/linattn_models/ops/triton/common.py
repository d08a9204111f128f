"""Small kernels and jit helpers shared by the chunked and recurrent kernels.

- `chunk_bounds`: which sequence a chunk belongs to and the rows it covers (chunks never cross a sequence).
- `load_tile`:  a masked [R, C] tile of a [T, H, D] tensor at rows start.., columns c0.. (plain pointers).
- `sub_chunk_fits`: whether a vector-gate sub-chunk's own block may join the rebased matmuls (chunk_fwd.py).
- `local_cumsum_kernel`: b_i = Σ_{t ≤ i, t in the chunk} g_t, the chunk-local cumulative log gate (fp32).
- `gate_grad_kernel`: dg_t = Σ_{i ≥ t, same chunk} (q_i ⊙ dq_i − k_i ⊙ dk_i) + rowsum(S_C ⊙ dS_C), summed over
  the key dim (the scalar gate; the vector gate's is finished in chunk_bwd.chunk_dqk_kernel). The recurrence
  S_t = diag(e^{g_t}) S_{t−1} + k_tᵀv_t gives
  dg_t = rowsum(diag(e^{g_t}) S_{t−1} ⊙ dS_t) = q_t⊙dq_t − k_t⊙dk_t + dg_{t+1}; stopping the sum at the chunk's
  end C adds rowsum(S_C ⊙ dS_C), dS_C the gradient reaching the state leaving the chunk. docs/math.md sums to the
  sequence's end instead (one constant rowsum(S_T ⊙ dS_T)); that is exact too, but the summands' rounding then
  accumulates over the whole sequence: measured in bf16 on an H100, dg's error grew from 1.5e-2 (T=2K) to 5.7e-2
  (T=16K). Per chunk it stays at the level of dq, dk.

Gate kinds (the kernels' tl.constexpr GATE, compared with the named constants below): GATE_NONE, GATE_HEAD (one
constant log decay per head), GATE_SCALAR (per token and head), GATE_VECTOR (per token, head and key dim).
"""
import torch
import triton
import triton.language as tl

from .alloc import cdiv, new, np2

# tl.constexpr so that kernels may read them as globals (Triton refuses other module-level values)
GATE_NONE, GATE_HEAD, GATE_SCALAR, GATE_VECTOR = (tl.constexpr(i) for i in range(4))
# host side: the op's gate name -> the int passed as GATE
GATE_KINDS = {name: c.value for name, c in
              zip(("none", "head", "scalar", "vector"), (GATE_NONE, GATE_HEAD, GATE_SCALAR, GATE_VECTOR))}


@triton.jit
def chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT: tl.constexpr, VARLEN: tl.constexpr):
    """Global chunk i_t -> (sequence n, first row `start` (int64), valid rows L in 1..BT)."""
    if VARLEN:
        n = tl.load(chunk_indices + 2 * i_t).to(tl.int64)
        c = tl.load(chunk_indices + 2 * i_t + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + n).to(tl.int64)
        eos = tl.load(cu_seqlens + n + 1).to(tl.int64)
    else:
        nt = tl.cdiv(T, BT)
        n = (i_t // nt).to(tl.int64)
        c = (i_t % nt).to(tl.int64)
        bos = n * T
        eos = bos + T
    start = bos + c * BT
    L = tl.minimum(eos - start, BT)
    return n, start, L


@triton.jit
def seq_bounds(i_n, cu_seqlens, chunk_offsets, T, BT: tl.constexpr, VARLEN: tl.constexpr):
    """Sequence i_n -> (first row, length, global index of its first chunk)."""
    if VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
        c0 = i_n.to(tl.int64) * tl.cdiv(T, BT)
    return bos, eos - bos, c0


@triton.jit
def load_tile(ptr, start, L, c0, H, D, i_h, R: tl.constexpr, C: tl.constexpr, TRANS: tl.constexpr, other):
    """Rows start..start+R (valid < L), columns c0..c0+C (valid < D) of a [T, H, D] tensor at head i_h.

    Returns [R, C], or [C, R] when TRANS (read transposed straight from memory, no register transpose).
    """
    if TRANS:
        r = tl.arange(0, R)[None, :]
        c = c0 + tl.arange(0, C)[:, None]
    else:
        r = tl.arange(0, R)[:, None]
        c = c0 + tl.arange(0, C)[None, :]
    p = ptr + ((start + r) * H + i_h) * D + c
    return tl.load(p, mask=(r < L) & (c < D), other=other)


@triton.jit
def store_tile(ptr, x, start, L, c0, H, D, i_h, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    c = c0 + tl.arange(0, C)[None, :]
    tl.store(ptr + ((start + r) * H + i_h) * D + c, x.to(ptr.dtype.element_ty), mask=(r < L) & (c < D))


@triton.jit
def sub_chunk_fits(gb, start, r0, L, i_h, H: tl.constexpr, K: tl.constexpr, BC: tl.constexpr,
                   KP: tl.constexpr, LIMIT: tl.constexpr):
    """Whether the sub-chunk at row r0 may be rebased on p = r0 − 1 (b_p = 0 at the chunk start) as a whole:
    max_d (b_p − b_m) ≤ LIMIT, m its last valid row, so no factor e^{b_p − b_j} of its rows exceeds e^LIMIT."""
    rk = tl.arange(0, KP)
    m = tl.minimum(r0 + BC, L) - 1
    b_p = tl.load(gb + ((start + r0 - 1) * H + i_h) * K + rk, mask=rk < tl.where(r0 > 0, K, 0), other=0.0)
    b_m = tl.load(gb + ((start + m) * H + i_h) * K + rk, mask=rk < K, other=0.0)
    return tl.max(b_p - b_m, axis=0) <= LIMIT


@triton.jit
def local_cumsum_kernel(g, b, cu_seqlens, chunk_indices, T, H: tl.constexpr, D: tl.constexpr,
                        BT: tl.constexpr, BD: tl.constexpr, SCALAR: tl.constexpr, VARLEN: tl.constexpr):
    """b = chunk-local cumulative sum of g over time; g, b: [T, H, D], or [T, H] when SCALAR."""
    i_d, i_t, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    if SCALAR:
        rt = tl.arange(0, BT)
        x = tl.load(g + (start + rt) * H + i_h, mask=rt < L, other=0.0).to(tl.float32)
        tl.store(b + (start + rt) * H + i_h, tl.cumsum(x, axis=0), mask=rt < L)
    else:
        x = load_tile(g, start, L, i_d * BD, H, D, i_h, BT, BD, False, 0.0).to(tl.float32)
        store_tile(b, tl.cumsum(x, axis=0), start, L, i_d * BD, H, D, i_h, BT, BD)


@triton.jit
def gate_grad_kernel(q, k, dq, dk, dgc, dg, dq_out, dk_out, cu_seqlens, chunk_indices, T, H: tl.constexpr,
                     K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, WRITE_DQK: tl.constexpr,
                     VARLEN: tl.constexpr):
    """Scalar gate: dg_t = Σ_{i ≥ t, same chunk} Σ_d (q_i ⊙ dq_i − k_i ⊙ dk_i) + Σ_d dgc[chunk],
    dgc = rowsum(S_C ⊙ dS_C), from fp32 dq, dk (their rounding to bf16 first would not cancel in the sum).
    WRITE_DQK: also store dq, dk in the input dtype (dq_out, dk_out), which saves two conversion kernels; dg is
    stored in dg's dtype (g's). Grid (NT, H), BK ≥ K. (The vector gate's dg is finished in chunk_dqk_kernel.)
    """
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    _, start, L = chunk_bounds(i_t, cu_seqlens, chunk_indices, T, BT, VARLEN)
    rk = tl.arange(0, BK)
    rt = tl.arange(0, BT)
    dqt = load_tile(dq, start, L, 0, H, K, i_h, BT, BK, False, 0.0)
    dkt = load_tile(dk, start, L, 0, H, K, i_h, BT, BK, False, 0.0)
    x = (load_tile(q, start, L, 0, H, K, i_h, BT, BK, False, 0.0).to(tl.float32) * dqt
         - load_tile(k, start, L, 0, H, K, i_h, BT, BK, False, 0.0).to(tl.float32) * dkt)
    c = tl.load(dgc + (i_t.to(tl.int64) * H + i_h) * K + rk, mask=rk < K, other=0.0)
    out = tl.cumsum(tl.sum(x, axis=1), axis=0, reverse=True) + tl.sum(c, axis=0)
    tl.store(dg + (start + rt) * H + i_h, out.to(dg.dtype.element_ty), mask=rt < L)
    if WRITE_DQK:
        store_tile(dq_out, dqt, start, L, 0, H, K, i_h, BT, BK)
        store_tile(dk_out, dkt, start, L, 0, H, K, i_h, BT, BK)


# --- host-side launches (queued on the call's plan; see call.py) --------------------------------------------------
def local_cumsum(c):
    """b: the chunk-local cumulative log gate (fp32, g's shape) for the scalar and vector gates; else the dummy."""
    if c.g is None:
        return c.dummy
    scalar = c.gate == "scalar"
    D = 1 if scalar else c.K
    BD = 16 if scalar else min(64, np2(D))
    b = new(c.g.shape, torch.float32, c.device)
    c.plan.queue(local_cumsum_kernel, (cdiv(D, BD), c.NT, c.H), g=c.g, b=b, H=c.H, D=D, BD=BD, SCALAR=scalar,
                 **c.chunk_args(), **c.launch)
    return b


def gate_grad(c, *, dq, dk, dgc):
    """Scalar gate: (dq, dk in the input dtype, dg in g's dtype) from the fp32 dq, dk and the chunk-end terms."""
    dg = new(c.g.shape, c.g.dtype, c.device)
    cast = c.dtype != torch.float32  # the kernel also stores dq, dk in the input dtype
    dq_out = new(dq.shape, c.dtype, c.device) if cast else dq
    dk_out = new(dk.shape, c.dtype, c.device) if cast else dk
    c.plan.queue(gate_grad_kernel, (c.NT, c.H), q=c.q, k=c.k, dq=dq, dk=dk, dgc=dgc, dg=dg, dq_out=dq_out,
                 dk_out=dk_out, H=c.H, K=c.K, BK=np2(c.K), WRITE_DQK=cast, **c.chunk_args(), **c.launch)
    return dq_out, dk_out, dg
