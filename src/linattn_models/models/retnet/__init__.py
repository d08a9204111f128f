import importlib

from .configuration_retnet import RetNetConfig

_MODELING = ("RetNetModel", "RetNetForCausalLM", "RetNetForSequenceClassification")
__all__ = ["RetNetConfig", *_MODELING]


def __getattr__(name):  # the modeling code loads on first access (see models/common/__init__.py)
    if name in _MODELING:
        return getattr(importlib.import_module(".modeling_retnet", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
