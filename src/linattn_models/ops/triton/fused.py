"""Fused kernels of the model blocks (ops/fused.py is the API): RMSNorm with an optional swish gate, rotary
embedding of q and k, and SwiGLU. Each replaces a chain of 5-10 elementwise torch ops whose float32
intermediates autograd would keep: measured on an H100 (bench.py --cases train --profile), such chains took over
half of a 370M RetNet training step. The backward kernels recompute what they need from the inputs, so a
forward keeps only its inputs (and the per-row 1/rms). Math in float32 (float64 for float64 inputs).
"""
import functools

import torch
import triton
import triton.language as tl

from ..validate import refuse_double_backward
from .alloc import new, np2

_FUSED_INSTEAD = "set LINATTN_FUSED=0 (torch's ops) or use backend='torch'"

_ROWS = 16          # rows per program in the norm kernels
_BLOCK = 2048       # elements per program in the elementwise kernels


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@functools.lru_cache(maxsize=None)
def _num_programs(device):
    """Programs of the norm backward (each keeps one partial sum of dweight): a few per multiprocessor."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


# --- RMSNorm (optionally gated) -----------------------------------------------------------------------------------
@triton.jit
def _rms_norm_fwd_kernel(x, g, w, y, rstd, N, D, div, eps, BR: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr,
                         HAS_W: tl.constexpr, HAS_G: tl.constexpr):
    """r = 1/sqrt(Σx²/div + eps): div = D is RMSNorm, div = 1 the L2 norm (a runtime float: no compile of its own)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BD)
    m = (rows[:, None] < N) & (cols[None, :] < D)
    off = rows[:, None].to(tl.int64) * D + cols[None, :]
    xf = tl.load(x + off, mask=m, other=0).to(ACC)
    r = 1 / tl.sqrt(tl.sum(xf * xf, 1) / div + eps)
    out = xf * r[:, None]
    if HAS_W:
        out = out * tl.load(w + cols, mask=cols < D, other=0).to(ACC)[None, :]
    if HAS_G:
        gf = tl.load(g + off, mask=m, other=0).to(ACC)
        out = out * gf / (1 + tl.exp(-gf))
    tl.store(y + off, out.to(y.dtype.element_ty), mask=m)
    tl.store(rstd + rows, r, mask=rows < N)


@triton.jit
def _rms_norm_bwd_kernel(x, g, w, rstd, dy, dx, dg, dw, N, D, div, BR: tl.constexpr, BD: tl.constexpr,
                         ACC: tl.constexpr, HAS_W: tl.constexpr, HAS_G: tl.constexpr):
    """n = x·r, a = n·w, y = a·silu(g):  dg = dy·a·silu'(g), da = dy·silu(g), dw += Σ_rows da·n,
    dx = r·(da·w − n·Σ(da·w·n)/div). Each program walks row blocks pid, pid + P, ... and writes one dw row."""
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    cols = tl.arange(0, BD)
    cm = cols < D
    if HAS_W:
        wf = tl.load(w + cols, mask=cm, other=0).to(ACC)
    dw_acc = tl.zeros([BD], dtype=ACC)
    for start in range(pid * BR, N, P * BR):
        rows = start + tl.arange(0, BR)
        m = (rows[:, None] < N) & cm[None, :]
        off = rows[:, None].to(tl.int64) * D + cols[None, :]
        xf = tl.load(x + off, mask=m, other=0).to(ACC)
        r = tl.load(rstd + rows, mask=rows < N, other=0).to(ACC)
        n = xf * r[:, None]
        da = tl.load(dy + off, mask=m, other=0).to(ACC)
        if HAS_G:
            gf = tl.load(g + off, mask=m, other=0).to(ACC)
            sig = 1 / (1 + tl.exp(-gf))
            a = n * wf[None, :] if HAS_W else n
            tl.store(dg + off, (da * a * sig * (1 + gf * (1 - sig))).to(dg.dtype.element_ty), mask=m)
            da = da * gf * sig
        if HAS_W:
            dw_acc += tl.sum(da * n, 0)
            da = da * wf[None, :]
        dxf = r[:, None] * (da - n * (tl.sum(da * n, 1) / div)[:, None])
        tl.store(dx + off, dxf.to(dx.dtype.element_ty), mask=m)
    if HAS_W:
        tl.store(dw + pid * D + cols, dw_acc, mask=cm)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, gate, eps, out_dtype, l2):
        D = x.shape[-1]
        ctx.l2, ctx.div = l2, 1.0 if l2 else float(D)
        x2 = x.contiguous().view(-1, D)
        g2 = gate.contiguous().view(-1, D) if gate is not None else x2
        N = x2.shape[0]
        y = new(x2.shape, out_dtype, x.device)
        rstd = new((N,), torch.float64 if x.dtype == torch.float64 else torch.float32, x.device)
        w = weight if weight is not None else x2
        _rms_norm_fwd_kernel[(triton.cdiv(N, _ROWS),)](
            x2, g2, w, y, rstd, N, D, ctx.div, eps, BR=_ROWS, BD=np2(D, 1), ACC=_acc(x.dtype),
            HAS_W=weight is not None, HAS_G=gate is not None)
        ctx.save_for_backward(x2, g2 if gate is not None else None, weight, rstd)
        ctx.shape, ctx.gate_dtype = x.shape, None if gate is None else gate.dtype
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        refuse_double_backward(f"{'l2' if ctx.l2 else 'rms'}_norm (fused Triton kernel)", _FUSED_INSTEAD)
        x2, g2, weight, rstd = ctx.saved_tensors
        N, D = x2.shape
        dy = dy.contiguous().view(N, D)
        dx = new((N, D), x2.dtype, x2.device)
        dg = new((N, D), ctx.gate_dtype, x2.device) if g2 is not None else None
        P = max(1, min(_num_programs(x2.device), triton.cdiv(N, _ROWS)))
        dw = new((P, D), rstd.dtype, x2.device) if weight is not None else None
        _rms_norm_bwd_kernel[(P,)](
            x2, g2 if g2 is not None else x2, weight if weight is not None else x2, rstd, dy, dx,
            dg if dg is not None else dx, dw if dw is not None else dx, N, D, ctx.div, BR=_ROWS, BD=np2(D, 1),
            ACC=_acc(x2.dtype), HAS_W=weight is not None, HAS_G=g2 is not None)
        dweight = dw.sum(0).to(weight.dtype) if weight is not None else None
        return (dx.view(ctx.shape), dweight, None if dg is None else dg.view(ctx.shape), None, None, None)


def rms_norm(x, weight, gate, eps, out_dtype, l2=False):
    """l2=True: x·(Σx² + eps)^(-1/2), the same kernels with the sum of squares not divided by D."""
    return _RMSNorm.apply(x, weight, gate, float(eps), out_dtype, l2)


# --- rotary embedding of q and k ----------------------------------------------------------------------------------
@triton.jit
def _rotary_kernel(q, k, qo, ko, cos_t, sin_t, NR, H, D, SIGN: tl.constexpr, BR: tl.constexpr, BH: tl.constexpr,
                   BD2: tl.constexpr, ACC: tl.constexpr):
    """Rows (tokens) of q, k [NR, H, D] rotated by the angles whose cos/sin tables [NR, D/2] are given
    (SIGN = -1: by minus those angles, the backward): out[:D/2] = x1·cos − x2·sin, out[D/2:] = x2·cos + x1·sin."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    heads = tl.arange(0, BH)
    cols = tl.arange(0, BD2)
    half = D // 2
    tm = (rows[:, None] < NR) & (cols[None, :] < half)
    toff = rows[:, None].to(tl.int64) * half + cols[None, :]
    cos = tl.load(cos_t + toff, mask=tm, other=0).to(ACC)[:, None, :]
    sin = (SIGN * tl.load(sin_t + toff, mask=tm, other=0).to(ACC))[:, None, :]
    m = (rows[:, None, None] < NR) & (heads[None, :, None] < H) & (cols[None, None, :] < half)
    off = (rows[:, None, None].to(tl.int64) * H + heads[None, :, None]) * D + cols[None, None, :]
    _rotate_tile(q, qo, off, half, m, cos, sin, ACC)
    _rotate_tile(k, ko, off, half, m, cos, sin, ACC)


@triton.jit
def _rotate_tile(src, dst, off, half, m, cos, sin, ACC: tl.constexpr):
    x1 = tl.load(src + off, mask=m, other=0).to(ACC)
    x2 = tl.load(src + off + half, mask=m, other=0).to(ACC)
    tl.store(dst + off, (x1 * cos - x2 * sin).to(dst.dtype.element_ty), mask=m)
    tl.store(dst + off + half, (x2 * cos + x1 * sin).to(dst.dtype.element_ty), mask=m)


def _rotate(q, k, cos_t, sin_t, sign):
    B, T, H, D = q.shape
    NR = B * T
    q, k = q.contiguous(), k.contiguous()
    qo, ko = new(q.shape, q.dtype, q.device), new(k.shape, k.dtype, k.device)
    BH, BD2 = np2(H, 1), np2(D // 2, 1)
    BR = max(1, min(16, 4096 // (BH * BD2)))
    _rotary_kernel[(triton.cdiv(NR, BR),)](q, k, qo, ko, cos_t, sin_t, NR, H, D, SIGN=sign, BR=BR, BH=BH,
                                           BD2=BD2, ACC=_acc(q.dtype))
    return qo, ko


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos_t, sin_t):
        ctx.save_for_backward(cos_t, sin_t)
        return _rotate(q, k, cos_t, sin_t, 1.0)

    @staticmethod
    def backward(ctx, dq, dk):
        refuse_double_backward("rotary (fused Triton kernel)", _FUSED_INSTEAD)
        cos_t, sin_t = ctx.saved_tensors
        dq, dk = _rotate(dq, dk, cos_t, sin_t, -1.0)
        return dq, dk, None, None


def rotary(q, k, cos_t, sin_t):
    """q, k [B, T, H, D] rotated by the angles whose cos and sin tables [B·T, D/2] (contiguous) are given."""
    return _Rotary.apply(q, k, cos_t, sin_t)


# --- SwiGLU: silu(g) * u --------------------------------------------------------------------------------------------
@triton.jit
def _swiglu_fwd_kernel(g, u, y, N, BLOCK: tl.constexpr, ACC: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    gf = tl.load(g + i, mask=m, other=0).to(ACC)
    uf = tl.load(u + i, mask=m, other=0).to(ACC)
    tl.store(y + i, (gf / (1 + tl.exp(-gf)) * uf).to(y.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd_kernel(g, u, dy, dg, du, N, BLOCK: tl.constexpr, ACC: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    gf = tl.load(g + i, mask=m, other=0).to(ACC)
    uf = tl.load(u + i, mask=m, other=0).to(ACC)
    d = tl.load(dy + i, mask=m, other=0).to(ACC)
    sig = 1 / (1 + tl.exp(-gf))
    tl.store(dg + i, (d * uf * sig * (1 + gf * (1 - sig))).to(dg.dtype.element_ty), mask=m)
    tl.store(du + i, (d * gf * sig).to(du.dtype.element_ty), mask=m)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, u):
        g, u = g.contiguous(), u.contiguous()
        y = new(g.shape, g.dtype, g.device)
        N = g.numel()
        _swiglu_fwd_kernel[(triton.cdiv(N, _BLOCK),)](g, u, y, N, BLOCK=_BLOCK, ACC=_acc(g.dtype))
        ctx.save_for_backward(g, u)
        return y

    @staticmethod
    def backward(ctx, dy):
        refuse_double_backward("swiglu (fused Triton kernel)", _FUSED_INSTEAD)
        g, u = ctx.saved_tensors
        dy = dy.contiguous()
        dg, du = new(g.shape, g.dtype, g.device), new(u.shape, u.dtype, u.device)
        N = g.numel()
        _swiglu_bwd_kernel[(triton.cdiv(N, _BLOCK),)](g, u, dy, dg, du, N, BLOCK=_BLOCK, ACC=_acc(g.dtype))
        return dg, du


def swiglu(g, u):
    return _SwiGLU.apply(g, u)
