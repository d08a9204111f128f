import importlib

from .configuration_gla import GLAConfig

_MODELING = ("GLAModel", "GLAForCausalLM", "GLAForSequenceClassification")
__all__ = ["GLAConfig", *_MODELING]


def __getattr__(name):  # the modeling code loads on first access (see models/common/__init__.py)
    if name in _MODELING:
        return getattr(importlib.import_module(".modeling_gla", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
