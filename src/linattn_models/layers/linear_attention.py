"""LinearAttention: the Linear Transformer mixer (Katharopoulos et al. 2020).

    q_t = φ(W_q x_t), k_t = φ(W_k x_t), v_t = W_v x_t                    per head
    S_t = S_{t-1} + k_tᵀ v_t,      z_t = z_{t-1} + k_t
    o_t = s · q_t S_t / (s · q_t · z_t + eps)      (normalize=True; else o_t = s · q_t S_t)

The normaliser z [B, H, K] is carried next to S [B, H, K, V] in the cache, so decoding token by token equals
the parallel form. Optional output RMSNorm per head (advisable without the normaliser) and short conv on q/k/v.
φ is one module for q and k (`feature_map`), or with tie_feature_map_qk=False two of the same kind,
`feature_map_q` and `feature_map_k` (separately learnt; fla's default for its learnable maps).
"""
import torch
import torch.nn as nn

from .. import ops
from ..modules import RMSNorm, get_feature_map
from .common import TokenMixer, attend


class LinearAttention(TokenMixer):
    """The Linear Transformer token mixer (module docstring: the math).

    Args: those of TokenMixer (layers/common.py), and
        feature_map, tie_feature_map_qk: φ (modules/feature_map.py) and whether q and k share one.
        normalize: divide by the normaliser; output_norm: an RMSNorm per head on the output.

    Example:
        >>> layer = LinearAttention(hidden_size=256, num_heads=4, head_k_dim=32, head_v_dim=64)
        >>> y = layer(torch.randn(2, 100, 256))
    """

    def __init__(self, hidden_size: int, num_heads: int, head_k_dim: int, head_v_dim: int, feature_map: str = "elu",
                 tie_feature_map_qk: bool = True, normalize: bool = True, output_norm: bool = False,
                 use_short_conv: bool = False, conv_size: int = 4, norm_eps: float = 1e-6, layer_idx: int = 0,
                 mode: str = "auto"):
        super().__init__(layer_idx, mode)
        self.init_qkv(hidden_size, num_heads, head_k_dim, head_v_dim, use_short_conv, conv_size)
        self.normalize = normalize
        if not isinstance(tie_feature_map_qk, bool):
            raise ValueError(f"tie_feature_map_qk must be True or False, got {tie_feature_map_qk!r}")
        self.tie_feature_map_qk = tie_feature_map_qk
        # tied keeps the parameter names `feature_map.*` of existing checkpoints
        if tie_feature_map_qk:
            self.feature_map = get_feature_map(feature_map, num_heads, head_k_dim)
        else:
            self.feature_map_q = get_feature_map(feature_map, num_heads, head_k_dim)
            self.feature_map_k = get_feature_map(feature_map, num_heads, head_k_dim)
        self.o_norm = RMSNorm(head_v_dim, eps=norm_eps) if output_norm else None
        self.o_proj = nn.Linear(num_heads * head_v_dim, hidden_size, bias=False)

    def forward(self, x, cache=None, padding=None, positions=None):
        B, T, _ = x.shape
        q, k, v = self.project_qkv(x, cache, padding)
        if self.tie_feature_map_qk:
            q, k = self.feature_map(q), self.feature_map(k)
        else:
            q, k = self.feature_map_q(q), self.feature_map_k(k)
        scale = q.shape[-1] ** -0.5
        o, state = attend(ops.linear_attention, q, k, v, initial_state=self.get_state(cache, "recurrent"),
                          output_final_state=cache is not None, padding=padding, mode=self.mode,
                          final_state_in_place=self.states_in_place(cache), scale=scale)
        self.set_state(cache, "recurrent", state)
        if self.normalize:
            o = self._normalize(o, q, k, cache, padding, scale)
        if self.o_norm is not None:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(B, T, -1))

    def _normalize(self, o, q, k, cache, padding, scale):
        """Divide by s · q_t · z_t, z_t = z_0 + Σ_{s≤t} k_s over real tokens; z_T goes to the cache."""
        if padding is not None:
            k = k * padding.mask[..., None, None].to(k.dtype)
        o, z = ops.normalize_linear_attention(o, q, k, scale, z0=self.get_state(cache, "normalizer"))
        if cache is not None:
            self.set_state(cache, "normalizer", z)
        return o
