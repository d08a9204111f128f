"""DeltaNet (Schlag et al. 2021; Yang et al. 2024) and Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025) mixers.

    q_t, k_t, v_t = SiLU(conv(W_q x_t)), SiLU(conv(W_k x_t)), SiLU(conv(W_v x_t))   (short causal convs)
    q_t, k_t ← q_t / |q_t|, k_t / |k_t|                                           (in the op: use_qk_l2norm)
    β_t = sigmoid(W_b x_t)                                                        one step size per head
    DeltaNet:        S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ                (ops.delta_rule)
    Gated DeltaNet:  S_t = e^{g_t} (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ        (ops.gated_delta_rule)
                     g_t = −exp(A_log) · softplus(W_a x_t + dt_bias)              one log decay per head
    o_t = W_o [ RMSNorm_head(s · S_tᵀ q_t) ⊙ swish(W_g x_t) ]     (use_output_gate=False: W_o RMSNorm_head(·))
    allow_neg_eigval: β_t = 2 sigmoid(W_b x_t) (eigenvalues of I − β_t k_t k_tᵀ down to −1; Grazzi et al. 2024)

Parameter names are fla's (q_proj, k_proj, v_proj, q_conv1d, k_conv1d, v_conv1d, b_proj, a_proj, A_log,
dt_bias, g_proj, o_proj) except the gated output norm: `g_norm`, the name the other mixers (RetNet, GLA) and
`TokenMixer.gated_output` use, where fla has `o_norm`; without the gate (use_output_gate=False, fla's
use_gate=False) the plain per-head norm is `o_norm`, as fla's. Both mixers gate the output by default.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..modules import GatedRMSNorm, RMSNorm
from .common import TokenMixer, attend


class DeltaNet(TokenMixer):
    """The DeltaNet token mixer (module docstring: the math); `gated=True` is Gated DeltaNet.

    Args: those of TokenMixer (layers/common.py), and
        gated: add the per-head decay e^{g_t} (a_proj, A_log, dt_bias) and use ops.gated_delta_rule.
        use_output_gate: gate the normed output with swish(W_g x_t) (g_proj, g_norm); False: RMSNorm only (o_norm).
        allow_neg_eigval: β_t = 2 sigmoid(W_b x_t) instead of sigmoid(W_b x_t).
    use_short_conv defaults to True here (DeltaNet without the convs trains much worse; fla's default too).

    Example:
        >>> layer = DeltaNet(hidden_size=256, num_heads=4, head_k_dim=64, head_v_dim=64)
        >>> y = layer(torch.randn(2, 100, 256))
    """

    def __init__(self, hidden_size: int, num_heads: int, head_k_dim: int, head_v_dim: int, gated: bool = False,
                 use_short_conv: bool = True, conv_size: int = 4, norm_eps: float = 1e-6, layer_idx: int = 0,
                 mode: str = "auto", use_output_gate: bool = True, allow_neg_eigval: bool = False):
        super().__init__(layer_idx, mode)
        self.init_qkv(hidden_size, num_heads, head_k_dim, head_v_dim, use_short_conv, conv_size)
        self.gated = bool(gated)
        self.use_output_gate, self.allow_neg_eigval = bool(use_output_gate), bool(allow_neg_eigval)
        value_dim = num_heads * head_v_dim
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        if self.gated:
            self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
            self.A_log = nn.Parameter(torch.empty(num_heads))
            self.dt_bias = nn.Parameter(torch.empty(num_heads))
            for p in (self.A_log, self.dt_bias):
                p._no_weight_decay = True  # as fla: the decay's parameters are not weight-decayed
            self.reset_decay_parameters()
        if self.use_output_gate:
            self.g_proj = nn.Linear(hidden_size, value_dim, bias=False)
            self.g_norm = GatedRMSNorm(head_v_dim, eps=norm_eps)
        else:
            self.o_norm = RMSNorm(head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, hidden_size, bias=False)

    def initial_parameters(self):
        """The decay's start values (Gated DeltaNet paper / fla): A ~ U(0, 16), A_log = log A; dt = exp(U(log 1e-3,
        log 1e-1)) clamped >= 1e-4, dt_bias = softplus⁻¹(dt) = dt + log(−expm1(−dt)). Empty when not gated.
        Used at construction and by the models' _init_weights."""
        if not self.gated:
            return {}
        H, device = self.num_heads, self.A_log.device
        A = torch.empty(H, dtype=torch.float32, device=device).uniform_(0, 16)
        dt = torch.exp(torch.rand(H, dtype=torch.float32, device=device) * (math.log(0.1) - math.log(1e-3))
                       + math.log(1e-3)).clamp_min(1e-4)
        return {"A_log": torch.log(A), "dt_bias": dt + torch.log(-torch.expm1(-dt))}

    def reset_decay_parameters(self):
        with torch.no_grad():
            for name, value in self.initial_parameters().items():
                getattr(self, name).copy_(value)

    @staticmethod
    def _fp32(x):
        """float32 at least (float64 stays): β and the decays are computed in it, as GLA's gates."""
        return x if x.dtype == torch.float64 else x.float()

    def forward(self, x, cache=None, padding=None, positions=None):
        B, T, _ = x.shape
        H = self.num_heads
        q, k, v = self.project_qkv(x, cache, padding)  # SiLU is in the short convs
        beta = torch.sigmoid(self._fp32(self.b_proj(x)))  # [B, T, H]
        if self.allow_neg_eigval:
            beta = 2 * beta
        kw = dict(initial_state=self.get_state(cache, "recurrent"), output_final_state=cache is not None,
                  padding=padding, mode=self.mode, final_state_in_place=self.states_in_place(cache),
                  use_qk_l2norm=True)
        if self.gated:
            a = self._fp32(self.a_proj(x))
            g = -self.A_log.to(a.dtype).exp() * F.softplus(a + self.dt_bias.to(a.dtype))  # [B, T, H], <= 0
            o, state = attend(ops.gated_delta_rule, q, k, v, g, extra=(beta,), **kw)
        else:
            o, state = attend(ops.delta_rule, q, k, v, extra=(beta,), **kw)
        self.set_state(cache, "recurrent", state)
        if not self.use_output_gate:
            return self.o_proj(self.o_norm(o).reshape(B, T, -1))
        gate = self.g_proj(x).view(B, T, H, self.head_v_dim)
        return self.gated_output(o, gate)


class GatedDeltaNet(DeltaNet):
    """The Gated DeltaNet token mixer: DeltaNet(..., gated=True) (module docstring: the math).

    Example:
        >>> layer = GatedDeltaNet(hidden_size=256, num_heads=4, head_k_dim=64, head_v_dim=64)
        >>> y = layer(torch.randn(2, 100, 256))
    """

    def __init__(self, hidden_size: int, num_heads: int, head_k_dim: int, head_v_dim: int,
                 use_short_conv: bool = True, conv_size: int = 4, norm_eps: float = 1e-6, layer_idx: int = 0,
                 mode: str = "auto", use_output_gate: bool = True, allow_neg_eigval: bool = False):
        super().__init__(hidden_size, num_heads, head_k_dim, head_v_dim, gated=True, use_short_conv=use_short_conv,
                         conv_size=conv_size, norm_eps=norm_eps, layer_idx=layer_idx, mode=mode,
                         use_output_gate=use_output_gate, allow_neg_eigval=allow_neg_eigval)
