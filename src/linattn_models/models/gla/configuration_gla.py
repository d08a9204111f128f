"""GLA (Gated Linear Attention, Yang et al. 2024) configuration."""
from ..common.configuration_common import LinAttnConfig


class GLAConfig(LinAttnConfig):
    """GLA: keys are half as wide as the hidden size by default (expand_k = 0.5); the forget gate is
    logsigmoid(W2 W1 x) / gate_logit_normalizer with a rank-`gate_low_rank_dim` projection.

    Args (besides LinAttnConfig's):
        gate_low_rank_dim: rank of the gate projection W2 W1.
        gate_logit_normalizer: τ in g = logsigmoid(·) / τ (larger: slower decay).

    Example:
        >>> model = transformers.AutoModelForCausalLM.from_config(GLAConfig(num_hidden_layers=2, hidden_size=256))
    """

    model_type = "linattn_gla"
    class_prefix = "GLA"

    num_heads: int = 4
    expand_k: float = 0.5
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
