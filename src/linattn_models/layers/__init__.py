"""Token mixers: LinearAttention, MultiScaleRetention, GatedLinearAttention, DeltaNet, GatedDeltaNet (all on
linattn_models.ops), and SoftmaxAttention (the attention layers of hybrid stacks)."""
from .attention import SoftmaxAttention
from .common import ATTN_MODES, Padding, TokenMixer, attend
from .deltanet import DeltaNet, GatedDeltaNet
from .gla import GatedLinearAttention
from .linear_attention import LinearAttention
from .retention import MultiScaleRetention

__all__ = ["ATTN_MODES", "Padding", "TokenMixer", "attend", "DeltaNet", "GatedDeltaNet", "GatedLinearAttention",
           "LinearAttention", "MultiScaleRetention", "SoftmaxAttention"]
