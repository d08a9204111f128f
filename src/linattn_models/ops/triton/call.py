"""What the kernel launches of one attention call share: shapes, flattened views, the varlen chunk index, the
config, and the plan the launches are queued on. Each kernel's launch function (beside its kernel) reads it."""
import torch

from .alloc import cdiv, dummy
from .common import GATE_KINDS
from .config import kernel_config
from .launch import Plan, dot_precision


def check_float_inputs(q):
    if q.dtype == torch.float64:
        raise TypeError("the Triton backend takes float32/float16/bfloat16 inputs; use backend='torch' for float64")


def empty_result(q, v, initial_state, output_final_state, cu_seqlens):
    """(o, state) of a call without tokens (B·T == 0): nothing runs, the state passes through; else None."""
    B, T, H, K = q.shape
    if B * T:
        return None
    o = v.new_zeros(v.shape).to(q.dtype)
    if not output_final_state:
        return o, None
    if initial_state is not None:
        return o, initial_state.float() + 0.0
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    return o, torch.zeros(N, H, K, v.shape[-1], dtype=torch.float32, device=q.device)


def writes_in_place(in_place, mode, cu_seqlens, output_final_state, initial_state):
    """Whether a call may write its final state into initial_state (final_state_in_place): a no-grad recurrent
    call without cu_seqlens on an fp32 contiguous state. No autograd node then (Function.apply would hand back a
    view, not the buffer itself), and each program reads its state tile first and writes the same tile last."""
    return (in_place and mode == "recurrent" and cu_seqlens is None and output_final_state
            and initial_state is not None and initial_state.dtype == torch.float32
            and initial_state.is_contiguous() and not torch.is_grad_enabled())


class Call:
    """One op call on the Triton kernels.

    q, k: [B, T, H, K], v: [B, T, H, V] become contiguous [B·T, H, D] views (varlen packs have B == 1). gate:
    "none" | "head" (g [H] float32) | "scalar" (g [B, T, H]) | "vector" (g [B, T, H, K]). With cu_seqlens, chunks
    are numbered per sequence (a chunk never crosses a boundary): chunk_indices [NT, 2] (sequence, chunk) and
    chunk_offsets [N + 1] are built on the device, with one host sync for the chunk count NT (the grid size).
    """

    def __init__(self, q, k, v, g, gate, scale, cu_seqlens, overrides=None):
        B, T, H, K = q.shape
        V = v.shape[-1]
        self.B, self.T, self.H, self.K, self.V = B, T, H, K, V
        self.TT = B * T
        self.device, self.dtype = q.device, q.dtype
        self.gate, self.GATE, self.scale = gate, GATE_KINDS[gate], float(scale)
        self.q = q.contiguous().view(self.TT, H, K)
        self.k = k.contiguous().view(self.TT, H, K)
        self.v = v.contiguous().view(self.TT, H, V)
        self.dummy = dummy(self.device)
        self.g_head = g.to(torch.float32).contiguous() if gate == "head" else self.dummy
        self.g = None
        if gate in ("scalar", "vector"):
            self.g = g.contiguous().view((self.TT, H) + ((K,) if gate == "vector" else ()))
        self.cfg = kernel_config(K, V, self.device, overrides)
        self.plan = Plan()
        self.launch = dict(num_warps=self.cfg["num_warps"], num_stages=self.cfg["num_stages"])
        self.prec = dot_precision(q.dtype)
        # chunk-boundary states: bf16 for bf16 inputs (they are tl.dot operands in bf16 anyway), else fp32
        self.hdtype = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32
        # vector gate: a sub-chunk whose decay is at most e^-diag_limit forms its own block as matmuls, the
        # operands scaled by up to e^diag_limit (chunk_fwd.py, chunk_bwd.py). Must be >= 0: it also clamps valid
        # exponents. The A kernel's operands are in the input dtype: fp16 (max 65504) cannot hold e^30-scaled
        # values, so there it is 0 (only a sub-chunk without decay, factors exactly 1); the backward's are fp32.
        self.diag_limit = float(self.cfg["diag_limit"])
        self.diag_limit_A = 0.0 if q.dtype == torch.float16 else self.diag_limit
        BT = self.cfg["BT"]
        self.varlen = cu_seqlens is not None
        if self.varlen:
            self.cu = cu_seqlens.to(device=self.device, dtype=torch.int64).contiguous()
            self.N = self.cu.numel() - 1
            nts = (self.cu[1:] - self.cu[:-1] + BT - 1) // BT
            self.chunk_offsets = torch.cat([nts.new_zeros(1), nts.cumsum(0)])
            self.NT = int(self.chunk_offsets[-1].item())  # the one host sync: the grid size
            seq = torch.repeat_interleave(torch.arange(self.N, device=self.device), nts, output_size=self.NT)
            self.chunk_indices = torch.stack(
                [seq, torch.arange(self.NT, device=self.device) - self.chunk_offsets[seq]], 1).to(torch.int32)
        else:
            self.cu = self.chunk_offsets = self.chunk_indices = self.dummy
            self.N, self.NT = B, B * cdiv(T, BT)

    def opt(self, t):
        """A tensor argument that may be absent: the dummy pointer stands in (a constexpr flag guards its use)."""
        return self.dummy if t is None else t

    def chunk_args(self):
        """The arguments every per-chunk kernel takes to find its chunk (common.chunk_bounds)."""
        return dict(cu_seqlens=self.cu, chunk_indices=self.chunk_indices, T=self.T, BT=self.cfg["BT"],
                    VARLEN=self.varlen)
