"""Triton backend of the ops: `run_triton` (called by ops/api.py) and the autograd function around the kernels.

Kernels (one family, the gate kind a tl.constexpr: 0 none, 1 per-head constant, 2 scalar, 3 vector):
  common.py     chunk/sequence bounds, tile loads, chunk-local cumsum of g, the gate gradient
  states.py     the sequential pass over chunks: boundary states (forward) and their gradients (backward)
  chunk_fwd.py  per-chunk output (and the vector gate's intra-chunk matrix A); the one-pass forward
  chunk_bwd.py  per-chunk dq, dk, dv (and the vector gate's intra-chunk parts)
  recurrent.py  token-by-token form (decoding, mode="recurrent")
  delta_fwd.py, delta_bwd.py, delta.py   the delta rule (DeltaNet, Gated DeltaNet): its own kernels on the same
                indexing, cumsum and launch queue (see delta.py)

Forward (chunk): b = chunk-local cumsum of g → states pass (stores the state entering each chunk) → [A] → o;
or, for gate kinds none/head/scalar when the grid fills the device, chunk_fwd.chunk_onepass_kernel: one kernel,
the state kept in registers across chunks, so only q, k, v (, g) are read and o written.
Backward: b and the chunk states are RECOMPUTED rather than kept from the forward (the vector gate's
intra-chunk matrix A is kept: see _GatedLinearAttention.forward): storing the states costs
T/BT·K·V values per head (256 MB in fp32 at B=4, H=16, T=4096, K=V=128, per layer: more than q, k, v together),
while recomputing is one more sequential pass, about the cost of the forward's state pass. Chosen on memory (a
24-layer training model would hold 6 GB of states at that shape); the speed cost of the extra pass is not yet
measured. Boundary states are kept in bf16 for bf16 inputs (they are tl.dot operands in bf16 anyway) and in fp32
otherwise; fp16 inputs cast the fp32 state to fp16 for the tensor-core product (as fla does), so states beyond
fp16's range (65504) would overflow there: use bf16 or fp32 for such inputs. Then the reverse states pass (dS per chunk,
dh0) → [dA, intra] → dv → dq, dk (+ rowsum(S_C ⊙ dS_C) per chunk) → dg (chunk-local reverse cumsum of
q⊙dq − k⊙dk plus that chunk-end term: common.py says why per chunk, not per sequence; the vector gate's in the
dq, dk kernel itself, which holds its K block's fp32 dq, dk, so they leave it in the input dtype).
mode="recurrent" runs recurrent.py forward and the same chunked backward (identical math).

Varlen (cu_seqlens): chunks are numbered per sequence (a chunk never crosses a boundary); a small index
[NT, 2] (sequence, chunk) is built on the device, with one host sync for the chunk count (the grid size).
"""
import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import triton

from .chunk_bwd import chunk_dqk_kernel, chunk_dv_kernel, chunk_vector_dA_kernel, chunk_vector_intra_bwd_kernel
from .chunk_fwd import chunk_onepass_kernel, chunk_out_kernel, chunk_vector_A_kernel
from .common import GATE_KINDS, GATE_SCALAR, GATE_VECTOR, gate_grad_kernel, local_cumsum_kernel
from .recurrent import recurrent_kernel
from .states import chunk_state_kernel

# Triton picks interpreter vs compiler when a @triton.jit function is defined, i.e. when this module is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Fill every output and scratch buffer with NaN before the kernels run, so unwritten memory shows (tests).
POISON = os.environ.get("LINATTN_TRITON_POISON", "0") == "1"
# LINATTN_PARALLEL_COMPILE=0: compile each kernel at its first launch, one by one (see _compile_parallel).
PARALLEL_COMPILE = os.environ.get("LINATTN_PARALLEL_COMPILE", "1") != "0"
# Config overrides (keys of _config), e.g. for a block-size/warps sweep on a GPU.
OVERRIDES = {}


# Keys of launch plans whose kernels were compiled in parallel already (_Problem._flush).
_COMPILED = set()


def _compile_parallel(plan):
    """Compile the plan's kernels on a thread pool (Triton's AsyncCompileMode + warmup; the compiler releases the
    GIL: on the 2-core dev box 8 kernels took 4.1 s in 2 threads against 8.5 s one by one). Each warmup takes the
    very arguments of its launch, so the launch finds its kernel compiled. Where that fails (no AsyncCompileMode
    in this Triton, a compile error), the launches compile one by one as usual and raise any error there."""
    mode = getattr(triton, "AsyncCompileMode", None)
    if INTERPRET or mode is None or len(plan) < 2 or not PARALLEL_COMPILE:
        return
    try:
        with ThreadPoolExecutor(min(len(plan), os.cpu_count() or 1)) as pool, mode(pool):
            for kernel, grid, args, kw in plan:
                kernel.warmup(*args, grid=grid, **kw)
    except Exception as e:  # noqa: BLE001
        try:  # Triton 3.6 leaves the mode active when a compile raised: later launches would go to the closed pool
            from triton.runtime import _async_compile
            _async_compile.active_mode.set(None)
        except Exception:  # noqa: BLE001
            pass
        warnings.warn(f"linattn_models: parallel Triton compile failed ({e!r:.200}); compiling one by one")


def _new(shape, dtype, device):
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def _dummy(device):
    """A placeholder for pointer arguments a launch does not use (the kernels never write through it; reads are
    guarded by constexpr flags). One per device, so a call does not pay an allocation and a fill for it."""
    return torch.zeros(1, dtype=torch.float32, device=device)


def _np2(x, lo=16):
    return max(lo, triton.next_power_of_2(int(x)))


@functools.lru_cache(maxsize=None)
def _shared_mem(device):
    if INTERPRET or device.type == "cpu":
        return 1 << 20
    try:
        return triton.runtime.driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"]
    except Exception:  # unknown driver: assume a small part
        return 64 * 1024


def _config(K, V, device):
    """Block sizes and warps for this call: the cached defaults (_default_config) plus OVERRIDES."""
    cfg = dict(_default_config(K, V, _shared_mem(device) >= 160 * 1024))
    cfg.update(OVERRIDES)
    return cfg


@functools.lru_cache(maxsize=None)
def _default_config(K, V, big):
    """Block sizes and warps from the head dims and the device's shared memory (no autotune: first call fast).
    Cached: computing it costs ~0.1 ms of host time per call (triton.next_power_of_2 is a jit-wrapped function).

    BT = 64 rows per chunk, BC = 16 rows per sub-chunk (vector gate). Tiles of 64 along K/V keep a kernel's
    operands (a few [64, 64] tiles, double-buffered) well inside 100 KB of shared memory; devices with more
    (Hopper: 227 KB) take 128-wide K tiles in the output kernel, which then reads q once per V block.
    BK_A = 32: the vector gate's A kernel holds a [BC, BC, BK_A] product in registers; on an H100 (B=4, H=16,
    T=4K, K=128, bf16) it took 0.80 ms per fwd+bwd at 32, 1.21 at 64, 0.89 at 16 (scripts/sweep_gla_A_gpu.py).
    onepass_*: the one-pass forward (chunk_fwd.chunk_onepass_kernel, gate kinds none/head/scalar) runs when it
    has at least onepass_min_programs programs (N·H·V/BV_onepass; the scalar gate: onepass_min_programs_scalar)
    and K ≤ onepass_max_K (the state [K, BV] lives in registers); else the states pass + output kernel. 0 forces
    it on, a huge value off (tests do both). From scripts/sweep_onepass_gpu.py on an H100 (132 SMs, bf16,
    results/sweep_onepass_gpu_2026-11-27_run2.txt), one-pass / two-kernel forward time: 128 programs (B=4, H=16,
    V=128, T=2K..16K) 0.57-0.75x without a gate or with the head gate, 0.60-0.90x with the scalar gate; 64
    programs 0.5-0.9x (none/head) but 1.2-1.4x (scalar, B=2) in both runs; 16-32 programs 1.2-2.4x (slower).
    BV 32 or 8 warps helped in a few cases only (4 warps: the state [128, 64] fp32 is 64 registers a thread).
    diag_limit = 30: a vector-gate sub-chunk (16 rows) whose log decay is at most 30 takes the matmul path
    (chunk_fwd.py, chunk_bwd.py): bf16/fp32 operands hold the e^30-scaled values with room to spare (fp16: see
    diag_limit_A in _Problem); stronger decays take the elementwise path.
    """
    cfg = dict(BT=64, BC=16,
               BK_state=min(64, _np2(K)), BV_state=min(64, _np2(V)),
               BK_out=min(128 if big else 64, _np2(K)), BV_out=min(64, _np2(V)),
               BK_dv=min(64, _np2(K)), BV_dv=min(64, _np2(V)),
               BK_dqk=min(64, _np2(K)), BV_dqk=min(64, _np2(V)),
               BK_A=min(32, _np2(K)), BV_dA=min(64, _np2(V)), BK_intra=min(64, _np2(K)),
               BK_rec=_np2(K), BV_rec=min(_np2(V), max(16, 8192 // _np2(K))),
               diag_limit=30.0, num_warps=4, num_stages=2 if big else 1,
               BV_onepass=min(64, _np2(V)), warps_onepass=4 if _np2(K) <= 128 else 8,
               onepass_min_programs=64, onepass_min_programs_scalar=128, onepass_max_K=256)
    return cfg


def _dot_precision(dtype):
    if INTERPRET:
        return "ieee"
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # the default; only fp32 operands are affected


def _cdiv(a, b):
    return -(-a // b)


class _Problem:
    """Shapes, flattened contiguous views, sequence/chunk indexing and launch settings for one call."""

    def __init__(self, q, k, v, g, gate, scale, cu_seqlens):
        B, T, H, K = q.shape
        V = v.shape[-1]
        self.B, self.T, self.H, self.K, self.V = B, T, H, K, V
        self.TT = B * T
        self.device, self.dtype = q.device, q.dtype
        self.gate, self.GATE, self.scale = gate, GATE_KINDS[gate], float(scale)
        self.q = q.contiguous().view(self.TT, H, K)
        self.k = k.contiguous().view(self.TT, H, K)
        self.v = v.contiguous().view(self.TT, H, V)
        self.dummy = _dummy(self.device)
        self.g_head = g.to(torch.float32).contiguous() if gate == "head" else self.dummy
        self.g = None
        if gate in ("scalar", "vector"):
            self.g = g.contiguous().view((self.TT, H) + ((K,) if gate == "vector" else ()))
        self.cfg = _config(K, V, self.device)
        self._plan = []  # kernel launches queued by the pieces below, run by _flush
        self.launch = dict(num_warps=self.cfg["num_warps"], num_stages=self.cfg["num_stages"])
        self.prec = _dot_precision(q.dtype)
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
            self.N, self.NT = B, B * _cdiv(T, BT)

    # --- launching ----------------------------------------------------------------------------------
    def _queue(self, kernel, grid, *args, **kw):
        self._plan.append((kernel, grid, args, kw))

    def _flush(self, *key):
        """Launch the queued kernels in order. The first time this process sees `key` (with the shapes, dtypes,
        device and config overrides below: what selects the kernels' compiled variants; the config itself follows
        from K, V and the device), compile them all at once in parallel first: a first GLA fwd+bwd compiles ~10
        kernels of 1-2 s each, one after another when left to the launches."""
        plan, self._plan = self._plan, []
        key = key + (self.GATE, self.dtype, None if self.g is None else self.g.dtype, self.K, self.V, self.varlen,
                     self.T % 16 == 0, self.T == 1, self.device, tuple(sorted(OVERRIDES.items())))
        if key not in _COMPILED:
            _COMPILED.add(key)
            _compile_parallel(plan)
        for kernel, grid, args, kw in plan:
            kernel[grid](*args, **kw)

    # --- pieces ---------------------------------------------------------------------------------------
    def local_cumsum(self):
        """Chunk-local cumulative log gate b (fp32), for the scalar and vector gates; else a dummy."""
        if self.g is None:
            return self.dummy
        scalar = self.gate == "scalar"
        D = 1 if scalar else self.K
        BD = 16 if scalar else min(64, _np2(D))
        b = _new(self.g.shape, torch.float32, self.device)
        self._queue(local_cumsum_kernel, (_cdiv(D, BD), self.NT, self.H),
            self.g, b, self.cu, self.chunk_indices, self.T, self.H, D, self.cfg["BT"], BD, scalar, self.varlen,
            **self.launch)
        return b

    def states(self, x, y, b, init, want_final, reverse):
        """Boundary states (forward: x=k, y=v, init=h0) or state gradients (reverse: x=q, y=dO, init=dS_T)."""
        c = self.cfg
        buf = _new((self.NT, self.H, self.K, self.V), self.hdtype, self.device)
        final = _new((self.N, self.H, self.K, self.V), torch.float32, self.device) if want_final else None
        grid = (_cdiv(self.K, c["BK_state"]), _cdiv(self.V, c["BV_state"]), self.N * self.H)
        self._queue(chunk_state_kernel, grid,
            x, y, b, self.g_head, init if init is not None else self.dummy, buf,
            final if final is not None else self.dummy, self.cu, self.chunk_offsets, self.scale, self.T,
            self.H, self.K, self.V, c["BT"], c["BK_state"], c["BV_state"], self.GATE, reverse, init is not None,
            want_final, self.varlen, self.prec, **self.launch)
        return buf, final

    def vector_A(self, b):
        c = self.cfg
        A = _new((self.TT, self.H, c["BT"]), torch.float32, self.device)
        self._queue(chunk_vector_A_kernel, (c["BT"] // c["BC"], self.NT, self.H),
            self.q, self.k, b, A, self.cu, self.chunk_indices, self.scale, self.T, self.H, self.K, c["BT"],
            c["BC"], c["BK_A"], _np2(self.K), self.diag_limit_A, self.varlen, self.prec, **self.launch)
        return A

    # --- forward --------------------------------------------------------------------------------------
    def chunk_forward(self, h0, want_final):
        """(o, final state, A): A is the vector gate's intra-chunk matrix (else None), kept for the backward."""
        c = self.cfg
        if self.onepass():
            o, ht = self.onepass_forward(h0, want_final)
            self._flush("onepass", h0 is not None, want_final)
            return o, ht, None
        b = self.local_cumsum()
        h, ht = self.states(self.k, self.v, b, h0, want_final, False)
        A = self.vector_A(b) if self.GATE == GATE_VECTOR else self.dummy
        o = _new((self.TT, self.H, self.V), self.dtype, self.device)
        self._queue(chunk_out_kernel, (_cdiv(self.V, c["BV_out"]), self.NT, self.H),
            self.q, self.k, self.v, b, self.g_head, h, A, o, self.cu, self.chunk_indices, self.scale, self.T,
            self.H, self.K, self.V, c["BT"], c["BK_out"], c["BV_out"], self.GATE, self.varlen, self.prec,
            **self.launch)
        self._flush("forward", h0 is not None, want_final)
        return o, ht, A if self.GATE == GATE_VECTOR else None

    def onepass(self):
        c = self.cfg
        programs = self.N * self.H * _cdiv(self.V, c["BV_onepass"])
        least = c["onepass_min_programs_scalar" if self.GATE == GATE_SCALAR else "onepass_min_programs"]
        return self.GATE != GATE_VECTOR and self.K <= c["onepass_max_K"] and programs >= least

    def onepass_forward(self, h0, want_final):
        c = self.cfg
        o = _new((self.TT, self.H, self.V), self.dtype, self.device)
        ht = _new((self.N, self.H, self.K, self.V), torch.float32, self.device) if want_final else None
        self._queue(chunk_onepass_kernel, (_cdiv(self.V, c["BV_onepass"]), self.N * self.H),
            self.q, self.k, self.v, self.g if self.g is not None else self.dummy, self.g_head,
            h0 if h0 is not None else self.dummy, o, ht if ht is not None else self.dummy, self.cu,
            self.chunk_offsets, self.scale, self.T, self.H, self.K, self.V, c["BT"], _np2(self.K), c["BV_onepass"],
            self.GATE, h0 is not None, want_final, self.varlen, self.prec, num_warps=c["warps_onepass"],
            num_stages=self.launch["num_stages"])
        return o, ht

    def recurrent_forward(self, h0, want_final, in_place=False):
        """in_place: write the final state into h0 (each program reads its state tile once, first, and writes
        the same tile last, so no program sees another's update)."""
        c = self.cfg
        o = _new((self.TT, self.H, self.V), self.dtype, self.device)
        ht = None
        if in_place:
            ht = h0
        elif want_final:
            ht = _new((self.N, self.H, self.K, self.V), torch.float32, self.device)
        recurrent_kernel[(_cdiv(self.V, c["BV_rec"]), self.N * self.H)](
            self.q, self.k, self.v, self.g if self.g is not None else self.dummy, self.g_head,
            h0 if h0 is not None else self.dummy, o, ht if ht is not None else self.dummy, self.cu, self.scale,
            self.T, self.H, self.K, self.V, c["BK_rec"], c["BV_rec"], self.GATE, h0 is not None, want_final,
            self.varlen, num_warps=self.cfg["num_warps"])
        return o, ht

    # --- backward -------------------------------------------------------------------------------------
    def chunk_backward(self, do, dht, h0, want_dh0, A_kept=None):
        """A_kept: the forward's intra-chunk matrix of the vector gate (recomputed when None)."""
        c = self.cfg
        TT, H, K, V, BT = self.TT, self.H, self.K, self.V, c["BT"]
        do = do.to(self.dtype).contiguous().view(TT, H, V)
        b = self.local_cumsum()
        h, _ = self.states(self.k, self.v, b, h0, False, False)
        dh, dh0 = self.states(self.q, do, b, dht, want_dh0, True)
        vector = self.GATE == GATE_VECTOR
        # dq, dk in fp32 where the scalar gate's dg is formed from them afterwards, else in the input dtype
        gdtype = torch.float32 if self.GATE == GATE_SCALAR else self.dtype
        dq = _new((TT, H, K), gdtype, self.device)
        dk = _new((TT, H, K), gdtype, self.device)
        A = dqi = dki = self.dummy
        if vector:
            A = self.vector_A(b) if A_kept is None else A_kept
            dA = _new((TT, H, BT), torch.float32, self.device)
            self._queue(chunk_vector_dA_kernel, (self.NT, H),
                self.v, do, dA, self.cu, self.chunk_indices, self.scale, self.T, H, V, BT, c["BV_dA"],
                self.varlen, self.prec, **self.launch)
            dqi = _new((TT, H, K), torch.float32, self.device)  # the intra-chunk sums, finished by dqk
            dki = _new((TT, H, K), torch.float32, self.device)
            self._queue(chunk_vector_intra_bwd_kernel, (_cdiv(K, c["BK_intra"]) * (BT // c["BC"]), self.NT, H),
                self.q, self.k, b, dA, dqi, dki, self.cu, self.chunk_indices, self.T, H, K, BT, c["BC"],
                c["BK_intra"], _np2(K), self.diag_limit, self.varlen, self.prec, **self.launch)
        dv = _new((TT, H, V), self.dtype, self.device)
        self._queue(chunk_dv_kernel, (_cdiv(V, c["BV_dv"]), self.NT, H),
            self.q, self.k, do, b, self.g_head, dh, A, dv, self.cu, self.chunk_indices, self.scale, self.T,
            H, K, V, BT, c["BK_dv"], c["BV_dv"], self.GATE, self.varlen, self.prec, **self.launch)
        dg = _new(self.g.shape, self.g.dtype, self.device) if vector else None  # written by dqk
        dgc = _new((self.NT, H, K), torch.float32, self.device) if self.GATE == GATE_SCALAR else dg
        self._queue(chunk_dqk_kernel, (_cdiv(K, c["BK_dqk"]), self.NT, H),
            self.q, self.k, self.v, do, b, self.g_head, h, dh, dqi, dki, dq, dk,
            dgc if dgc is not None else self.dummy, self.cu, self.chunk_indices, self.scale, self.T, H, K, V, BT,
            c["BK_dqk"], c["BV_dqk"], self.GATE, self.varlen, self.prec, **self.launch)
        if self.GATE == GATE_SCALAR:
            dg = _new(self.g.shape, self.g.dtype, self.device)
            # the kernel also casts dq, dk to the input dtype (unless that is fp32 already)
            cast = self.dtype != torch.float32
            dq_o = _new((TT, H, K), self.dtype, self.device) if cast else dq
            dk_o = _new((TT, H, K), self.dtype, self.device) if cast else dk
            self._queue(gate_grad_kernel, (self.NT, H),
                self.q, self.k, dq, dk, dgc, dg, dq_o, dk_o, self.cu, self.chunk_indices, self.T, H, K, BT,
                _np2(K), cast, self.varlen, **self.launch)
            dq, dk = dq_o, dk_o
        self._flush("backward", h0 is not None, dht is not None, want_dh0, A_kept is None)
        return dq, dk, dv, dg, dh0


class _GatedLinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, gate, cu_seqlens, mode, output_final_state):
        p = _Problem(q, k, v, g, gate, scale, cu_seqlens)
        A = None
        if mode == "recurrent":
            o, ht = p.recurrent_forward(h0, output_final_state)
        else:
            o, ht, A = p.chunk_forward(h0, output_final_state)
        # The vector gate's A [T, H, 64] (fp32) is kept: recomputing it was the backward's costliest kernel
        # (2.4 ms of 5.3 ms fwd+bwd at B=4, H=16, T=4K, K=128 on an H100, benchmark_ops.py --profile), for
        # 256 bytes per token and head, about as much as q and k in bf16 at K=64.
        ctx.save_for_backward(q, k, v, g, h0, cu_seqlens, A)
        ctx.scale, ctx.gate = scale, gate
        return o.view(v.shape[:3] + (v.shape[-1],)), ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, cu_seqlens, A = ctx.saved_tensors
        p = _Problem(q, k, v, g, ctx.gate, ctx.scale, cu_seqlens)
        if do is None:
            do = torch.zeros_like(v)
        dht = dht.contiguous() if dht is not None else None
        dq, dk, dv, dg, dh0 = p.chunk_backward(do, dht, h0, h0 is not None and ctx.needs_input_grad[4], A)
        # the kernels write every gradient in its input's dtype (the scalar gate's gate-gradient kernel casts dq, dk)
        dq, dk, dv = dq.view(q.shape), dk.view(k.shape), dv.view(v.shape)
        if dg is not None:
            dg = dg.view(g.shape)
        return dq, dk, dv, dg, dh0, None, None, None, None, None


def run_triton(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode, in_place=False):
    """Gated linear attention through the Triton kernels; see ops/api.py. Returns (o in q.dtype, state or None).

    gate: "none" (g None), "head" (g [H] float32 log decays), "scalar" (g [B, T, H]), "vector" (g [B, T, H, K]).
    mode: "chunk" or "recurrent" (same function; the recurrent one suits decoding).
    in_place: see ops.api.final_state_in_place; honoured only where it is safe (else ignored).
    """
    if q.dtype == torch.float64:
        raise TypeError("the Triton backend takes float32/float16/bfloat16 inputs; use backend='torch' for float64")
    if gate not in GATE_KINDS:
        raise ValueError(f"gate must be one of {tuple(GATE_KINDS)}, got {gate!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if B * T == 0:  # nothing to run: the state passes through
        o = v.new_zeros(v.shape).to(q.dtype)
        if not output_final_state:
            return o, None
        if initial_state is not None:
            return o, initial_state.float() + 0.0
        return o, torch.zeros(N, H, K, V, dtype=torch.float32, device=q.device)
    if (in_place and mode == "recurrent" and cu_seqlens is None and output_final_state and initial_state is not None
            and initial_state.dtype == torch.float32 and initial_state.is_contiguous() and not torch.is_grad_enabled()):
        # no autograd node (grad is off): Function.apply would hand back a view, not the buffer itself
        o, ht = _Problem(q, k, v, g, gate, scale, None).recurrent_forward(initial_state, True, in_place=True)
        return o.view(v.shape[:3] + (v.shape[-1],)), ht
    if initial_state is not None:
        initial_state = initial_state.to(torch.float32).contiguous()
    return _GatedLinearAttention.apply(q, k, v, g, initial_state, scale, gate, cu_seqlens, mode,
                                       bool(output_final_state))


# The fused block kernels (norm, rotary, SwiGLU; ops/fused.py) use _new from above, hence imported last.
from . import fused  # noqa: E402,F401
from .normalizer import normalizer  # noqa: E402,F401
# The delta rule (delta_fwd.py, delta_bwd.py) builds on _Problem above, hence imported last too.
from .delta import run_delta_triton  # noqa: E402,F401
