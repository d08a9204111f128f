"""The attention ops as torch.library custom ops, for torch.compile (docs/compile.md).

Under torch.compile the public ops (api.py, delta.py) call `linattn::gla` / `linattn::delta` instead of their
eager code: dynamo then sees one opaque node per op (its fake impl gives the output shapes, symbolic in B and
T), so a dynamic sequence length compiles once, and nothing inside (the torch backend's loops over tokens and
chunks, cu_seqlens read back to the host, Triton's launch plans) is traced. Eager calls keep their own path: no
custom-op overhead, and the torch backend keeps its plain autograd graph (double backward included).

Each op dispatches inside to the backend `resolve_backend` picks, as the eager op would:
- forward: the same function the eager op runs, so the outputs are identical;
- backward (`linattn::gla_bwd` / `linattn::delta_bwd`, opaque too): on the Triton backend the kernels'
  backward (the vector gate's intra-chunk matrix A, kept by the eager forward, is recomputed); on the torch
  backend autograd through the reference forward (`_vjp`: the op runs below autograd, so its dispatch keys are
  let back in for it), which computes the gradients eager autograd computes.

Optional inputs are `Tensor?`. A schema cannot return None, so a final state that was not asked for comes
back as an empty tensor and the public op turns it into None; gradients of absent inputs likewise.
`final_state_in_place` (the CUDA-graph decode step) and `kernel_config` do not go through the ops: the first
is ignored under compile, the second refused.
"""
import functools
from typing import Optional, Tuple

import torch

from .delta_reference import run_delta_torch
from .dispatch import resolve_backend, triton_ops
from .reference import compute_dtype, run_torch

# Below this many tokens, mode="auto" runs the recurrent form (decoding, short prompts).
RECURRENT_MAX_T = 32


def retention_log_decays(num_heads, device=None, dtype=torch.float32):
    """RetNet's fixed per-head log decays: g_h = log(1 - 2^(-5-h)), h = 0..H-1 (computed in fp64, then cast)."""
    h = torch.arange(num_heads, dtype=torch.float64, device=device)
    return torch.log1p(-torch.exp2(-5.0 - h)).to(dtype)


@functools.lru_cache(maxsize=64)
def _cached_log_decays(num_heads, device, dtype):
    return retention_log_decays(num_heads, device, dtype)


def log_decays(num_heads, device, dtype):
    """retention_log_decays, made once per (H, device, dtype): computing them is 6 tiny kernels per call, whose
    host cost (~20-40 us each on the H100 host measured) showed in retention's fwd+bwd time at T <= 4K. Not
    cached while a CUDA graph is being captured (the tensor would live in the graph's memory pool). Only called
    eagerly (the custom ops run it inside; dynamo would not trace the lru_cache)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return retention_log_decays(num_heads, device, dtype)
    return _cached_log_decays(num_heads, device, dtype)


def resolve_mode(mode, T):
    return ("recurrent" if T <= RECURRENT_MAX_T else "chunk") if mode == "auto" else mode


def compiling():
    """Whether dynamo is tracing this call (torch.compile): value checks and host-side caches are skipped."""
    return torch.compiler.is_compiling()


def torch_gla(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode):
    """The torch backend of the gated linear attention ops (g: None, or as `gate` says; "head": [H])."""
    if gate == "head":
        g = g.view(1, 1, -1).expand(q.shape[:3])
    if initial_state is not None:  # a float32 state for float64 inputs: the recurrence runs in float64
        initial_state = initial_state.to(compute_dtype(q))
    return run_torch(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, resolve_mode(mode, q.shape[1]))


def _state_out(q, s, initial_state):
    """A schema output: never None (an empty tensor instead), never an alias of an input, contiguous (as the
    fake impls say: the compiled graph relies on their strides)."""
    if s is None:
        return q.new_empty((0,), dtype=compute_dtype(q))
    if initial_state is not None and s.data_ptr() == initial_state.data_ptr():
        return s.clone()
    return s.contiguous()


def _dense(*xs):
    """Outputs as the fake impls describe them: contiguous (the torch backend's chunked o is a slice)."""
    return tuple(x.contiguous() for x in xs)


def _state_fake(q, v, output_final_state, cu_seqlens):
    if not output_final_state:
        return q.new_empty((0,), dtype=compute_dtype(q))
    N = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return q.new_empty((N, q.shape[2], q.shape[3], v.shape[3]), dtype=compute_dtype(q))


# --- gated linear attention: linear_attention (gate "none"), retention ("head"), simple_gla, GLA ------------------
@torch.library.custom_op("linattn::gla", mutates_args=())
def gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
        initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], gate: str, scale: float,
        mode: str, output_final_state: bool, backend: Optional[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(o, final state or an empty tensor). gate "head": g is None here, the decays are made inside."""
    if gate == "head":
        g = log_decays(q.shape[2], q.device, compute_dtype(q))
    with torch.no_grad():
        if resolve_backend(backend, q.device) == "triton":
            h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
            o, s = triton_ops().run_triton(q, k, v, g, gate, scale, h0, output_final_state, cu_seqlens,
                                           resolve_mode(mode, q.shape[1]))
        else:
            o, s = torch_gla(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode)
    return o.contiguous(), _state_out(q, s if output_final_state else None, initial_state)


@gla.register_fake
def _gla_fake(q, k, v, g, initial_state, cu_seqlens, gate, scale, mode, output_final_state, backend):
    return q.new_empty(v.shape), _state_fake(q, v, output_final_state, cu_seqlens)


@torch.library.custom_op("linattn::gla_bwd", mutates_args=())
def gla_bwd(do: torch.Tensor, dht: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            g: Optional[torch.Tensor], initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],
            gate: str, scale: float, mode: str, backend: Optional[str]
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dg, dh0); dg / dh0 empty where g / initial_state are None (or g is the head gate's)."""
    if resolve_backend(backend, q.device) == "triton":
        gt = log_decays(q.shape[2], q.device, torch.float32) if gate == "head" else g
        h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
        dq, dk, dv, dg, dh0 = triton_ops().gla_backward(q, k, v, gt, h0, cu_seqlens, gate, scale, do, dht,
                                                        initial_state is not None)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
    else:
        gconst = log_decays(q.shape[2], q.device, compute_dtype(q)) if gate == "head" else None

        def run(q, k, v, gi, h0):
            return torch_gla(q, k, v, gconst if g is None else gi, gate, scale, h0, dht is not None, cu_seqlens, mode)
        dq, dk, dv, dg, dh0 = _reference_grads(run, (q, k, v), g, initial_state, do, dht)
    return _dense(dq, dk, dv, _grad_out(q, dg, g), _grad_out(q, dh0, initial_state))


@gla_bwd.register_fake
def _gla_bwd_fake(do, dht, q, k, v, g, initial_state, cu_seqlens, gate, scale, mode, backend):
    return _empty(q), _empty(k), _empty(v), _grad_fake(q, g), _grad_fake(q, initial_state)


_AUTOGRAD_KEYS = (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.AutogradOther,
                  torch._C.DispatchKey.AutogradNestedTensor, torch._C.DispatchKey.ADInplaceOrView)


def _reference_grads(run, inputs, g, initial_state, do, dht):
    """The torch backend's backward: the gradients of `run(*inputs, g, initial_state) -> (o, final state)` for the
    cotangents (do, dht; dht None: the final state was not asked for), as [*d(inputs), dg, dh0] with None for
    an absent g / initial_state."""
    optional = [x for x in (g, initial_state) if x is not None]
    n = len(inputs)

    def fwd(*xs):
        rest = iter(xs[n:])
        o, s = run(*xs[:n], next(rest) if g is not None else None, next(rest) if initial_state is not None else None)
        return (o, s) if dht is not None else (o,)
    grads = iter(_vjp(fwd, [*inputs, *optional], do, dht))
    head = [next(grads) for _ in range(n)]
    return head + [next(grads) if g is not None else None, next(grads) if initial_state is not None else None]


def _vjp(fwd, primals, do, dht):
    """The gradients of fwd at primals for the cotangents (do, dht), by autograd on the reference forward.
    A custom op's body runs with the autograd dispatch keys excluded, so they are let back in here (the rest of
    the dispatch state is kept). torch.func.vjp, which did this before, fails on torch 2.11 when the compiled
    graph's first call runs under aot's aliasing-check mode ("Cannot access storage of TensorWrapper")."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        xs = [x.detach().requires_grad_() for x in primals]
        outs = fwd(*xs)
        cotangents = (do, dht) if dht is not None else (do,)
        return torch.autograd.grad(outs, xs, cotangents, allow_unused=True)


def _grad_out(q, grad, x):
    if x is None:
        return q.new_empty((0,))
    return torch.zeros_like(x) if grad is None else grad


def _empty(x):
    return x.new_empty(x.shape)  # contiguous, as _dense makes the real ones


def _grad_fake(q, x):
    return q.new_empty((0,)) if x is None else _empty(x)


def _gla_setup(ctx, inputs, output):
    q, k, v, g, initial_state, cu_seqlens, gate, scale, mode, output_final_state, backend = inputs
    ctx.save_for_backward(q, k, v, g, initial_state, cu_seqlens)
    ctx.args = (gate, scale, mode, backend)
    ctx.output_final_state = output_final_state


def _gla_backward(ctx, do, dht):
    q, k, v, g, initial_state, cu_seqlens = ctx.saved_tensors
    dq, dk, dv, dg, dh0 = gla_bwd(do, dht if ctx.output_final_state else None, q, k, v, g, initial_state,
                                  cu_seqlens, *ctx.args)
    return (dq, dk, dv, None if g is None else dg, None if initial_state is None else dh0,
            None, None, None, None, None, None)


gla.register_autograd(_gla_backward, setup_context=_gla_setup)


# --- the delta rule: delta_rule (g None), gated_delta_rule ----------------------------------------------------------
@torch.library.custom_op("linattn::delta", mutates_args=())
def delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], beta: torch.Tensor,
          initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], scale: float, mode: str,
          output_final_state: bool, backend: Optional[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(o, final state or an empty tensor); q, k already L2-normalised where asked for."""
    with torch.no_grad():
        if resolve_backend(backend, q.device) == "triton":
            h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
            o, s = triton_ops().run_delta_triton(q, k, v, g, beta, scale, h0, output_final_state, cu_seqlens,
                                                 resolve_mode(mode, q.shape[1]))
        else:
            o, s = run_delta_torch(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens,
                                   resolve_mode(mode, q.shape[1]))
    return o.contiguous(), _state_out(q, s if output_final_state else None, initial_state)


@delta.register_fake
def _delta_fake(q, k, v, g, beta, initial_state, cu_seqlens, scale, mode, output_final_state, backend):
    return q.new_empty(v.shape), _state_fake(q, v, output_final_state, cu_seqlens)


@torch.library.custom_op("linattn::delta_bwd", mutates_args=())
def delta_bwd(do: torch.Tensor, dht: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              g: Optional[torch.Tensor], beta: torch.Tensor, initial_state: Optional[torch.Tensor],
              cu_seqlens: Optional[torch.Tensor], scale: float, mode: str, backend: Optional[str]
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dg, dbeta, dh0); dg / dh0 empty where g / initial_state are None."""
    if resolve_backend(backend, q.device) == "triton":
        h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
        dq, dk, dv, dg, dbeta, dh0 = triton_ops().delta_backward(q, k, v, g, beta, h0, cu_seqlens, scale, do, dht,
                                                                 initial_state is not None)
        if dh0 is not None:
            dh0 = dh0.to(initial_state.dtype)
    else:
        def run(q, k, v, beta, gi, h0):
            return run_delta_torch(q, k, v, beta, gi, scale, h0, dht is not None, cu_seqlens,
                                   resolve_mode(mode, q.shape[1]))
        dq, dk, dv, dbeta, dg, dh0 = _reference_grads(run, (q, k, v, beta), g, initial_state, do, dht)
    return _dense(dq, dk, dv, _grad_out(q, dg, g), dbeta, _grad_out(q, dh0, initial_state))


@delta_bwd.register_fake
def _delta_bwd_fake(do, dht, q, k, v, g, beta, initial_state, cu_seqlens, scale, mode, backend):
    return _empty(q), _empty(k), _empty(v), _grad_fake(q, g), _empty(beta), _grad_fake(q, initial_state)


def _delta_setup(ctx, inputs, output):
    q, k, v, g, beta, initial_state, cu_seqlens, scale, mode, output_final_state, backend = inputs
    ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens)
    ctx.args = (scale, mode, backend)
    ctx.output_final_state = output_final_state


def _delta_backward(ctx, do, dht):
    q, k, v, g, beta, initial_state, cu_seqlens = ctx.saved_tensors
    dq, dk, dv, dg, dbeta, dh0 = delta_bwd(do, dht if ctx.output_final_state else None, q, k, v, g, beta,
                                           initial_state, cu_seqlens, *ctx.args)
    return (dq, dk, dv, None if g is None else dg, dbeta, None if initial_state is None else dh0,
            None, None, None, None, None)


delta.register_autograd(_delta_backward, setup_context=_delta_setup)


def call_gla(q, k, v, g, gate, scale, initial_state, output_final_state, cu_seqlens, mode, backend):
    """The public ops' entry under torch.compile: (o, final state or None)."""
    o, s = gla(q, k, v, None if gate == "head" else g, initial_state, cu_seqlens, gate, float(scale), mode,
               bool(output_final_state), backend)
    return o, (s if output_final_state else None)


def call_delta(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, mode, backend):
    o, s = delta(q, k, v, g, beta, initial_state, cu_seqlens, float(scale), mode, bool(output_final_state), backend)
    return o, (s if output_final_state else None)
