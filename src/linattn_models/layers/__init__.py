"""Token mixers: LinearAttention, MultiScaleRetention, GatedLinearAttention (all on linattn_models.ops)."""
from .common import ATTN_MODES, Padding, TokenMixer, attend
from .gla import GatedLinearAttention
from .linear_attention import LinearAttention
from .retention import MultiScaleRetention

__all__ = ["ATTN_MODES", "Padding", "TokenMixer", "attend", "GatedLinearAttention", "LinearAttention",
           "MultiScaleRetention"]
