"""Building blocks: norms, short causal conv, feature maps, rotary embedding, gated MLP."""
from .conv import ShortConvolution
from .feature_map import (FEATURE_MAPS, ElementwiseProductFeatureMap, FeatureMap, HedgehogFeatureMap,
                          LearnableFeatureMap, get_feature_map)
from .mlp import GatedMLP
from .norm import GatedRMSNorm, RMSNorm
from .recompute import linear_recomputing_input
from .rotary import RotaryEmbedding

__all__ = ["ShortConvolution", "FEATURE_MAPS", "FeatureMap", "LearnableFeatureMap", "HedgehogFeatureMap",
           "ElementwiseProductFeatureMap", "get_feature_map", "GatedMLP",
           "GatedRMSNorm", "RMSNorm", "RotaryEmbedding", "linear_recomputing_input"]
