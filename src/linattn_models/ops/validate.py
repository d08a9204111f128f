"""Input checks for the public ops: every error names the argument and what was expected.

Checks that need the tensor values (gates > 0, NaN/inf) force a host sync on a GPU, so they always run
on CPU tensors and run on GPU tensors only when LINATTN_CHECK_VALUES=1 (see `values_checked`). They never run
while torch.compile traces (a data-dependent branch is a graph break); the shape, dtype and device checks,
static under compile, always run.
"""
import torch

from .. import env

from .reference import compute_dtype

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# the ops' `mode` values; the layers' and configs' attn_mode take the same
ATTN_MODES = ("auto", "chunk", "recurrent")


def values_checked(t: torch.Tensor) -> bool:
    """Whether value checks (a host sync) run for this tensor: on CPU tensors and with LINATTN_CHECK_VALUES=1,
    never while torch.compile traces (docs/compile.md)."""
    if torch.compiler.is_compiling():
        return False
    return t.device.type == "cpu" or env.flag("LINATTN_CHECK_VALUES")


def refuse_double_backward(op, instead):
    """Call first in a custom autograd backward whose own computation autograd cannot see (Triton kernels, or
    values made in the forward). With create_graph=True (a gradient penalty, Hessian-vector products) that backward
    would return gradients with no graph, so the second-order terms would silently be zero: refuse instead.
    Grad mode is on inside a backward exactly when create_graph=True."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{op}: double backward (create_graph=True) is not supported, its gradient would "
                           f"silently miss the second-order terms; {instead}")


def _check_tensor(name, t, ndim):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def check_inputs(q, k, v, g=None, g_ndim=None, initial_state=None, cu_seqlens=None, scale=None, mode="auto",
                 beta=None):
    """Validate the common op arguments; returns N, the number of sequences (B, or len(cu_seqlens) - 1).

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] (g_ndim=3) or [B, T, H, K] (g_ndim=4);
    initial_state: [N, H, K, V] float32 (or float64 when q is float64); cu_seqlens: int [N+1], needs B == 1;
    beta (the delta rule's step sizes): [B, T, H], values in (0, 2] ((1, 2]: negative eigenvalues 1 - beta of
    I - beta k k^T, as OLMo Hybrid's allow_neg_eigval; with |k| = 1 the state stays bounded either way).
    """
    _check_tensor("q", q, 4)
    _check_tensor("k", k, 4)
    _check_tensor("v", v, 4)
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)} ([B, T, H, K]), got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {B}, {T}, {H} as in q, got {tuple(v.shape)}")
    if K == 0 or v.shape[3] == 0:
        raise ValueError(f"head dimensions must be positive, got K={K}, V={v.shape[3]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    tensors = {"q": q, "k": k, "v": v}
    if g is None and g_ndim is not None:
        raise ValueError(f"g (the log decays, [B, T, H{'' if g_ndim == 3 else ', K'}]) is required, got None; "
                         "for no decay use linear_attention")
    if g is not None:
        _check_tensor("g", g, g_ndim)
        want = (B, T, H) if g_ndim == 3 else (B, T, H, K)
        if tuple(g.shape) != want:
            raise ValueError(f"g must have shape {want} ([B, T, H{'' if g_ndim == 3 else ', K'}]), got {tuple(g.shape)}")
        tensors["g"] = g
    if beta is not None:
        _check_tensor("beta", beta, 3)
        if tuple(beta.shape) != (B, T, H):
            raise ValueError(f"beta must have shape {(B, T, H)} ([B, T, H]: one step size per token and head of q), "
                             f"got {tuple(beta.shape)}")
        tensors["beta"] = beta
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
            raise ValueError(
                f"cu_seqlens must be a 1-D int32/int64 tensor [N+1] of sequence boundaries, "
                f"got {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}")
        if B != 1:
            raise ValueError(f"cu_seqlens needs a packed batch with B == 1, got B={B}")
        tensors["cu_seqlens"] = cu_seqlens
        N = cu_seqlens.numel() - 1
    else:
        N = B
    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor):
            raise TypeError(f"initial_state must be a torch.Tensor, got {type(initial_state).__name__}")
        want = (N, H, K, v.shape[3])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must have shape [N, H, K, V] = {want}, got {tuple(initial_state.shape)}")
        allowed = {torch.float32, compute_dtype(q)}  # float64 inputs compute in float64 from a float32 state too
        if initial_state.dtype not in allowed:
            raise TypeError(f"initial_state must be float32 (states are kept in fp32; float64 also for float64 "
                            f"inputs), got {initial_state.dtype}")
        tensors["initial_state"] = initial_state
    devices = {n: t.device for n, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {', '.join(f'{n}: {d}' for n, d in devices.items())}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if mode not in ATTN_MODES:
        raise ValueError(f"mode must be 'auto', 'chunk' or 'recurrent', got {mode!r}")
    if cu_seqlens is not None and values_checked(cu_seqlens):
        c = cu_seqlens.tolist()
        if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:])):
            raise ValueError(f"cu_seqlens must start at 0, never decrease and end at T={T}, got {c}")
    if values_checked(q):
        for name in ("q", "k", "v"):
            if not torch.isfinite(tensors[name]).all():
                raise ValueError(f"{name} contains NaN or inf")
    if g is not None and values_checked(g):
        if not torch.isfinite(g).all():
            raise ValueError("g contains NaN or inf")
        if (g > 0).any():
            raise ValueError(f"g holds log decays and must be <= 0 (decay exp(g) in (0, 1]); max is {g.max().item():.4g}")
    if beta is not None and values_checked(beta):
        if not torch.isfinite(beta).all():
            raise ValueError("beta contains NaN or inf")
        if ((beta <= 0) | (beta > 2)).any():
            raise ValueError(f"beta holds the delta rule's step sizes and must lie in (0, 2]; got min "
                             f"{beta.min().item():.4g}, max {beta.max().item():.4g}")
    return N
