"""Triton backend of the ops: one kernel family for causal (gated) linear attention, the gate kind a tl.constexpr
(common.GATE_NONE / GATE_HEAD / GATE_SCALAR / GATE_VECTOR), plus the fused block kernels.

  attention.py   the forward / backward as sequences of launches, the autograd function, `run_triton`
  call.py        what one call's launches share: shapes, flattened views, varlen chunk index, config, plan
  config.py      block sizes, warps and path thresholds (no autotune)
  launch.py      the launch plan and its parallel first-call compile; dot precision, device shared memory
  alloc.py       buffers (NaN-poisoned in tests), the placeholder pointer, size helpers
  common.py      chunk/sequence bounds, tile loads, chunk-local cumsum of g, the gate gradient
  states.py      the sequential pass over chunks: boundary states (forward) and their gradients (backward)
  chunk_fwd.py   per-chunk output (and the vector gate's intra-chunk matrix A); the one-pass forward
  chunk_bwd.py   per-chunk dq, dk, dv (and the vector gate's intra-chunk parts)
  recurrent.py   token-by-token form (decoding, mode="recurrent")
  delta.py       the delta rule (DeltaNet, Gated DeltaNet, per-key-dimension gate): forward / backward as launches,
                 its autograd function, `run_delta_triton`; kernels in delta_fwd.py, delta_bwd.py
  fused.py       RMSNorm (+ swish gate), rotary, SwiGLU;  normalizer.py: linear attention's normaliser
Each kernel file ends with the host-side launch functions of its kernels (keyword arguments).
The math: docs/math.md.
"""
from . import alloc, fused  # noqa: F401
from .attention import gla_backward, run_triton  # noqa: F401
from .delta import delta_backward, run_delta_triton  # noqa: F401
from .launch import INTERPRET  # noqa: F401
from .normalizer import normalizer  # noqa: F401
