"""Pure-PyTorch gated linear attention: the ground truth, the CPU backend and the fallback everywhere.

Per sequence and head, with log gate g_t (None: no decay; [.., H]: one per head; [.., H, K]: per key dim):

    S_t = diag(exp(g_t)) S_{t-1} + k_tᵀ v_t,    o_t = scale · q_t S_t,    S_0 = initial_state

`recurrent` runs that definition token by token. `chunked` computes the same thing a chunk of C tokens at
a time (docs/math.md, 'Chunked forward'): with b the cumulative log gate inside a chunk,

    o_i = scale (q_i ⊙ exp(b_i)) S_0 + scale Σ_{j≤i} (q_i · (k_j ⊙ exp(b_i − b_j))) v_j
    S_C = diag(exp(b_C)) S_0 + Σ_j (k_j ⊙ exp(b_C − b_j))ᵀ v_j

Every exponent is a difference b_i − b_j with i ≥ j, so it is ≤ 0 and nothing overflows however strong the
gate. Both functions are plain autograd graphs, so their gradients are the reference gradients.
Arithmetic is fp32 (fp64 for fp64 inputs); o comes back in the input dtype, states in fp32 (fp64).
"""
import torch
import torch.nn.functional as F


def compute_dtype(x):
    """The dtype to accumulate in for a tensor (or dtype) x: float64 for float64 (exact references), else float32."""
    dtype = x if isinstance(x, torch.dtype) else x.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_sequence(fn, q, k, v, g, scale, initial_state, cu_seqlens):
    """Run the dense `fn` on each packed sequence of a cu_seqlens batch (B == 1); states get N rows."""
    bounds = cu_seqlens.tolist()
    outs, states = [], []
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[n:n + 1]
        o, s = fn(q[:, a:b], k[:, a:b], v[:, a:b], None if g is None else g[:, a:b], scale, h0)
        outs.append(o)
        states.append(s)
    return torch.cat(outs, dim=1), torch.cat(states, dim=0)


def _zero_state(q, v):
    B, _, H, K = q.shape
    return q.new_zeros(B, H, K, v.shape[-1], dtype=compute_dtype(q))


def _recurrent_dense(q, k, v, g, scale, h0):
    dt = compute_dtype(q)
    S = _zero_state(q, v) if h0 is None else h0.to(dt)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    outs = []
    for t in range(q.shape[1]):
        if g is not None:
            a = g[:, t].to(dt).exp()
            S = S * (a[..., None, None] if a.ndim == 2 else a[..., None])
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return o, S


def _chunked_dense(q, k, v, g, scale, h0, chunk_size=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = compute_dtype(q)
    vector = g is not None and g.ndim == 4
    # The vector gate's intra-chunk factor is [C, C, K] per chunk: keep C small so it stays cheap.
    C = chunk_size or (16 if vector else 64)
    n = max(1, -(-T // C))
    pad = n * C - T
    # Padded tail: k = v = 0 adds nothing to the state and g = 0 does not decay it.
    q, k, v = (F.pad(x.to(dt), (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
    if g is None:
        b = None
    else:
        g = g.to(dt)
        g = F.pad(g, (0, 0, 0, 0, 0, pad) if vector else (0, 0, 0, pad))
        b = g.unflatten(1, (n, C)).cumsum(2)  # [B, n, C, H(, K)]
    q, k, v = (x.unflatten(1, (n, C)) for x in (q, k, v))  # [B, n, C, H, D]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if b is None:
        A = torch.einsum("bnihk,bnjhk->bnhij", q, k).masked_fill(~causal, 0)
        qg, kg, decay = q, k, None
    elif not vector:
        bh = b.transpose(2, 3)  # [B, n, H, C]
        diff = (bh[..., :, None] - bh[..., None, :]).masked_fill(~causal, float("-inf"))
        A = torch.einsum("bnihk,bnjhk->bnhij", q, k) * diff.exp()
        qg = q * b.exp()[..., None]
        kg = k * (b[:, :, -1:] - b).exp()[..., None]
        decay = b[:, :, -1].exp()[..., None]  # [B, n, H, 1]
    else:
        bh = b.transpose(2, 3)  # [B, n, H, C, K]
        diff = (bh[..., :, None, :] - bh[..., None, :, :]).masked_fill(~causal[..., None], float("-inf"))
        A = torch.einsum("bnihk,bnjhk,bnhijk->bnhij", q, k, diff.exp())
        qg = q * b.exp()
        kg = k * (b[:, :, -1:] - b).exp()
        decay = b[:, :, -1].exp()  # [B, n, H, K]
    o = scale * torch.einsum("bnhij,bnjhv->bnihv", A, v)
    # Per-chunk state contributions, then the one sequential pass over chunks.
    U = torch.einsum("bnjhk,bnjhv->bnhkv", kg, v)
    S = q.new_zeros(B, H, K, V) if h0 is None else h0.to(dt)
    entering = []
    for c in range(n):
        entering.append(S)
        S = (S if decay is None else S * decay[:, c, :, :, None]) + U[:, c]
    S_in = torch.stack(entering, dim=1)  # [B, n, H, K, V]
    o = o + scale * torch.einsum("bnihk,bnhkv->bnihv", qg, S_in)
    return o.flatten(1, 2)[:, :T], S


def run_torch(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, mode, chunk_size=None):
    """The torch backend: mode 'recurrent' (token loop) or 'chunk'; returns (o in q.dtype, final state or None)."""
    if mode == "recurrent":
        fn = _recurrent_dense
    else:
        fn = lambda *a: _chunked_dense(*a, chunk_size=chunk_size)  # noqa: E731
    if cu_seqlens is not None:
        o, S = _per_sequence(fn, q, k, v, g, scale, initial_state, cu_seqlens)
    else:
        o, S = fn(q, k, v, g, scale, initial_state)
    return o.to(q.dtype), (S if output_final_state else None)
