"""Context parallelism: one sequence split across the ranks of a process group, each rank holding a contiguous piece.

Every op here is linear in its state: the state leaving a piece is an affine map of the state entering it,
S_out = M S_in + s, with s the piece's final state from a zero start and M [K, K] the piece's transition
(the identity for linear attention, a diagonal of decays for retention / simple GLA / GLA, and for the delta rule
the product of e^{g_t} (I − β_t k_t k_tᵀ), obtained by running the op itself from S_in = I with v = 0). So the
ranks exchange only (M, s) — [H, K, K] and [H, K, V] per row — never keys and values:

    1. each rank: s_r = its piece's final state from a zero start (rank 0: from initial_state), and M_r;
    2. all-gather (M_j, s_j); rank r folds S_r = M_{r−1}(… (M_0 · 0 + s_0) …) + s_{r−1}, the state entering it;
    3. each rank reruns its piece from S_r: its outputs (and, on the last rank, the sequence's final state).

The cost is one extra pass of the op per rank (two for the delta rule: the transition pass); the gain is that no
rank holds more than its piece. The backward is autograd's through the three steps; the one cross-rank step
(`_EnteringState`) sums the gradients of every (M_j, s_j) over the ranks with one all-reduce. Collectives are
torch.distributed's (NCCL on GPUs, gloo on CPU).
"""
import contextlib

import torch
import torch.distributed as dist

from . import api, delta

# The process group the models split their sequences over, set by `split_sequence` (None: not split). A plain
# module global, not a ContextVar: torch.compile traces a global read (and guards on it), not ContextVar.get.
_GROUP = None
_WORLD = object()  # stands for the default group (None is "not split")


@contextlib.contextmanager
def split_sequence(group=None):
    """Inside it, the models treat their input as this rank's piece of one sequence split over `group` (default:
    the world) in rank order: the linear mixers run through `context_parallel`, short convs take the previous
    rank's last inputs, softmax-attention layers attend to the earlier ranks' keys, rotary positions continue
    from the earlier pieces. Training and full forwards only (no cache, no padding mask). Process-wide (one
    split at a time per process, as the ranks' collectives are anyway)."""
    global _GROUP
    before, _GROUP = _GROUP, (_WORLD if group is None else group)
    try:
        yield
    finally:
        _GROUP = before


def active_group():
    """(True, group) inside `split_sequence`, else (False, None)."""
    g = _GROUP
    return (False, None) if g is None else (True, None if g is _WORLD else g)


def piece_sizes(T, device, group=None):
    """Every rank's piece length, in rank order (pieces may differ in length)."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([T], dtype=torch.long, device=device), group=group)
    return [int(s.item()) for s in sizes]


def piece_offset(T, device, group=None):
    """The number of tokens on the ranks before this one."""
    return sum(piece_sizes(T, device, group)[:dist.get_rank(group)])


def gather_sequence(x, sizes, group=None):
    """x [B, T_r, ...] of every rank, concatenated in rank order over dim 1 (autograd: the gradient of each piece
    goes back to its rank); sizes: every rank's T_r (piece_sizes). Every rank's graph reaches the gather (its
    backward is a collective)."""
    import torch.distributed.nn.functional as dnn
    pad = max(sizes) - x.shape[1]
    padded = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], 1) if pad else x
    parts = dnn.all_gather(padded.contiguous(), group=group)
    return torch.cat([p[:, :n] for p, n in zip(parts, sizes)], 1)


def halo(x, width, group=None):
    """The `width` inputs [B, width, D] just before this rank's piece x [B, T_r, D] (zeros on rank 0): what a
    causal conv of width + 1 taps reads across the piece boundary. Every piece must hold >= width tokens."""
    import torch.distributed.nn.functional as dnn
    if x.shape[1] < width:
        raise ValueError(f"context parallel: a piece of {x.shape[1]} tokens is shorter than the short conv's "
                         f"{width} tokens of history; give every rank at least {width} tokens")
    tails = torch.stack(dnn.all_gather(x[:, x.shape[1] - width:].contiguous(), group=group))  # [world, B, w, D]
    rank = dist.get_rank(group)
    return tails[rank - 1] if rank else tails[0] * 0  # rank 0 too keeps a path to the gather, for its backward

_ADDITIVE = (api.linear_attention, api.retention, api.simple_gla, api.gated_linear_attention)  # diagonal transitions
_DELTA = (delta.delta_rule, delta.gated_delta_rule)


def context_parallel(op, q, k, v, *args, group=None, initial_state=None, output_final_state=False, **kwargs):
    """Run `op` on this rank's piece of a sequence whose pieces lie, in rank order, on the ranks of `group`.

    Args:
        op: one of ops.linear_attention, retention, simple_gla, gated_linear_attention, delta_rule, gated_delta_rule.
        q, k, v, *args: this rank's piece ([B, T_r, H, ·], and the op's gates / beta likewise); every rank has the
            same B, H, K, V (T_r may differ).
        group: the torch.distributed process group (default: the world).
        initial_state: the state before the whole sequence, read on rank 0 only (pass None on the others).
        output_final_state: also return the state after the whole sequence, on every rank (folded from the
            exchanged summaries; a loss should use it on one rank only, since each rank's use adds its gradient).
        **kwargs: the op's other arguments (scale, use_qk_l2norm, normalize, mode, backend, ...). cu_seqlens
            (packed sequences) is not supported yet.

    Returns:
        (o of this rank's piece, final state or None), as the op itself.

    Every rank must call it (and, when training, run backward) in the same order: it communicates forward and back.
    """
    if op not in _ADDITIVE and op not in _DELTA:
        raise ValueError(f"context_parallel: op must be one of the ops.* families, got {op!r}")
    if kwargs.get("cu_seqlens") is not None:
        raise ValueError("context_parallel: cu_seqlens (packed sequences) is not supported yet; split a batch of "
                         "whole sequences across data-parallel ranks instead")
    if kwargs.get("final_state_in_place"):
        raise ValueError("context_parallel: final_state_in_place is for decoding, not for a split sequence")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if rank != 0 and initial_state is not None:
        raise ValueError(f"context_parallel: initial_state is read on rank 0 only; rank {rank} got one (pass None)")
    if world == 1:
        return op(q, k, v, *args, initial_state=initial_state, output_final_state=output_final_state, **kwargs)
    normalize = kwargs.pop("normalize", False)  # linear attention's normaliser: a running key sum, exchanged too
    _, s = op(q, k, v, *args, initial_state=initial_state, output_final_state=True, **kwargs)
    M = _transition(op, q, k, v, args, s.dtype, kwargs)
    entering, final = _EnteringState.apply(M, s, group, output_final_state)
    if rank == 0 and initial_state is not None:
        entering = entering + initial_state  # rank 0's fold is 0 (it is the first piece), with a gradient path
    o, _ = op(q, k, v, *args, initial_state=entering, output_final_state=False, **kwargs)
    if normalize:
        o = _normalize(o, q, k, kwargs.get("scale"), group, rank)
    return o, final if output_final_state else None


def _transition(op, q, k, v, args, dtype, kwargs):
    """M [B, H, K, K]: the map this piece applies to an entering state (S_out = M S_in + s)."""
    B, T, H, K = q.shape
    eye = torch.eye(K, dtype=dtype, device=q.device)
    if op is api.linear_attention:
        return eye.expand(B, H, K, K)
    if op is api.retention:
        decay = (T * api.retention_log_decays(H, q.device, dtype)).exp()  # [H]
        return decay[None, :, None, None] * eye.expand(B, H, K, K)
    if op in _ADDITIVE:  # simple_gla g [B, T, H], gla g [B, T, H, K]: the piece's total decay
        g = args[0].to(dtype).sum(1)
        g = g[..., None].expand(B, H, K) if g.ndim == 2 else g
        return torch.diag_embed(g.exp())
    # the delta rule: run the op from S_in = I with no values; its final state is M · I = M
    _, M = op(q, k, torch.zeros(B, T, H, K, dtype=v.dtype, device=v.device), *args,
              initial_state=eye.expand(B, H, K, K).contiguous(), output_final_state=True, **kwargs)
    return M


def _normalize(o, q, k, scale, group, rank):
    """Linear attention's normaliser with the key sums of the earlier pieces (all-gathered, with autograd)."""
    import torch.distributed.nn.functional as dnn
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    sums = torch.stack(dnn.all_gather(k.to(dt).sum(1), group=group))  # [world, B, H, K]
    # every rank's graph must reach the gather (even rank 0, which adds none): its backward is a collective
    z0 = sums[:rank].sum(0)
    o, _ = api.normalize_linear_attention(o, q, k, api._resolve_scale(q, scale), z0=z0)
    return o


class _EnteringState(torch.autograd.Function):
    """(M_r, s_r) of this rank -> (the state entering this rank, the state after the last rank or None).

    Forward all-gathers the summaries and folds S_{j+1} = M_j S_j + s_j from S_0 = 0. Backward walks the fold in
    reverse on every rank and all-reduces the gradients of all (M_j, s_j), so each rank receives the sum of what
    every rank's use of the fold asked of its own summary."""

    @staticmethod
    def forward(ctx, M, s, group, with_final):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        Ms, ss = [torch.empty_like(M) for _ in range(world)], [torch.empty_like(s) for _ in range(world)]
        dist.all_gather(Ms, M.contiguous(), group=group)
        dist.all_gather(ss, s.contiguous(), group=group)
        states = [torch.zeros_like(s)]  # states[j] = S_j, entering rank j
        for j in range(world if with_final else rank):
            states.append(Ms[j] @ states[j] + ss[j])
        ctx.group, ctx.rank, ctx.world, ctx.with_final = group, rank, world, with_final
        ctx.save_for_backward(*Ms, *states)
        final = states[world].clone() if with_final else None
        return states[rank].clone(), final

    @staticmethod
    def backward(ctx, d_entering, d_final):
        world, rank = ctx.world, ctx.rank
        Ms, states = ctx.saved_tensors[:world], ctx.saved_tensors[world:]
        n = len(states) - 1  # the fold's last index (world, or rank without the final state)
        G = d_final.clone() if ctx.with_final and d_final is not None else torch.zeros_like(states[0])
        dM = torch.zeros(world, *Ms[0].shape, dtype=Ms[0].dtype, device=Ms[0].device)
        ds = torch.zeros(world, *states[0].shape, dtype=states[0].dtype, device=states[0].device)
        for j in range(n - 1, -1, -1):  # G = dL/dS_{j+1} here
            if j + 1 == rank and d_entering is not None:
                G = G + d_entering
            ds[j] = G
            dM[j] = G @ states[j].transpose(-1, -2)
            G = Ms[j].transpose(-1, -2) @ G
        dist.all_reduce(dM, group=ctx.group)
        dist.all_reduce(ds, group=ctx.group)
        return dM[rank], ds[rank], None, None
