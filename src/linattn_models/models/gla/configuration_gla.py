"""GLA (Gated Linear Attention, Yang et al. 2024) configuration."""
from ..common.configuration_common import LinAttnConfig


class GLAConfig(LinAttnConfig):
    """Keys are half as wide as the hidden size by default (expand_k = 0.5); the forget gate is
    logsigmoid(W2 W1 x) / gate_logit_normalizer with a rank-`gate_low_rank_dim` projection."""

    model_type = "linattn_gla"
    class_prefix = "GLA"

    num_heads: int = 4
    expand_k: float = 0.5
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
