"""MultiScaleRetention: the RetNet mixer (Sun et al. 2023), with plain RoPE instead of xPos.

    q_t, k_t = RoPE(W_q x_t, t), RoPE(W_k x_t, t);  v_t = W_v x_t          per head h
    S_t = γ_h S_{t-1} + k_tᵀ v_t,   γ_h = 1 - 2^(-5-h)                    (ops.retention)
    o_t = W_o [ RMSNorm_head(s · q_t S_t) ⊙ swish(W_g x_t) ]

Positions count real tokens only (pads are packed out), so a left-padded row sees the same positions as the
sequence run alone.
"""
import torch
import torch.nn as nn

from .. import ops
from ..modules import GatedRMSNorm, RotaryEmbedding
from .common import TokenMixer, attend


class MultiScaleRetention(TokenMixer):
    """The RetNet token mixer (module docstring: the math).

    Args: those of TokenMixer (layers/common.py), and
        rope_theta: the rotary embedding's base.

    Example:
        >>> layer = MultiScaleRetention(hidden_size=256, num_heads=4, head_k_dim=32, head_v_dim=64)
        >>> y = layer(torch.randn(2, 100, 256))
    """

    def __init__(self, hidden_size: int, num_heads: int, head_k_dim: int, head_v_dim: int,
                 rope_theta: float = 10000.0, use_short_conv: bool = False, conv_size: int = 4,
                 norm_eps: float = 1e-6, layer_idx: int = 0, mode: str = "auto"):
        super().__init__(layer_idx, mode)
        self.init_qkv(hidden_size, num_heads, head_k_dim, head_v_dim, use_short_conv, conv_size)
        self.g_proj = nn.Linear(hidden_size, num_heads * head_v_dim, bias=False)
        self.rotary = RotaryEmbedding(head_k_dim, base=rope_theta)
        self.g_norm = GatedRMSNorm(head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(num_heads * head_v_dim, hidden_size, bias=False)

    def forward(self, x, cache=None, padding=None, positions=None):
        B, T, _ = x.shape
        q, k, v = self.project_qkv(x, cache, padding)
        if positions is None:
            positions = torch.arange(T, device=x.device).expand(B, T)
        q, k = self.rotary(q, k, positions)
        o, state = attend(ops.retention, q, k, v, initial_state=self.get_state(cache, "recurrent"),
                          output_final_state=cache is not None, padding=padding, mode=self.mode,
                          final_state_in_place=self.states_in_place(cache))
        self.set_state(cache, "recurrent", state)
        gate = self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim)
        return self.gated_output(o, gate)
