import importlib

from .configuration_linear_transformer import LinearTransformerConfig

_MODELING = ("LinearTransformerModel", "LinearTransformerForCausalLM", "LinearTransformerForSequenceClassification")
__all__ = ["LinearTransformerConfig", *_MODELING]


def __getattr__(name):  # the modeling code loads on first access (see models/common/__init__.py)
    if name in _MODELING:
        return getattr(importlib.import_module(".modeling_linear_transformer", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
