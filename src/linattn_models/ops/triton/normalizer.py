"""The linear-attention normaliser den_t = scale · q_t · z_t, z_t = z0 + Σ_{s≤t} k_s (per sequence), and its
gradient, without materialising z: one program per (sequence, head) walks the sequence in tiles of BT rows
with a running key sum (torch's cumsum over the time dim of [B, T, H, K] took 1.5 ms per call at B=4, T=4K,
H*K=1K on an H100, a third of a 370M linear-transformer training step; scripts/bench.py --cases train --profile).

Backward: dq_t = scale · dden_t · z_t (a forward walk recomputing z), dk_s = Σ_{t≥s} scale · dden_t · q_t + dz_T
(a reverse walk), dz0 = dz_T + Σ_t scale · dden_t · q_t. Sums in float32.
"""
import torch
import triton
import triton.language as tl

from ..validate import refuse_double_backward
from .alloc import dummy, new, np2


@triton.jit
def _start(z0, cu_seqlens, T, H, K, BK: tl.constexpr, VARLEN: tl.constexpr, HAS_Z0: tl.constexpr):
    """This program's sequence (first row, length), key columns, offsets into [N, H, K] and the starting key
    sum z0 (zeros without z0)."""
    i_n, i_h = tl.program_id(0), tl.program_id(1)
    if VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        L = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    else:
        bos = i_n.to(tl.int64) * T
        L = T
    cols = tl.arange(0, BK)
    cm = cols < K
    zoff = (i_n * H + i_h) * K + cols
    carry = tl.zeros([BK], dtype=tl.float32)
    if HAS_Z0:
        carry += tl.load(z0 + zoff, mask=cm, other=0).to(tl.float32)
    return i_h, bos, L, cols, cm, zoff, carry


@triton.jit
def normalizer_fwd_kernel(q, k, z0, den, zT, cu_seqlens, T, H, K, scale, BT: tl.constexpr, BK: tl.constexpr,
                          VARLEN: tl.constexpr, HAS_Z0: tl.constexpr):
    i_h, bos, L, cols, cm, zoff, carry = _start(z0, cu_seqlens, T, H, K, BK, VARLEN, HAS_Z0)
    for t0 in range(0, L, BT):
        rows = t0 + tl.arange(0, BT)
        rm = rows < L
        m = rm[:, None] & cm[None, :]
        off = ((bos + rows)[:, None] * H + i_h) * K + cols[None, :]
        kk = tl.load(k + off, mask=m, other=0).to(tl.float32)
        qq = tl.load(q + off, mask=m, other=0).to(tl.float32)
        z = tl.cumsum(kk, 0) + carry[None, :]
        tl.store(den + (bos + rows) * H + i_h, scale * tl.sum(qq * z, 1), mask=rm)
        carry += tl.sum(kk, 0)
    tl.store(zT + zoff, carry, mask=cm)


@triton.jit
def normalizer_bwd_kernel(q, k, z0, dden, dzT, dq, dk, dz0, cu_seqlens, T, H, K, scale, BT: tl.constexpr,
                          BK: tl.constexpr, VARLEN: tl.constexpr, HAS_Z0: tl.constexpr, HAS_DZT: tl.constexpr):
    i_h, bos, L, cols, cm, zoff, carry = _start(z0, cu_seqlens, T, H, K, BK, VARLEN, HAS_Z0)
    for t0 in range(0, L, BT):  # forward walk: dq_t = scale · dden_t · z_t
        rows = t0 + tl.arange(0, BT)
        rm = rows < L
        m = rm[:, None] & cm[None, :]
        off = ((bos + rows)[:, None] * H + i_h) * K + cols[None, :]
        kk = tl.load(k + off, mask=m, other=0).to(tl.float32)
        dd = tl.load(dden + (bos + rows) * H + i_h, mask=rm, other=0).to(tl.float32)
        z = tl.cumsum(kk, 0) + carry[None, :]
        tl.store(dq + off, (scale * dd[:, None] * z).to(dq.dtype.element_ty), mask=m)
        carry += tl.sum(kk, 0)
    acc = tl.zeros([BK], dtype=tl.float32)
    if HAS_DZT:
        acc += tl.load(dzT + zoff, mask=cm, other=0).to(tl.float32)
    nt = tl.cdiv(L, BT)
    for i in range(0, nt):  # reverse walk: dk_s = Σ_{t≥s} scale · dden_t · q_t + dz_T
        rows = (nt - 1 - i) * BT + tl.arange(0, BT)
        rm = rows < L
        m = rm[:, None] & cm[None, :]
        off = ((bos + rows)[:, None] * H + i_h) * K + cols[None, :]
        qq = tl.load(q + off, mask=m, other=0).to(tl.float32)
        dd = tl.load(dden + (bos + rows) * H + i_h, mask=rm, other=0).to(tl.float32)
        w = scale * dd[:, None] * qq
        tot = tl.sum(w, 0)
        suffix = tot[None, :] - tl.cumsum(w, 0) + w  # Σ over rows ≥ s of this tile
        tl.store(dk + off, (suffix + acc[None, :]).to(dk.dtype.element_ty), mask=m)
        acc += tot
    if HAS_Z0:
        tl.store(dz0 + zoff, acc, mask=cm)


def _launch_shape(q, cu_seqlens):
    B, T, H, K = q.shape
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    BK = np2(K)
    BT = max(16, min(64, 8192 // BK))
    return B, T, H, K, N, BK, BT


class _Normalizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, z0, scale, cu_seqlens):
        q, k = q.contiguous(), k.contiguous()
        B, T, H, K, N, BK, BT = _launch_shape(q, cu_seqlens)
        den = new((B, T, H), torch.float32, q.device)
        zT = new((N, H, K), torch.float32, q.device)
        z0c = z0.to(torch.float32).contiguous() if z0 is not None else None
        cu = cu_seqlens.to(torch.int64).contiguous() if cu_seqlens is not None else dummy(q.device)
        normalizer_fwd_kernel[(N, H)](q, k, z0c if z0 is not None else dummy(q.device), den, zT, cu, T, H, K,
                                      scale, BT=BT, BK=BK, VARLEN=cu_seqlens is not None, HAS_Z0=z0 is not None)
        ctx.save_for_backward(q, k, z0c, cu if cu_seqlens is not None else None)
        ctx.scale, ctx.z0_dtype = scale, None if z0 is None else z0.dtype
        return den, zT

    @staticmethod
    def backward(ctx, dden, dzT):
        refuse_double_backward("normalize_linear_attention on the Triton backend", "use backend='torch'")
        q, k, z0c, cu = ctx.saved_tensors
        B, T, H, K, N, BK, BT = _launch_shape(q, cu)
        dq, dk = new(q.shape, q.dtype, q.device), new(k.shape, k.dtype, k.device)
        dz0 = new((N, H, K), torch.float32, q.device) if z0c is not None else None
        none = dummy(q.device)
        dden = dden.contiguous() if dden is not None else torch.zeros((B, T, H), device=q.device)
        normalizer_bwd_kernel[(N, H)](
            q, k, z0c if z0c is not None else none, dden, dzT.contiguous() if dzT is not None else none, dq, dk,
            dz0 if dz0 is not None else none, cu if cu is not None else none, T, H, K, ctx.scale, BT=BT, BK=BK,
            VARLEN=cu is not None, HAS_Z0=z0c is not None, HAS_DZT=dzT is not None)
        return dq, dk, None if dz0 is None else dz0.to(ctx.z0_dtype), None, None


def normalizer(q, k, z0, scale, cu_seqlens):
    """(den [B, T, H] float32 = scale · q_t · z_t, z_T [N, H, K] float32) for q, k [B, T, H, K]."""
    return _Normalizer.apply(q, k, z0, float(scale), cu_seqlens)
