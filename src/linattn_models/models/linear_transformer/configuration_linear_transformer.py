"""Linear Transformer (Katharopoulos et al. 2020) configuration."""
from ...modules.feature_map import FEATURE_MAPS
from ..common.configuration_common import LinAttnConfig


class LinearTransformerConfig(LinAttnConfig):
    """Linear attention with a feature map φ ("elu" = elu+1, "relu", "identity", "hedgehog",
    "elementwise_product"; see modules/feature_map.py) and, when `normalize_attention`, the normaliser q·Σk.
    `tie_feature_map_qk=False` gives q and k separate maps (only the learnable ones differ: hedgehog,
    elementwise_product). `output_norm` adds an RMSNorm per head on the mixer output.

    Args (besides LinAttnConfig's):
        feature_map: φ applied to q and k (modules/feature_map.py's FEATURE_MAPS).
        tie_feature_map_qk: one φ for q and k (True) or two of the same kind.
        normalize_attention: divide by the normaliser s · q_t · Σ_{s≤t} k_s.
        output_norm: an RMSNorm per head on the mixer output.

    Example:
        >>> cfg = LinearTransformerConfig(feature_map="hedgehog", num_hidden_layers=2, hidden_size=256)
    """

    model_type = "linattn_linear_transformer"
    class_prefix = "LinearTransformer"

    feature_map: str = "elu"
    tie_feature_map_qk: bool = True
    normalize_attention: bool = True
    output_norm: bool = False

    def __post_init__(self, **kwargs):
        # checked here too (the layer checks again), so a bad config fails when made, not when a model is built
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {self.feature_map!r}")
        if not isinstance(self.tie_feature_map_qk, bool):
            raise ValueError(f"tie_feature_map_qk must be True or False, got {self.tie_feature_map_qk!r}")
        super().__post_init__(**kwargs)
