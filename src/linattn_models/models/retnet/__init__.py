from ..._lazy import lazy_exports
from .configuration_retnet import RetNetConfig

_MODELING = ("RetNetModel", "RetNetForCausalLM", "RetNetForSequenceClassification")
__all__ = ["RetNetConfig", *_MODELING]
__getattr__, __dir__ = lazy_exports(__name__, {name: ".modeling_retnet" for name in _MODELING})
