"""Triton backend of the delta rule (ops.delta_rule, ops.gated_delta_rule): `run_delta_triton` and its autograd
function. Kernels in delta_fwd.py and delta_bwd.py (the math: docs/math.md, 'Delta rule'); gate kinds none, scalar and
vector (per key dimension, KDA-style: its pair products by gated linear attention's rebased sub-chunk kernels).

Forward (chunk): b = chunk-local cumsum of g (common.local_cumsum_kernel) → W, U, N per chunk (delta_wy) →
the state pass (delta_state: S_0 per chunk and V_new, in the input dtype) → the output, parallel over chunks
(chunk_fwd.chunk_out, gated linear attention's, with V_new for V). mode="recurrent": delta_recurrent.
Backward (both modes): b, W, U and the state pass RECOMPUTED (S_0 per chunk and V_new in fp32; N is kept from a
chunked forward), as for gated linear attention (attention.py says why: memory) → s Pᵀ dO per chunk
(delta_dvn_local) → reverse state pass (dS_C per chunk, dV_new, dh0) → dv, dP̃, dÃ (delta_intra_bwd) → dq, dk
and the K-block shares of dβ, dg (delta_qk_bwd) → dβ, dg
(delta_finish_bwd). The state passes hold the whole key dim (K ≤ MAX_K) of a [K, BV] fp32 state tile.
"""
import functools

import torch

from ..validate import refuse_double_backward
from .alloc import cdiv, new, np2
from .call import Call, check_float_inputs, empty_result, writes_in_place
from .chunk_fwd import chunk_out
from .common import GATE_SCALAR, GATE_VECTOR, local_cumsum
from .delta_bwd import (launch_dvn_local, launch_finish_bwd, launch_intra_bwd, launch_pair_bwd, launch_qk_bwd,
                        launch_state_bwd)
from .delta_fwd import launch_pair, launch_recurrent, launch_state, launch_wy
from .launch import shared_mem

MAX_K = 256  # the state passes keep all of K on chip
TILE = 64  # K / V tile width of the loops over K or V
STATE_TILE_WIDE_K = 32  # V tile of the state passes when K > 128 (the [K, BV] fp32 state lives in registers)
WIDE_K = 128


@functools.lru_cache(maxsize=None)
def _default_delta_config(K, V, smem, gate, kbytes):
    """Block sizes (not tuned yet; no autotune, so the first call is fast). The state passes run one program per
    (sequence, head, V block) through the chunks in order, with fp32 operand tiles up to [BT, K] = [64, 256],
    and take 8 warps for K > 128. The forward pass prefetches the next chunks' W, U, K tiles (software-pipelined,
    stages_delta_state) as far as `smem` (shared memory per block) holds them; on an H200 (B=4 T=4K H=16 D=128
    bf16) it took 0.35 ms at 1 stage, 0.22 at 2, 0.20 at 3. The reverse pass stays at 1 (2 made it slower, 0.89
    → 1.13 ms). BV_delta_bwd: V tile of the backward's per-chunk kernels (there: 32 took 0.81 + 0.33 ms, 64 took
    1.18 + 0.36 for delta_qk_bwd + delta_intra_bwd; the forward's W, U kernel keeps 64). wy_blocked, dot16_delta_wy,
    dot16_delta_state, warps_delta_wy: N by 16-row blocks, 16-bit W/U and state-pass operands, 1 warp for the W/U
    kernel (session 10's H200 sweeps: forward kernels 0.705 → 0.495 ms gated; delta_fwd.py says more).
    dot16_delta_bwd: the backward's recomputation, reverse pass and dq/dk products in 16 bits, with BV_delta_bwd 64
    (H200, T=4K: fwd+bwd kernels 2.87 → 2.29 ms plain, 3.31 → 2.60 gated; worst gradient error at T=2K 3.8e-3 →
    5.8e-3 plain, 3.8e-3 → 4.7e-3 per-key gate, but the scalar gate's dg 3.0e-3 → 9.1e-3, near the 1e-2 bound:
    so on by default except with the scalar gate). Keys may be overridden through the ops' kernel_config=, as
    gated linear attention's."""
    KP = np2(K)
    vector = gate == "vector"
    bwd16 = gate != "scalar"
    BV = min(TILE if KP <= WIDE_K else STATE_TILE_WIDE_K, np2(V))
    # one chunk's W, U (fp32 in the backward's recomputation), K (kbytes an element) and the per-key gate's b
    # (fp32) tiles, BT = 64 (3 stages of the per-key gate's took 280 KB on the H200, over its 227 KB); where the
    # estimate is short, launch.Plan falls back to 1 stage
    stage = 64 * (KP * 4 + BV * 4 + KP * kbytes + (KP * 4 if vector else 0))
    stages = next((n for n in (3, 2) if n * stage + 32 * 1024 <= smem), 1)
    return dict(BK_delta=min(TILE, KP), BV_delta=min(TILE, np2(V)), BV_delta_bwd=min(64 if bwd16 else 32, np2(V)), KP_delta=KP,
                BV_delta_state=BV,
                BV_delta_rec=min(np2(V), max(16, 8192 // KP)),
                warps_delta_state=4 if KP <= WIDE_K else 8, stages_delta_state=stages, stages_delta_state_bwd=1,
                wy_blocked=True, dot16_delta_wy=True, dot16_delta_state=True, warps_delta_wy=1,
                stages_delta_wy=2 if smem >= 160 * 1024 else 1, dot16_delta_bwd=bwd16)


class _DeltaProblem:
    """One call's shapes, views and launch settings: gated linear attention's Call (indexing, config, the
    launch queue) plus beta and the delta rule's block sizes."""

    def __init__(self, q, k, v, g, beta, scale, cu_seqlens, overrides=None):
        gate = "none" if g is None else ("vector" if g.ndim == 4 else "scalar")
        K, V = q.shape[-1], v.shape[-1]
        overrides = overrides or {}
        # the delta keys; the shared ones go to the Call
        mine = _default_delta_config(K, V, shared_mem(q.device), gate, q.element_size())
        self.p = p = Call(q, k, v, g, gate, scale, cu_seqlens, {n: x for n, x in overrides.items() if n not in mine})
        self.vector = p.GATE == GATE_VECTOR
        self.beta = beta.contiguous().view(p.TT, p.H)
        cfg = dict(mine)
        cfg.update({n: x for n, x in overrides.items() if n in cfg})
        self.cfg = cfg
        self.common = dict(cu_seqlens=p.cu, T=p.T, H=p.H, BT=p.cfg["BT"], GATE=p.GATE, VARLEN=p.varlen)
        self.common_nogate = {n: val for n, val in self.common.items() if n != "GATE"}
        self.state_launch = dict(num_warps=cfg["warps_delta_state"], num_stages=cfg["stages_delta_state"])
        self.state_bwd_launch = dict(num_warps=cfg["warps_delta_state"], num_stages=cfg["stages_delta_state_bwd"])
        self.n_buf = None  # N of a chunked forward, kept by the autograd function: the backward skips the inverse

    def _g(self, x):
        return x if x is not None else self.p.dummy

    def pair(self, x, b, limit, scale=1.0):
        """Vector gate: the pair products scale ⟨x_i, k_j⟩ of each chunk [T, H, BT] (fp32); else a dummy."""
        p = self.p
        if not self.vector:
            return p.dummy
        out = new((p.TT, p.H, p.cfg["BT"]), torch.float32, p.device)
        launch_pair(p.plan.queue, x=x, k=p.k, gb=b, out=out, chunk_indices=p.chunk_indices, scale=scale, NT=p.NT,
                    K=p.K, BC=p.cfg["BC"], BK=p.cfg["BK_A"], KP=np2(p.K), LIMIT=limit, DOT_PREC=p.prec,
                    **self.common_nogate, **p.launch)
        return out

    def wy(self, b, pk, dtype, n_buf=None):
        """(N [T, H, BT] fp32, W, U in `dtype`): the input's for the forward's state pass (as its h and V_new; one
        rounding more of its prediction U − W S), fp32 for the backward. n_buf: N as the forward stored it."""
        p, c = self.p, self.cfg
        has_n = n_buf is not None
        if not has_n:
            n_buf = new((p.TT, p.H, p.cfg["BT"]), torch.float32, p.device)
        w = new((p.TT, p.H, p.K), dtype, p.device)
        u = new((p.TT, p.H, p.V), dtype, p.device)
        launch_wy(p.plan.queue, k=p.k, v=p.v, beta=self.beta, gb=b, pk=pk, n_out=n_buf, w=w, u=u,
                  chunk_indices=p.chunk_indices, NT=p.NT, K=p.K, V=p.V, BK=c["BK_delta"], BV=c["BV_delta"],
                  DOT_PREC=p.prec, HAS_N=has_n, BLOCKED=bool(c["wy_blocked"]),
                  DOT16=bool(c["dot16_delta_wy"]) and dtype != torch.float32, **self.common,
                  num_warps=c["warps_delta_wy"], num_stages=c["stages_delta_wy"])
        return n_buf, w, u

    def state(self, b, w, u, h0, want_final, dtype):
        """The state pass: (final state or None, h the states entering each chunk, vn = V_new), h and vn in
        `dtype` (the input's for the forward's output kernel, fp32 for the backward)."""
        p, c = self.p, self.cfg
        ht = new((p.N, p.H, p.K, p.V), torch.float32, p.device) if want_final else None
        h = new((p.NT, p.H, p.K, p.V), dtype, p.device)
        vn = new((p.TT, p.H, p.V), dtype, p.device)
        launch_state(p.plan.queue, k=p.k, w=w, u=u, gb=b, h0=self._g(h0), ht=self._g(ht), h=h, vn=vn,
                     chunk_offsets=p.chunk_offsets, N=p.N, K=p.K, V=p.V, KP=c["KP_delta"], BV=c["BV_delta_state"],
                     HAS_H0=h0 is not None, STORE_FINAL=want_final, DOT_PREC=p.prec,
                     DOT16=bool(c["dot16_delta_state"]) and dtype != torch.float32, **self.common, **self.state_launch)
        return ht, h, vn

    def forward(self, h0, want_final, mode, in_place=False):
        """in_place (recurrent mode): the final state is written into h0 (final_state_in_place)."""
        p, c = self.p, self.cfg
        if mode == "recurrent":
            o = new((p.TT, p.H, p.V), p.dtype, p.device)
            ht = h0 if in_place else (new((p.N, p.H, p.K, p.V), torch.float32, p.device) if want_final else None)
            launch_recurrent(p.plan.queue, q=p.q, k=p.k, v=p.v, beta=self.beta, g=self._g(p.g), h0=self._g(h0), o=o,
                             ht=self._g(ht), cu_seqlens=p.cu, scale=p.scale, T=p.T, N=p.N, H=p.H, K=p.K, V=p.V,
                             KP=c["KP_delta"], BV=c["BV_delta_rec"], GATE=p.GATE, HAS_H0=h0 is not None,
                             STORE_FINAL=want_final, VARLEN=p.varlen, num_warps=p.launch["num_warps"])
            p.plan.run()
            return o, ht
        b = local_cumsum(p)
        n_buf, w, u = self.wy(b, self.pair(p.k, b, p.diag_limit_A), p.dtype)
        ht, h, vn = self.state(b, w, u, h0, want_final, p.dtype)
        o = chunk_out(p, b=b, h=h, A=self.pair(p.q, b, p.diag_limit_A, p.scale) if self.vector else None, v=vn)
        p.plan.run()
        self.n_buf = n_buf
        return o, ht

    def backward(self, do, dht, h0, want_dh0, beta_dtype, n_buf=None):
        p, c = self.p, self.cfg
        TT, H, K, V, NT, BT = p.TT, p.H, p.K, p.V, p.NT, p.cfg["BT"]
        dev = p.device
        do = do.to(p.dtype).contiguous().view(TT, H, V)
        b = local_cumsum(p)
        pk, pq = self.pair(p.k, b, p.diag_limit_A), self.pair(p.q, b, p.diag_limit_A)
        # bwd16: W, U, S_0 per chunk and V_new recomputed as the forward made them (input dtype, its operands),
        # dS_C per chunk in the input dtype, the reverse pass on 16-bit operands; else all of these in fp32
        bwd16 = bool(c["dot16_delta_bwd"]) and p.dtype != torch.float32
        rec = p.dtype if bwd16 else torch.float32
        n_buf, w, u = self.wy(b, pk, rec, n_buf)
        _, h, vn = self.state(b, w, u, h0, False, rec)
        dh = new((NT, H, K, V), rec, dev)
        dvn = new((TT, H, V), torch.float32, dev)
        dh0 = new((p.N, H, K, V), torch.float32, dev) if want_dh0 else None
        launch_dvn_local(p.plan.queue, q=p.q, k=p.k, do=do, gb=b, pq=pq, dvn=dvn, chunk_indices=p.chunk_indices,
                         scale=p.scale, NT=NT, K=K, V=V, KP=c["KP_delta"], BV=c["BV_delta_bwd"], DOT_PREC=p.prec,
                         **self.common, **p.launch)
        launch_state_bwd(p.plan.queue, q=p.q, k=p.k, w=w, do=do, gb=b, dht=self._g(dht), dh=dh, dvn=dvn,
                         dh0=self._g(dh0), chunk_offsets=p.chunk_offsets, scale=p.scale, N=p.N, K=K, V=V,
                         KP=c["KP_delta"], BV=c["BV_delta_state"], HAS_DHT=dht is not None, STORE_DH0=want_dh0,
                         DOT_PREC=p.prec, DOT16=bwd16, **self.common, **self.state_bwd_launch)
        dv = new((TT, H, V), p.dtype, dev)
        dpg = new((TT, H, BT), torch.float32, dev)
        dag = new((TT, H, BT), torch.float32, dev)
        dbeta_v = new((TT, H), torch.float32, dev)
        dgv = new((TT, H), torch.float32, dev)
        launch_intra_bwd(p.plan.queue, v=p.v, do=do, beta=self.beta, gb=b, pk=pk, n_buf=n_buf, vn=vn, dvn=dvn, dv=dv,
                         dpg=dpg, dag=dag, dbeta_v=dbeta_v, dgv=dgv, chunk_indices=p.chunk_indices, scale=p.scale,
                         NT=NT, V=V, BV=c["BV_delta_bwd"], DOT_PREC=p.prec, **self.common, **p.launch)
        ia_q = ia_k = ib_q = ib_k = dgk = p.dummy
        if self.vector:  # dP ⋆ K, dP ⋆ᵀ Q and D ⋆ K, D ⋆ᵀ K with the per-dimension pair factor
            ia_q, ia_k, ib_q, ib_k = (new((TT, H, K), torch.float32, dev) for _ in range(4))
            for x, dA, out_x, out_k in ((p.q, dpg, ia_q, ia_k), (p.k, dag, ib_q, ib_k)):
                launch_pair_bwd(p.plan.queue, x=x, k=p.k, gb=b, dA=dA, out_x=out_x, out_k=out_k,
                                chunk_indices=p.chunk_indices, NT=NT, K=K, BC=p.cfg["BC"], BK=p.cfg["BK_intra"],
                                KP=np2(K), LIMIT=p.diag_limit, DOT_PREC=p.prec,
                                **self.common_nogate, **p.launch)
            dgk = new(p.g.shape, p.g.dtype, dev)
        BK = c["BK_delta"]
        NK = cdiv(K, BK)
        dq = new((TT, H, K), p.dtype, dev)
        dk = new((TT, H, K), p.dtype, dev)
        part_beta = new((NK, TT, H), torch.float32, dev)
        scalar = p.GATE == GATE_SCALAR
        part_q = new((NK, TT, H), torch.float32, dev) if scalar else p.dummy
        term = new((NK, NT, H), torch.float32, dev) if scalar else p.dummy
        launch_qk_bwd(p.plan.queue, q=p.q, k=p.k, vn=vn, dvn=dvn, do=do, beta=self.beta, gb=b, h=h, dh=dh, n_buf=n_buf,
                      dpg=dpg, dag=dag, ia_q=ia_q, ia_k=ia_k, ib_q=ib_q, ib_k=ib_k, dq=dq, dk=dk, dgk=dgk,
                      part_beta=part_beta, part_q=part_q, term=term,
                      chunk_indices=p.chunk_indices, scale=p.scale, TT=TT, NT=NT, K=K, V=V, BK=BK,
                      BV=c["BV_delta_bwd"], DOT_PREC=p.prec, DOT16=bwd16, **self.common, **p.launch)
        dbeta = new((TT, H), beta_dtype, dev)
        dg = new(p.g.shape, p.g.dtype, dev) if scalar else (dgk if self.vector else None)
        launch_finish_bwd(p.plan.queue, dbeta_v=dbeta_v, dgv=dgv, part_beta=part_beta, part_q=part_q, term=term,
                          dbeta=dbeta, dg=dg if scalar else p.dummy, chunk_indices=p.chunk_indices, TT=TT, NT=NT, NK=NK,
                          num_warps=p.launch["num_warps"], **self.common)
        p.plan.run()
        return dq, dk, dv, dbeta, dg, dh0


class _DeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, h0, scale, cu_seqlens, mode, output_final_state, overrides):
        prob = _DeltaProblem(q, k, v, g, beta, scale, cu_seqlens, overrides)
        o, ht = prob.forward(h0, output_final_state, mode)
        # N (fp32, [T, H, BT]: q's size for 16-bit q at K = 128) is kept: its inverse is most of the W, U
        # recomputation; the rest (W, U, the state pass) is recomputed, as gated linear attention's states.
        ctx.save_for_backward(q, k, v, g, beta, h0, cu_seqlens, prob.n_buf)
        ctx.scale, ctx.overrides = scale, overrides
        return o.view(v.shape), ht

    @staticmethod
    def backward(ctx, do, dht):
        refuse_double_backward("the delta rule ops on the Triton backend", "use backend='torch' for them")
        q, k, v, g, beta, h0, cu_seqlens, n_buf = ctx.saved_tensors
        grads = delta_backward(q, k, v, g, beta, h0, cu_seqlens, ctx.scale, do, dht,
                               h0 is not None and ctx.needs_input_grad[5], ctx.overrides, n_buf)
        return grads + (None,) * 5


def delta_backward(q, k, v, g, beta, h0, cu_seqlens, scale, do, dht, want_dh0, overrides=None, n_buf=None):
    """(dq, dk, dv, dg or None, dbeta, dh0 or None): the autograd function's backward, and the torch.compile
    custom op's (ops/library.py). n_buf: the forward's N, if it kept it (else recomputed)."""
    prob = _DeltaProblem(q, k, v, g, beta, scale, cu_seqlens, overrides)
    if do is None:
        do = torch.zeros_like(v)
    dht = dht.contiguous() if dht is not None else None
    dq, dk, dv, dbeta, dg, dh0 = prob.backward(do, dht, h0, want_dh0, beta.dtype, n_buf)
    return (dq.view(q.shape), dk.view(k.shape), dv.view(v.shape), None if dg is None else dg.view(g.shape),
            dbeta.view(beta.shape), dh0)


def run_delta_triton(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, mode, in_place=False,
                     overrides=None):
    """The delta rule through the Triton kernels; see ops/delta.py. g: None, [B, T, H] or [B, T, H, K] log decays.
    Returns (o in q.dtype, final state [N, H, K, V] float32 or None). in_place: write the final state into
    initial_state (honoured where safe: no grad, recurrent mode, no cu_seqlens, an fp32 contiguous initial state;
    else ignored). overrides: kernel_config keys, the delta ones (_default_delta_config) and the shared ones."""
    check_float_inputs(q)
    K = q.shape[-1]
    if K > MAX_K:
        raise ValueError(f"the Triton delta rule supports head dims K <= {MAX_K}, got K={K}; use backend='torch'")
    empty = empty_result(q, v, initial_state, output_final_state, cu_seqlens)
    if empty is not None:
        return empty
    if writes_in_place(in_place, mode, cu_seqlens, output_final_state, initial_state):
        o, ht = _DeltaProblem(q, k, v, g, beta, scale, None, overrides).forward(initial_state, True, mode,
                                                                              in_place=True)
        return o.view(v.shape), ht
    if initial_state is not None:
        initial_state = initial_state.to(torch.float32).contiguous()
    return _DeltaRule.apply(q, k, v, g, beta, initial_state, scale, cu_seqlens, mode, bool(output_final_state),
                            overrides)
