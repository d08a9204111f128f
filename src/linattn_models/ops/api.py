"""The public ops: one function per family, all computing gated linear attention (see reference.py).

Layout [B, T, H, K] for q, k and gates, [B, T, H, V] for v; states [N, H, K, V] in float32; gates are natural
log decays (<= 0). Every op returns (o, final_state) with final_state None unless output_final_state=True.
Packed variable-length batches: B == 1 and cu_seqlens [N+1] (int) marks the N sequences.
"""
import math
from typing import Optional, Tuple

import torch

from . import library
from .dispatch import resolve_backend, triton_ops
from .library import RECURRENT_MAX_T, compiling, retention_log_decays, torch_gla  # noqa: F401 (re-exported)
from .library import log_decays as _log_decays
from .reference import compute_dtype
from .validate import check_inputs

NORMALIZER_EPS = 1e-6


def _resolve_scale(q, scale):
    """The float scale to use: K^-0.5 by default; must be finite."""
    if scale is None:  # finite (K > 0 is checked); under torch.compile with a dynamic K, a symbolic float
        return q.shape[-1] ** -0.5
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def _run(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode, backend,
         final_state_in_place=False, kernel_config=None):
    """Dispatch one gated linear attention call. gate: "none" | "head" (g: [H]) | "scalar" | "vector".
    Under torch.compile: the custom op linattn::gla (ops/library.py), which dispatches the same way inside."""
    scale = _resolve_scale(q, scale)
    if compiling():
        _refuse_kernel_config(kernel_config)
        return library.call_gla(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode,
                                backend)
    if mode == "auto":
        mode = "recurrent" if q.shape[1] <= RECURRENT_MAX_T else "chunk"
    if resolve_backend(backend, q.device) == "triton":
        return triton_ops().run_triton(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode,
                                       in_place=final_state_in_place, overrides=kernel_config)
    return torch_gla(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode)


def _refuse_kernel_config(kernel_config):
    if kernel_config is not None:
        raise ValueError("kernel_config is not supported under torch.compile (the custom ops take no Triton "
                         "overrides); call the op eagerly for sweeps")


_COMMON_ARGS = """
        scale: multiplies q·k; None means K^-0.5.
        initial_state: [N, H, K, V] float32 state to start from (N = B, or the number of packed sequences).
        output_final_state: also return the state after the last token ([N, H, K, V] float32).
        cu_seqlens: int [N + 1] boundaries of N sequences packed in a B == 1 batch (variable length).
        mode: "chunk" (parallel over chunks of 64), "recurrent" (token by token: decoding), or "auto"
            (recurrent up to 32 tokens).
        backend: "torch" | "triton" | None (LINATTN_BACKEND, else Triton for GPU tensors).
        final_state_in_place: write the final state into `initial_state`'s buffer and return that buffer
            (Triton, no grad, recurrent mode, no cu_seqlens, fp32 contiguous state: the CUDA-graph decode step);
            ignored where it does not apply. The caller must not need the old state afterwards.
        kernel_config: Triton block sizes / warps / path thresholds overriding the defaults (benchmarks and
            sweeps; keys of ops/triton/config.py). Ignored by the torch backend.

    Returns:
        (o [B, T, H, V] in q's dtype, final state or None)."""


def _document(fn):
    fn.__doc__ = fn.__doc__.replace("{common}", _COMMON_ARGS.strip("\n"))
    return fn


@_document
def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, normalize: bool = False,
                     scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                     output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                     mode: str = "auto", backend: Optional[str] = None, final_state_in_place: bool = False,
                     kernel_config: Optional[dict] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Causal linear attention (no decay): o_t = scale · q_t Σ_{s≤t} k_sᵀ v_s.

    normalize=True divides by the normaliser scale · q_t · Σ_{s≤t} k_s (+1e-6), as in Katharopoulos et al.
    (apply a positive feature map to q and k first). The normaliser is not part of the [K, V] state, so it
    cannot be combined with initial_state; to carry it across calls, append a ones column to v instead.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V] (float16 / bfloat16 / float32; float64 on the torch backend).
        normalize: divide by the normaliser (see above).
{common}

    Example:
        >>> q, k, v = torch.randn(2, 100, 4, 32), torch.randn(2, 100, 4, 32), torch.randn(2, 100, 4, 16)
        >>> o, state = linear_attention(q, k, v, output_final_state=True)   # o [2, 100, 4, 16], state [2, 4, 32, 16]
    """
    check_inputs(q, k, v, initial_state=initial_state, cu_seqlens=cu_seqlens, scale=scale, mode=mode)
    if normalize and initial_state is not None:
        raise ValueError("normalize=True cannot take an initial_state (the normaliser is not in the state); "
                         "append a ones column to v and divide by it instead")
    o, state = _run(q, k, v, None, "none", scale, initial_state, output_final_state, cu_seqlens, mode, backend,
                    final_state_in_place, kernel_config)
    if normalize:
        o, _ = normalize_linear_attention(o, q, k, _resolve_scale(q, scale), cu_seqlens=cu_seqlens)
    return o, state


def normalize_linear_attention(o, q, k, scale, z0=None, cu_seqlens=None, backend=None):
    """The normaliser of linear attention: o_t / (scale · q_t · z_t + eps), z_t = z0 + Σ_{s≤t} k_s per sequence.

    Computed in float32 (float64 for float64 inputs). z0: [B, H, K] running key sums from earlier tokens (rows of
    a padded batch; not with cu_seqlens). Zero the keys of pad tokens first. Returns (o in o's dtype, the last
    z_t of each row [B, H, K] (z0 when T == 0), or None when cu_seqlens is given)."""
    if z0 is not None and cu_seqlens is not None:
        raise ValueError("normalize_linear_attention: z0 cannot be combined with cu_seqlens")
    # under torch.compile the torch form below (traced, fused by the compiler; the Triton normaliser is no custom op)
    if (q.shape[1] and q.dtype != torch.float64 and not compiling()
            and resolve_backend(backend, q.device) == "triton"):
        # one kernel walking each sequence (ops/triton/normalizer.py): no [B, T, H, K] cumsum kept
        den, zT = triton_ops().normalizer(q, k, z0, scale, cu_seqlens)
        o = (o.to(torch.float32) / (den[..., None] + NORMALIZER_EPS)).to(o.dtype)
        return o, None if cu_seqlens is not None else zT
    dt = compute_dtype(q)
    z = _cumsum_per_sequence(k.to(dt), cu_seqlens)
    if z0 is not None:
        z = z + z0.to(dt)[:, None]
    den = scale * (q.to(dt) * z).sum(-1, keepdim=True)
    last = None if cu_seqlens is not None else (z[:, -1] if z.shape[1] else z0)
    return (o.to(dt) / (den + NORMALIZER_EPS)).to(o.dtype), last


def _cumsum_per_sequence(x, cu_seqlens):
    """Cumulative sum over time (dim 1) that restarts at each cu_seqlens boundary."""
    c = x.cumsum(1)
    if cu_seqlens is None:
        return c
    # Subtract from each token the running sum reached just before its own sequence began.
    before = torch.cat([torch.zeros_like(c[:, :1]), c], dim=1)[:, cu_seqlens[:-1].long()]
    seq_id = torch.bucketize(torch.arange(x.shape[1], device=x.device), cu_seqlens[1:], right=True)
    return c - before[:, seq_id]


@_document
def retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: Optional[float] = None,
              initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
              cu_seqlens: Optional[torch.Tensor] = None, mode: str = "auto", backend: Optional[str] = None,
              final_state_in_place: bool = False,
              kernel_config: Optional[dict] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Multi-scale retention (RetNet): a fixed decay 1 - 2^(-5-h) for head h = 0..H-1.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V].
{common}

    Example:
        >>> o, _ = retention(torch.randn(1, 64, 8, 32), torch.randn(1, 64, 8, 32), torch.randn(1, 64, 8, 64))
    """
    check_inputs(q, k, v, initial_state=initial_state, cu_seqlens=cu_seqlens, scale=scale, mode=mode)
    # fp64 decays for fp64 inputs, so the reference is exact; the kernels take them as fp32. Under torch.compile
    # the custom op makes them inside (an lru_cache is not traced).
    g = None if compiling() else _log_decays(q.shape[2], q.device, compute_dtype(q))
    return _run(q, k, v, g, "head", scale, initial_state, output_final_state, cu_seqlens, mode, backend,
                final_state_in_place, kernel_config)


@_document
def simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: Optional[float] = None,
               initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
               cu_seqlens: Optional[torch.Tensor] = None, mode: str = "auto", backend: Optional[str] = None,
               final_state_in_place: bool = False,
               kernel_config: Optional[dict] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated linear attention with one data-dependent log decay per head and token:
    S_t = exp(g_t) S_{t-1} + k_tᵀ v_t, o_t = scale · q_t S_t.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V].
        g: [B, T, H] natural-log decays, <= 0 (e.g. F.logsigmoid of a projection).
{common}

    Example:
        >>> q, k, v = (torch.randn(1, 50, 2, 16) for _ in range(3))
        >>> o, _ = simple_gla(q, k, v, F.logsigmoid(torch.randn(1, 50, 2)))
    """
    check_inputs(q, k, v, g, 3, initial_state=initial_state, cu_seqlens=cu_seqlens, scale=scale, mode=mode)
    return _run(q, k, v, g, "scalar", scale, initial_state, output_final_state, cu_seqlens, mode, backend,
                final_state_in_place, kernel_config)


@_document
def gated_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                           output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
                           mode: str = "auto", backend: Optional[str] = None, final_state_in_place: bool = False,
                           kernel_config: Optional[dict] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated linear attention (GLA) with a data-dependent log decay per key dimension:
    S_t = diag(exp(g_t)) S_{t-1} + k_tᵀ v_t, o_t = scale · q_t S_t.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V].
        g: [B, T, H, K] natural-log decays, <= 0.
{common}

    Example:
        >>> q, k, v = (torch.randn(1, 50, 2, 16) for _ in range(3))
        >>> o, state = gated_linear_attention(q, k, v, F.logsigmoid(torch.randn(1, 50, 2, 16)),
        ...                                   output_final_state=True)
    """
    check_inputs(q, k, v, g, 4, initial_state=initial_state, cu_seqlens=cu_seqlens, scale=scale, mode=mode)
    return _run(q, k, v, g, "vector", scale, initial_state, output_final_state, cu_seqlens, mode, backend,
                final_state_in_place, kernel_config)
