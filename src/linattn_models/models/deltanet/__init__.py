from ..._lazy import lazy_exports
from .configuration_deltanet import DeltaNetConfig

_MODELING = ("DeltaNetModel", "DeltaNetForCausalLM", "DeltaNetForSequenceClassification")
__all__ = ["DeltaNetConfig", *_MODELING]
__getattr__, __dir__ = lazy_exports(__name__, {name: ".modeling_deltanet" for name in _MODELING})
