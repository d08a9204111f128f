"""GatedLinearAttention: the GLA mixer (Yang et al. 2024).

    q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t        (optionally through a short causal conv + SiLU)
    g_t = logsigmoid(W_2 W_1 x_t + b) / τ             low-rank data-dependent log decay per key dim, τ = 16
    S_t = Diag(exp(g_t)) S_{t-1} + k_tᵀ v_t          (ops.gated_linear_attention)
    o_t = W_o [ RMSNorm_head(s · q_t S_t) ⊙ swish(W_r x_t) ]
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..modules import GatedRMSNorm
from .common import TokenMixer, attend


class GatedLinearAttention(TokenMixer):
    """The GLA token mixer (module docstring: the math).

    Args: those of TokenMixer (layers/common.py), and
        gate_low_rank_dim, gate_logit_normalizer: rank of the gate projection, and τ in logsigmoid(·) / τ.

    Example:
        >>> layer = GatedLinearAttention(hidden_size=256, num_heads=4, head_k_dim=32, head_v_dim=64)
        >>> y = layer(torch.randn(2, 100, 256))
    """

    def __init__(self, hidden_size: int, num_heads: int, head_k_dim: int, head_v_dim: int,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0, use_short_conv: bool = False,
                 conv_size: int = 4, norm_eps: float = 1e-6, layer_idx: int = 0, mode: str = "auto"):
        super().__init__(layer_idx, mode)
        self.init_qkv(hidden_size, num_heads, head_k_dim, head_v_dim, use_short_conv, conv_size)
        self.gate_logit_normalizer = float(gate_logit_normalizer)
        key_dim, value_dim = num_heads * head_k_dim, num_heads * head_v_dim
        self.g_proj = nn.Linear(hidden_size, value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, key_dim, bias=True))
        self.g_norm = GatedRMSNorm(head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, hidden_size, bias=False)

    def forward(self, x, cache=None, padding=None, positions=None):
        B, T, _ = x.shape
        H = self.num_heads
        q, k, v = self.project_qkv(x, cache, padding)
        # log decays in float32 at least (the ops accept any float gate dtype)
        gk = self.gk_proj(x)
        g = F.logsigmoid(gk if gk.dtype == torch.float64 else gk.float()) / self.gate_logit_normalizer
        g = g.view(B, T, H, self.head_k_dim)
        o, state = attend(ops.gated_linear_attention, q, k, v, g, initial_state=self.get_state(cache, "recurrent"),
                          output_final_state=cache is not None, padding=padding, mode=self.mode,
                          final_state_in_place=self.states_in_place(cache))
        self.set_state(cache, "recurrent", state)
        gate = self.g_proj(x).view(B, T, H, self.head_v_dim)
        return self.gated_output(o, gate)
