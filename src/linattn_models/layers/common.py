"""What every token mixer shares: padding -> packed varlen calls of the ops, and state I/O with the cache.

A mixer sees hidden states [B, T, D] and, when the batch is padded, a `Padding` describing where the real
tokens are. The op then runs on the real tokens only, packed as one [1, N_real] sequence with `cu_seqlens`
(one segment per row that has real tokens); pads never reach a state and never decay it, and their outputs
are zeros. The cache is duck-typed: `cache.get_state(layer_idx, name)` / `cache.set_state(layer_idx, name, x)`.

Under torch.compile the packing is replaced by masking (packing needs nonzero and a host read of the counts,
data-dependent shapes that break the graph): `Padding` then carries the mask only, and `attend` runs the op on
the padded batch with the pads made inert: k = v = 0 (nothing enters the state), g = 0 (no decay), the extra
per-token tensors (the delta rule's beta) = 0 (an identity step), retention's fixed decays as a per-token
gate that is 0 at pads (ops.simple_gla); pads' outputs are zeroed. The states and real tokens' outputs are
those of the packed call up to rounding (another chunking of the same sums).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..modules import ShortConvolution, linear_recomputing_input
from ..ops.context_parallel import active_group, context_parallel, halo
from ..ops.fused import rms_norm
from ..ops.library import retention_log_decays
from ..ops.reference import compute_dtype
from ..ops.validate import ATTN_MODES


@dataclass
class Padding:
    """The real tokens of a padded [B, T] batch (built once per forward, shared by all layers)."""

    mask: torch.Tensor                   # [B, T] bool, True = real token
    indices: Optional[torch.Tensor]      # [N_real] flat indices into B*T of the real tokens, row-major
    rows: Optional[torch.Tensor]         # [N] rows holding at least one real token
    cu_seqlens: Optional[torch.Tensor]   # [N + 1] int64 offsets of those rows' tokens in the packed sequence
    # indices, rows and cu_seqlens are None under torch.compile: the mask alone, `attend` masks (module docstring)

    @property
    def packed(self):
        return self.indices is not None

    @classmethod
    def from_mask(cls, attention_mask, seq_len):
        """None when the last `seq_len` columns of the 2-D mask are all real tokens (nothing to pack); under
        torch.compile a mask-only Padding whatever the mask holds (no data-dependent branch)."""
        if attention_mask is None:
            return None
        if attention_mask.ndim != 2:
            raise ValueError(f"attention_mask must be a 2-D [batch, seq] padding mask, got shape "
                             f"{tuple(attention_mask.shape)}")
        if attention_mask.shape[1] < seq_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions but the input has {seq_len}")
        mask = attention_mask[:, attention_mask.shape[1] - seq_len:].bool()
        if torch.compiler.is_compiling():
            return cls(mask, None, None, None)
        if bool(mask.all()):
            return None
        counts = mask.sum(1)
        rows = counts.nonzero().squeeze(1)
        cu_seqlens = F.pad(counts.index_select(0, rows).cumsum(0), (1, 0))
        indices = mask.flatten().nonzero().squeeze(1)
        return cls(mask, indices, rows, cu_seqlens)


def attend(op, q, k, v, g=None, initial_state=None, output_final_state=False, padding=None, mode="auto",
           final_state_in_place=False, extra=(), **kwargs):
    """Call an op from linattn_models.ops on [B, T, H, *] inputs, packing out the pads when `padding` is set.

    The op gets (q, k, v[, g], *extra) positionally: `extra` holds further per-token tensors [B, T, H(, *)],
    packed like q (e.g. the delta rule's beta: `attend(ops.delta_rule, q, k, v, extra=(beta,))`).
    Returns (o [B, T, H, V], final_state [B, H, K, V] fp32 or None). Rows without real tokens keep their
    initial state (zeros when there is none). final_state_in_place: passed to the op (unpadded calls only)."""
    args = ((q, k, v) if g is None else (q, k, v, g)) + tuple(extra)
    split, group = active_group()
    if split:  # this rank's piece of one sequence (ops.split_sequence): exchange state summaries
        if padding is not None:
            raise ValueError("context parallel (split_sequence): padded batches are not supported; give every rank "
                             "its piece of unpadded sequences (no attention_mask with pads)")
        return context_parallel(op, *args, group=group, initial_state=initial_state,
                                output_final_state=output_final_state, mode=mode, **kwargs)
    if padding is None:
        return op(*args, initial_state=initial_state, output_final_state=output_final_state, mode=mode,
                  final_state_in_place=final_state_in_place, **kwargs)
    if not padding.packed:
        return _attend_masked(op, args, initial_state, output_final_state, padding.mask, mode,
                              kwargs)
    B, T, H = q.shape[:3]
    V = v.shape[-1]
    if padding.indices.numel() == 0:
        o = v.new_zeros(B, T, H, V)
        if not output_final_state:
            return o, None
        if initial_state is None:
            dt = compute_dtype(q)
            initial_state = q.new_zeros(B, H, q.shape[-1], V, dtype=dt)
        return o, initial_state

    def pack(x):
        return x.flatten(0, 1).index_select(0, padding.indices).unsqueeze(0)

    h0 = None if initial_state is None else initial_state.index_select(0, padding.rows)
    o, state = op(*(pack(x) for x in args), initial_state=h0, output_final_state=output_final_state,
                  cu_seqlens=padding.cu_seqlens, mode=mode, **kwargs)
    o = o.new_zeros(B * T, H, o.shape[-1]).index_copy(0, padding.indices, o[0]).view(B, T, H, -1)
    if output_final_state:
        base = initial_state if initial_state is not None else state.new_zeros(B, *state.shape[1:])
        state = base.index_copy(0, padding.rows, state)
    return o, state


def _attend_masked(op, args, initial_state, output_final_state, mask, mode, kwargs):
    """attend on the padded batch with the pads made inert (module docstring): the torch.compile path."""
    def zero_pads(x):
        return x * mask.view(mask.shape + (1,) * (x.ndim - 2)).to(x.dtype)

    q, k, v = args[0], zero_pads(args[1]), zero_pads(args[2])
    rest = tuple(zero_pads(x) for x in args[3:])  # g (if gated) and the extra per-token tensors
    if op is ops.retention:
        decays = retention_log_decays(q.shape[2], q.device, compute_dtype(q))
        op, rest = ops.simple_gla, (zero_pads(decays.expand(q.shape[:3])),)
    o, state = op(q, k, v, *rest, initial_state=initial_state, output_final_state=output_final_state, mode=mode,
                  **kwargs)
    return zero_pads(o), state


class TokenMixer(nn.Module):
    """Base class: a sequence mixer with a recurrent state kept in the cache under `layer_idx`.

    Args:
        hidden_size: width of the input and output x [B, T, hidden_size].
        num_heads, head_k_dim, head_v_dim: heads and their key / value widths.
        use_short_conv, conv_size: a short causal conv (+ SiLU) on q, k, v.
        norm_eps: epsilon of the output norm.
        layer_idx: this layer's slot in the cache.
        mode: "auto" | "chunk" | "recurrent" (the ops' mode; `set_attn_mode` on the model sets every layer's).

    forward(x, cache=None, padding=None, positions=None) -> [B, T, hidden_size]: cache is a
    LinearAttentionCache (states read and written under layer_idx), padding a layers.Padding of the batch's
    pads (packed out of the op call), positions the rotary positions where the mixer uses them.
    """

    def __init__(self, layer_idx: int = 0, mode: str = "auto"):
        super().__init__()
        self.layer_idx = layer_idx
        self.mode = mode

    @property
    def mode(self):
        return self._mode

    @mode.setter
    def mode(self, value):
        if value not in ATTN_MODES:
            raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got {value!r}")
        self._mode = value

    def get_state(self, cache, name):
        return None if cache is None else cache.get_state(self.layer_idx, name)

    @staticmethod
    def states_in_place(cache):
        """Whether the ops may write final states into the cache's state buffers (the CUDA-graph decode step's
        static cache says so: it keeps every state in a fixed buffer)."""
        return cache is not None and getattr(cache, "states_in_place", False)

    def set_state(self, cache, name, value):
        if cache is not None and value is not None:
            cache.set_state(self.layer_idx, name, value)

    def init_qkv(self, hidden_size, num_heads, head_k_dim, head_v_dim, use_short_conv, conv_size):
        """The q/k/v projections (and short convs) every mixer has; their names are the checkpoint format."""
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        key_dim, value_dim = num_heads * head_k_dim, num_heads * head_v_dim
        self.q_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, value_dim, bias=False)
        self.use_short_conv = use_short_conv
        if use_short_conv:
            self.q_conv1d = ShortConvolution(key_dim, conv_size)
            self.k_conv1d = ShortConvolution(key_dim, conv_size)
            self.v_conv1d = ShortConvolution(value_dim, conv_size)

    def project_qkv(self, x, cache, padding):
        """q, k: [B, T, H, K] and v: [B, T, H, V] from x [B, T, D], through the short convs when on."""
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            q = self.conv(self.q_conv1d, q, cache, "conv_q", padding)
            k = self.conv(self.k_conv1d, k, cache, "conv_k", padding)
            v = self.conv(self.v_conv1d, v, cache, "conv_v", padding)
        H = self.num_heads
        return q.view(B, T, H, self.head_k_dim), k.view(B, T, H, self.head_k_dim), v.view(B, T, H, self.head_v_dim)

    def gated_output(self, o, gate):
        """o_proj(g_norm(o, gate)) for mixers with a GatedRMSNorm `g_norm` and an output projection `o_proj`
        (RetNet, GLA): o, gate [B, T, H, V]. The gated norm's output is recomputed in the backward, not kept."""
        B, T = o.shape[:2]
        norm = self.g_norm
        return linear_recomputing_input(
            self.o_proj, lambda o, g, w: rms_norm(o, w, norm.eps, gate=g).reshape(B, T, -1), o, gate, norm.weight)

    def conv(self, conv_module, x, cache, name, padding):
        """Run a ShortConvolution, reading/writing its state `name` in the cache."""
        split, group = active_group()
        if split and cache is None:  # a split sequence: the previous rank's last inputs are this piece's history
            history = halo(x, conv_module.kernel_size[0] - 1, group).transpose(1, 2)
            return conv_module(x, conv_state=history, mask=None if padding is None else padding.mask)[0]
        y, state = conv_module(x, conv_state=self.get_state(cache, name),
                               mask=None if padding is None else padding.mask, output_final_state=cache is not None)
        self.set_state(cache, name, state)
        return y
