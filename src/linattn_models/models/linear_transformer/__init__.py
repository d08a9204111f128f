from ..._lazy import lazy_exports
from .configuration_linear_transformer import LinearTransformerConfig

_MODELING = ("LinearTransformerModel", "LinearTransformerForCausalLM", "LinearTransformerForSequenceClassification")
__all__ = ["LinearTransformerConfig", *_MODELING]
__getattr__, __dir__ = lazy_exports(__name__, {name: ".modeling_linear_transformer" for name in _MODELING})
