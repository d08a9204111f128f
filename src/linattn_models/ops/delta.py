"""The delta rule ops: DeltaNet and Gated DeltaNet (docs/math.md, 'Delta rule'), in the project's [B, T, H, K] layout.

Per sequence and head (column vectors; S: [K, V] state, fp32 in the kernels):

    S_t = e^{g_t} (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,      o_t = scale · S_tᵀ q_t

delta_rule has no gate (g = 0); gated_delta_rule takes g: [B, T, H] log decays (<= 0), or [B, T, H, K] (one per
key dimension, KDA-style: S_t = (I − β_t k_t k_tᵀ) Diag(e^{g_t}) S_{t−1} + β_t k_t v_tᵀ).
Backends as for the other ops (dispatch.py): "triton" (ops/triton/delta.py) or "torch" (delta_reference.py).
"""
from typing import Optional, Tuple

import torch

from . import fused, library
from .api import RECURRENT_MAX_T, _refuse_kernel_config, _resolve_scale
from .delta_reference import run_delta_torch
from .dispatch import resolve_backend, triton_ops
from .library import compiling
from .validate import check_inputs


def _run_delta(q, k, v, g, beta, use_qk_l2norm, scale, initial_state, output_final_state, cu_seqlens, mode,
               backend, final_state_in_place=False, kernel_config=None):
    scale = _resolve_scale(q, scale)
    if use_qk_l2norm:  # before the kernels, as its own op: autograd carries its gradient (docs/math.md, 'Delta rule')
        q, k = fused.l2_norm(q, backend=backend), fused.l2_norm(k, backend=backend)
    if compiling():  # torch.compile: the custom op linattn::delta (ops/library.py), dispatching the same way inside
        _refuse_kernel_config(kernel_config)
        return library.call_delta(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, mode,
                                  backend)
    if mode == "auto":
        mode = "recurrent" if q.shape[1] <= RECURRENT_MAX_T else "chunk"
    if resolve_backend(backend, q.device) == "triton":
        return triton_ops().run_delta_triton(q, k, v, g, beta, scale, initial_state, output_final_state,
                                             cu_seqlens, mode, in_place=final_state_in_place,
                                             overrides=kernel_config)
    return run_delta_torch(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, mode)


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, use_qk_l2norm: bool = False,
               scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
               output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, mode: str = "auto",
               backend: Optional[str] = None, final_state_in_place: bool = False,
               kernel_config: Optional[dict] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The delta rule (DeltaNet): S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

    Args:
        q: queries [B, T, H, K].
        k: keys [B, T, H, K]. Keep |k| <= 1 (use_qk_l2norm=True does it): the state then cannot grow (docs/math.md, 'Delta rule').
        v: values [B, T, H, V].
        beta: step sizes [B, T, H] in (0, 1] (e.g. a sigmoid), or up to 2 (negative eigenvalues, 2·sigmoid).
        use_qk_l2norm: L2-normalise q and k over K first (eps 1e-6), with its gradient.
        scale: multiplies q; default K ** -0.5.
        initial_state: [N, H, K, V] float32 (float64 for float64 inputs), N = B or len(cu_seqlens) - 1.
        output_final_state: also return the state after the last token of each sequence.
        cu_seqlens: int [N + 1] boundaries of N packed sequences (B == 1), FlashAttention style.
        mode: "chunk" (training, prefill), "recurrent" (decoding) or "auto" (recurrent up to 32 tokens).
        backend: "torch", "triton" or None / "auto" (LINATTN_BACKEND, else Triton for GPU tensors).
        final_state_in_place, kernel_config: as for the other ops (ops/api.py): write the final state into
            initial_state's buffer (no-grad recurrent Triton calls); Triton block-size / warps overrides.

    Returns:
        (o [B, T, H, V] in q's dtype, final state [N, H, K, V] float32 or None).

    Example:
        >>> q, k, v = torch.randn(2, 100, 4, 64), torch.randn(2, 100, 4, 64), torch.randn(2, 100, 4, 64)
        >>> beta = torch.rand(2, 100, 4).clamp_min(1e-3)
        >>> o, state = delta_rule(q, k, v, beta, use_qk_l2norm=True, output_final_state=True)
        >>> o.shape, state.shape
        (torch.Size([2, 100, 4, 64]), torch.Size([2, 4, 64, 64]))
    """
    check_inputs(q, k, v, initial_state=initial_state, cu_seqlens=cu_seqlens, scale=scale, mode=mode, beta=beta)
    return _run_delta(q, k, v, None, beta, use_qk_l2norm, scale, initial_state, output_final_state, cu_seqlens,
                      mode, backend, final_state_in_place, kernel_config)


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     use_qk_l2norm: bool = False, scale: Optional[float] = None,
                     initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                     cu_seqlens: Optional[torch.Tensor] = None, mode: str = "auto",
                     backend: Optional[str] = None, final_state_in_place: bool = False,
                     kernel_config: Optional[dict] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The gated delta rule (Gated DeltaNet): S_t = e^{g_t} (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,
    o_t = scale · S_tᵀ q_t.

    Args:
        q, k, v, beta, use_qk_l2norm, scale, initial_state, output_final_state, cu_seqlens, mode, backend,
        final_state_in_place, kernel_config: as in delta_rule.
        g: log decays (<= 0), [B, T, H] (one per token and head), or [B, T, H, K] (one per key dimension,
            KDA-style: the state decays Diag(e^{g_t}) before the delta step).

    Returns:
        (o [B, T, H, V] in q's dtype, final state [N, H, K, V] float32 or None).

    Example:
        >>> import torch.nn.functional as F
        >>> q, k, v = torch.randn(1, 50, 2, 32), torch.randn(1, 50, 2, 32), torch.randn(1, 50, 2, 16)
        >>> g, beta = F.logsigmoid(torch.randn(1, 50, 2)), torch.rand(1, 50, 2).clamp_min(1e-3)
        >>> cu = torch.tensor([0, 20, 50])
        >>> o, state = gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True, cu_seqlens=cu, output_final_state=True)
        >>> o.shape, state.shape
        (torch.Size([1, 50, 2, 16]), torch.Size([2, 2, 32, 16]))
    """
    g_ndim = g.ndim if isinstance(g, torch.Tensor) and g.ndim in (3, 4) else 3
    check_inputs(q, k, v, g, g_ndim, initial_state=initial_state, cu_seqlens=cu_seqlens, scale=scale, mode=mode,
                 beta=beta)
    return _run_delta(q, k, v, g, beta, use_qk_l2norm, scale, initial_state, output_final_state, cu_seqlens, mode,
                      backend, final_state_in_place, kernel_config)
