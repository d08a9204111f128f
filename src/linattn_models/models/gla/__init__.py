from ..._lazy import lazy_exports
from .configuration_gla import GLAConfig

_MODELING = ("GLAModel", "GLAForCausalLM", "GLAForSequenceClassification")
__all__ = ["GLAConfig", *_MODELING]
__getattr__, __dir__ = lazy_exports(__name__, {name: ".modeling_gla" for name in _MODELING})
