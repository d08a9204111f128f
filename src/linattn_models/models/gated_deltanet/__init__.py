from ..._lazy import lazy_exports
from .configuration_gated_deltanet import GatedDeltaNetConfig

_MODELING = ("GatedDeltaNetModel", "GatedDeltaNetForCausalLM", "GatedDeltaNetForSequenceClassification")
__all__ = ["GatedDeltaNetConfig", *_MODELING]
__getattr__, __dir__ = lazy_exports(__name__, {name: ".modeling_gated_deltanet" for name in _MODELING})
