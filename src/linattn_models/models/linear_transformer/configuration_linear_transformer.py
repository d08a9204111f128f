"""Linear Transformer (Katharopoulos et al. 2020) configuration."""
from ..common.configuration_common import LinAttnConfig


class LinearTransformerConfig(LinAttnConfig):
    """Linear attention with a feature map φ ("elu" = elu+1, "relu", "identity", "hedgehog") and, when
    `normalize_attention`, the normaliser q·Σk. `output_norm` adds an RMSNorm per head on the mixer output."""

    model_type = "linattn_linear_transformer"
    class_prefix = "LinearTransformer"

    feature_map: str = "elu"
    normalize_attention: bool = True
    output_norm: bool = False
