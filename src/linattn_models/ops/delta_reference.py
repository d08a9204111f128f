"""Pure-PyTorch delta rule: the ground truth, the CPU backend and the fallback everywhere (docs/math.md, 'Delta rule').

Per sequence and head, with β_t in (0, 2] (usually (0, 1]; above 1 the delta step has a negative eigenvalue), log
gate g_t (None: DeltaNet; [.., H]: Gated DeltaNet, one per head and token; [.., H, K]: one per key dimension,
KDA-style) and S_0 = initial_state:

    S_t = (I − β_t k_t k_tᵀ) Diag(e^{g_t}) S_{t−1} + β_t k_t v_tᵀ,      o_t = scale · S_tᵀ q_t

(column vectors; a scalar gate commutes with the projection). As a delta step: the state decays, then its
prediction for k_t moves a fraction β_t of the way to v_t, u_t = β_t (v_t − kᵀ_t Diag(e^{g_t}) S_{t−1}),
S_t = Diag(e^{g_t}) S_{t−1} + k_t u_tᵀ.

`recurrent` runs that definition token by token. `chunked` is the WY (UT transform) form, C tokens at a time:
with b the chunk-local cumulative log gate and the pair product ⟨x_i, y_j⟩ = Σ_d x_id y_jd e^{b_id − b_jd} (j ≤ i),

    A     = strictly lower [β_i ⟨k_i, k_j⟩],   W = (I + A)^{-1} (β ⊙ K ⊙ e^b),   U = (I + A)^{-1} (β ⊙ V)
    V_new = U − W S_0,   O = scale [(Q ⊙ e^b) S_0 + P V_new],   P_ij = ⟨q_i, k_j⟩ (j ≤ i)
    S_C   = Diag(e^{b_C}) S_0 + (K ⊙ e^{b_C − b})ᵀ V_new

The triangular systems are solved in the compute dtype (torch.linalg.solve_triangular). Every exponent is a
difference b_i − b_j with i ≥ j (masked to −inf above the diagonal before exp), so nothing overflows however strong
the gate. The per-dimension gate forms its pair factor [C, C, K] elementwise, so it uses smaller chunks.
Both functions are plain autograd graphs: their gradients are the reference gradients.
Arithmetic is fp32 (fp64 for fp64 inputs); o comes back in the input dtype, states in fp32 (fp64).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .reference import compute_dtype

L2NORM_EPS = 1e-6  # q̂ = q (|q|² + eps)^(-1/2)
CHUNK = 64  # tokens per chunk of the chunked form (none / scalar gate)
CHUNK_VECTOR = 16  # the per-dimension gate's pair factor is [C, C, K] per chunk: keep C small


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    """x (|x|² + eps)^(-1/2) over the last dim, computed in fp32 (fp64 for fp64), returned in x's dtype."""
    y = x.to(compute_dtype(x))
    return (y * torch.rsqrt((y * y).sum(-1, keepdim=True) + eps)).to(x.dtype)


def _zero_state(q, v):
    B, _, H, K = q.shape
    return q.new_zeros(B, H, K, v.shape[-1], dtype=compute_dtype(q))


def _decay(S, a):
    """Diag(a) S for a [B, H] (scalar gate) or [B, H, K] (per key dimension); S: [B, H, K, V]."""
    return S * (a[..., None, None] if a.ndim == 2 else a[..., None])


def _recurrent_dense(q, k, v, beta, g, scale, h0):
    dt = compute_dtype(q)
    S = _zero_state(q, v) if h0 is None else h0.to(dt)
    q, k, v, beta = q.to(dt), k.to(dt), v.to(dt), beta.to(dt)
    outs = []
    for t in range(q.shape[1]):
        if g is not None:
            S = _decay(S, g[:, t].to(dt).exp())
        u = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S))
        S = S + k[:, t, :, :, None] * u[:, :, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape).to(dt)
    return o, S


def _chunked_dense(q, k, v, beta, g, scale, h0, chunk_size=None):
    B, T, H, K = q.shape
    dt = compute_dtype(q)
    vector = g is not None and g.ndim == 4
    C = chunk_size or (CHUNK_VECTOR if vector else CHUNK)
    n = max(1, -(-T // C))
    pad = n * C - T
    # A padded tail (q = k = v = 0, β = 0, g = 0) changes neither the outputs nor the state (docs/math.md, 'Delta rule').
    q, k, v = (F.pad(x.to(dt), (0, 0, 0, 0, 0, pad)).unflatten(1, (n, C)).transpose(2, 3) for x in (q, k, v))
    beta = F.pad(beta.to(dt), (0, 0, 0, pad)).unflatten(1, (n, C)).transpose(2, 3)  # [B, n, H, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = causal.tril(-1)
    if g is None:
        KK = k @ k.transpose(-1, -2)
        P = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0)
        qg, kw, kc, decay = q, k, k, None
    else:
        g = g.to(dt)
        g = F.pad(g, (0, 0, 0, 0, 0, pad) if vector else (0, 0, 0, pad)).unflatten(1, (n, C)).transpose(2, 3)
        b = g.cumsum(3)  # [B, n, H, C(, K)]
        if vector:
            diff = b[..., :, None, :] - b[..., None, :, :]  # [B, n, H, C, C, K]
            E = diff.masked_fill(~causal[..., None], float("-inf")).exp()
            KK = torch.einsum("bnhid,bnhjd,bnhijd->bnhij", k, k, E)
            P = torch.einsum("bnhid,bnhjd,bnhijd->bnhij", q, k, E)
            eb, ebc = b.exp(), (b[..., -1:, :] - b).exp()
            decay = b[..., -1, :].exp()  # [B, n, H, K]
        else:
            diff = b[..., :, None] - b[..., None, :]
            Gamma = diff.masked_fill(~causal, float("-inf")).exp()
            KK = (k @ k.transpose(-1, -2)) * Gamma
            P = (q @ k.transpose(-1, -2)) * Gamma
            eb, ebc = b.exp()[..., None], (b[..., -1:] - b).exp()[..., None]
            decay = b[..., -1].exp()  # [B, n, H]
        qg, kw, kc = q * eb, k * eb, k * ebc
    A = (beta[..., None] * KK).masked_fill(~strict, 0)
    I_A = A + torch.eye(C, dtype=dt, device=q.device)
    W = torch.linalg.solve_triangular(I_A, beta[..., None] * kw, upper=False, unitriangular=True)
    U = torch.linalg.solve_triangular(I_A, beta[..., None] * v, upper=False, unitriangular=True)
    # The one sequential pass over chunks.
    S = q.new_zeros(B, H, K, v.shape[-1]) if h0 is None else h0.to(dt)
    outs = []
    for c in range(n):
        vn = U[:, c] - W[:, c] @ S  # [B, H, C, V]
        outs.append(scale * (qg[:, c] @ S + P[:, c] @ vn))
        if decay is not None:
            S = _decay(S, decay[:, c])
        S = S + kc[:, c].transpose(-1, -2) @ vn
    o = torch.stack(outs, dim=1).transpose(2, 3).flatten(1, 2)  # [B, n·C, H, V]
    return o[:, :T], S


def run_delta_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                    g: Optional[torch.Tensor], scale: float, initial_state: Optional[torch.Tensor],
                    output_final_state: bool, cu_seqlens: Optional[torch.Tensor], mode: str,
                    chunk_size: Optional[int] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The torch backend of the delta rule: mode 'recurrent' (token loop) or 'chunk' (WY form).

    q, k, v, beta, g as in ops.delta_rule / ops.gated_delta_rule (q, k already L2-normalised if asked for).
    Returns (o in q.dtype, final state [N, H, K, V] or None).
    """
    if mode == "recurrent":
        fn = _recurrent_dense
    else:
        fn = lambda *a: _chunked_dense(*a, chunk_size=chunk_size)  # noqa: E731
    if cu_seqlens is None:
        o, S = fn(q, k, v, beta, g, scale, initial_state)
    else:
        bounds = cu_seqlens.tolist()
        outs, states = [], []
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0 = None if initial_state is None else initial_state[i:i + 1]
            o_i, S_i = fn(q[:, s:e], k[:, s:e], v[:, s:e], beta[:, s:e], None if g is None else g[:, s:e], scale,
                          h0)
            outs.append(o_i)
            states.append(S_i)
        o, S = torch.cat(outs, dim=1), torch.cat(states, dim=0)
    return o.to(q.dtype), (S if output_final_state else None)
