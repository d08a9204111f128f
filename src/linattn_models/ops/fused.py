"""Fused elementwise ops of the model blocks: RMSNorm (optionally swish-gated), the L2 norm, rotary embedding, SwiGLU.

Each has a torch implementation (any device, any float dtype: the reference the Triton kernels are tested
against) and, for GPU tensors of 16/32-bit floats, fused Triton kernels (ops/triton/fused.py) that run one
kernel per direction and keep only their inputs for the backward. Backend choice as for the attention ops
(ops/dispatch.py): `backend=None` follows LINATTN_BACKEND, else Triton for GPU tensors; float64 always takes
the torch path (the float64 model runs are references, kept to torch's math). LINATTN_FUSED=0 sends these ops
(not the attention ops) to torch whatever the backend: a switch for A/B comparisons and a way around a kernel
that misbehaves on some device. Under torch.compile they take the torch path too: the compiler fuses those
elementwise ops itself, and the Triton wrappers (autograd functions with host-side caches) are not traced.
"""
import threading
import weakref

import torch
import torch.nn.functional as F

from .. import env
from . import delta_reference
from .delta_reference import L2NORM_EPS
from .dispatch import resolve_backend, triton_ops
from .reference import compute_dtype
from .validate import refuse_double_backward


def _use_triton(x, backend):
    if torch.compiler.is_compiling():
        return False
    if backend is None and not env.flag("LINATTN_FUSED"):
        return False
    return x.dtype != torch.float64 and resolve_backend(backend, x.device) == "triton"


def rms_norm(x, weight, eps, gate=None, out_dtype=None, backend=None):
    """y = x / sqrt(mean(x², -1) + eps) · weight [· silu(gate)], over the last dim, in float32 (float64 for
    float64), returned in `out_dtype` (default: x's). weight: [D] or None; gate: x's shape or None."""
    out_dtype = out_dtype or x.dtype
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"rms_norm: gate must have x's shape {tuple(x.shape)}, got {tuple(gate.shape)}")
    if weight is not None and weight.shape != x.shape[-1:]:
        raise ValueError(f"rms_norm: weight must have shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    if _use_triton(x, backend):
        return triton_ops().fused.rms_norm(x, weight, gate, eps, out_dtype)
    if gate is None and weight is not None and weight.dtype == x.dtype:
        # torch's fused kernel: float32 accumulation, one rounding at the end (the math below, one kernel)
        return F.rms_norm(x, (x.shape[-1],), weight, eps).to(out_dtype)
    dt = compute_dtype(x)
    xf = x.to(dt)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(dt)
    if gate is not None:
        y = y * F.silu(gate.to(dt))
    return y.to(out_dtype)


def l2_norm(x, eps=L2NORM_EPS, backend=None):
    """x · (Σx² + eps)^(-1/2) over the last dim (the delta rule's q, k), in float32 (float64 for float64), returned
    in x's dtype. The Triton path is the RMSNorm kernels without the division by D: one kernel each way, where
    torch's ops take ~5 forward (on an H200, ~0.76 ms of a 2.8 ms delta rule forward at B=4 T=4096 H=16 D=128 bf16).
    The torch path is delta_reference.l2norm, the definition."""
    if _use_triton(x, backend):
        return triton_ops().fused.rms_norm(x, None, None, eps, x.dtype, l2=True)
    return delta_reference.l2norm(x, eps)


def rotary(q, k, positions, inv_freq, backend=None, share_key=None):
    """RoPE (rotate-half) of q, k [B, T, H, D] at integer positions [B, T] with frequencies inv_freq [D/2]:
    x·cos(pθ) + rotate_half(x)·sin(pθ), in float32 (float64 for float64); returns (q, k) in their dtypes.

    share_key: a hashable that stands for inv_freq's values (RotaryEmbedding passes (base, dim)). On the Triton
    path the cos/sin tables made for one positions tensor (same object, unmodified) and key are reused by the
    next call with the same ones: the layers of a model get the same positions tensor in one forward pass,
    so the tables are made once per pass instead of once per layer and direction (4 small kernels each)."""
    if q.shape != k.shape or q.ndim != 4 or q.shape[-1] % 2:
        raise ValueError(f"rotary: q and k must be [B, T, H, D] of one shape with D even, got {tuple(q.shape)} "
                         f"and {tuple(k.shape)}")
    if positions.shape != q.shape[:2]:
        raise ValueError(f"rotary: positions must be [B, T] = {tuple(q.shape[:2])}, got {tuple(positions.shape)}")
    if _use_triton(q, backend):
        return triton_ops().fused.rotary(q, k, *_rotary_tables(positions, inv_freq, share_key))
    dt = compute_dtype(q)
    freqs = positions.to(dt)[..., None] * inv_freq.to(q.device, dt)  # [B, T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = emb.cos(), emb.sin()
    return _rotate_half(q, cos, sin), _rotate_half(k, cos, sin)


_last_tables = threading.local()


def _rotary_tables(positions, inv_freq, share_key):
    """cos and sin of p·θ as [B·T, D/2] float32 tables, made by torch (as the torch path: Triton's fp32 sin/cos
    may lower to approximate instructions whose error grows with the argument, up to T rad), reused for the
    same positions tensor and share_key (see rotary). Not kept while a CUDA graph is captured (they would live
    in the graph's memory pool)."""
    keep = share_key is not None and not (positions.is_cuda and torch.cuda.is_current_stream_capturing())
    key = (share_key, positions._version, positions.device)
    last = getattr(_last_tables, "entry", None)
    if keep and last is not None and last[0]() is positions and last[1] == key:
        return last[2]
    f = positions.reshape(-1).to(torch.float32)[:, None] * inv_freq.to(positions.device, torch.float32)[None, :]
    tables = (f.cos(), f.sin())
    if keep:
        _last_tables.entry = (weakref.ref(positions), key, tables)
    return tables


def _rotate_half(x, cos, sin):
    xf = x.to(cos.dtype)
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def swiglu(g, u, backend=None):
    """silu(g) · u (elementwise, g and u of one shape and dtype)."""
    if g.shape != u.shape or g.dtype != u.dtype:
        raise ValueError(f"swiglu: g and u must match, got {tuple(g.shape)} {g.dtype} and {tuple(u.shape)} {u.dtype}")
    if _use_triton(g, backend):
        return triton_ops().fused.swiglu(g, u)
    return F.silu(g) * u


_CE_ROWS_ELEMENTS = 1 << 26  # float32 elements per row block of cross_entropy_sum (256 MB)


class _CrossEntropySum(torch.autograd.Function):
    """Σ_rows (logsumexp(x_r) − x_r[t_r]) over rows whose target is not ignore_index, computed in float32 blocks
    of rows; the gradient (softmax − one-hot, in the logits' dtype) is made in the same pass, so neither a float32
    copy of the logits nor log-softmax outputs are kept for the backward (torch's cross_entropy on upcast bf16
    logits keeps 2 bytes + 4 bytes per logit more, over 2 GB at 16K tokens x 32K vocab)."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index):
        N, V = logits.shape
        want_grad = ctx.needs_input_grad[0]
        dt = compute_dtype(logits)
        if torch.compiler.is_compiling():
            # One block, and no writes into a buffer made here: a loop over N / rows blocks would pin N
            # (recompiles), and with dynamo on torch 2.11 a buffer written here and saved for the backward gave
            # every gradient zero (as if saved before the writes; 2.13 traced it right).
            total, grad = _ce_block(logits, target, ignore_index, dt, want_grad)
            grad = None if grad is None else grad.to(logits.dtype)
        else:
            grad = torch.empty_like(logits) if want_grad else None
            total = torch.zeros((), dtype=dt, device=logits.device)
            rows = max(1, _CE_ROWS_ELEMENTS // max(V, 1))
            for s in range(0, N, rows):
                part, part_grad = _ce_block(logits[s:s + rows], target[s:s + rows], ignore_index, dt, want_grad)
                total += part
                if want_grad:
                    grad[s:s + rows] = part_grad  # cast into the logits' dtype as it is copied
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, dtotal):
        refuse_double_backward("cross_entropy_sum (the models' loss; its gradient is made in the forward)",
                               "compute the loss from the logits with torch.nn.functional.cross_entropy instead")
        (grad,) = ctx.saved_tensors
        # scaled in float32 block by block: casting dtotal (e.g. 1/tokens) to bf16 first would scale every
        # gradient by the same rounded factor (up to 0.4% off); a whole float32 copy would cost the memory saved
        if torch.compiler.is_compiling():  # one block (see forward)
            return grad.to(dtotal.dtype) * dtotal, None, None
        out = torch.empty_like(grad)
        rows = max(1, _CE_ROWS_ELEMENTS // max(grad.shape[1], 1))
        for s in range(0, grad.shape[0], rows):
            out[s:s + rows] = grad[s:s + rows].to(dtotal.dtype) * dtotal
        return out, None, None


def _ce_block(logits, target, ignore_index, dtype, want_grad):
    """(the summed loss of one block of rows in `dtype`, their gradient in `dtype` or None)."""
    x = logits.to(dtype, copy=True)  # a copy: the softmax is made in place below
    keep = target != ignore_index
    tt = torch.where(keep, target, 0)[:, None]
    lse = torch.logsumexp(x, -1, keepdim=True)
    total = ((lse - x.gather(1, tt)).squeeze(1) * keep).sum()
    if not want_grad:
        return total, None
    p = x.sub_(lse).exp_()  # softmax, in place of the float32 block
    p.scatter_add_(1, tt, -keep[:, None].to(p.dtype))
    return total, p * keep[:, None]


def cross_entropy_sum(logits, target, ignore_index=-100):
    """Summed cross entropy of logits [N, V] (any float dtype) against target [N] (int), rows with
    target == ignore_index left out; float32 result (float64 for float64). Lean in memory (see _CrossEntropySum)."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy_sum: logits must be [N, V] and target [N], got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    if target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"cross_entropy_sum: target must be int64/int32, got {target.dtype}")
    return _CrossEntropySum.apply(logits, target.to(logits.device), ignore_index)
