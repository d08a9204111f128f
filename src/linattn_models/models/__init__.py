"""The three registered architectures. Importing this package registers them with the transformers Auto
classes (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification).

Model types: linattn_linear_transformer, linattn_retnet, linattn_gla (distinct from fla's retnet / gla /
linear_attn). A model type already registered by another package is left alone, with a warning.
"""
import warnings

from .common import LinAttnConfig, LinearAttentionCache
from .gla import GLAConfig, GLAForCausalLM, GLAForSequenceClassification, GLAModel
from .linear_transformer import (LinearTransformerConfig, LinearTransformerForCausalLM,
                                 LinearTransformerForSequenceClassification, LinearTransformerModel)
from .retnet import RetNetConfig, RetNetForCausalLM, RetNetForSequenceClassification, RetNetModel

ARCHITECTURES = {
    "linear_transformer": (LinearTransformerConfig, LinearTransformerModel, LinearTransformerForCausalLM,
                           LinearTransformerForSequenceClassification),
    "retnet": (RetNetConfig, RetNetModel, RetNetForCausalLM, RetNetForSequenceClassification),
    "gla": (GLAConfig, GLAModel, GLAForCausalLM, GLAForSequenceClassification),
}


def _same_class(a, b):
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_all():
    """Register every architecture with the Auto classes (idempotent). Returns the model types registered."""
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    done = []
    for config_cls, model_cls, lm_cls, seq_cls in ARCHITECTURES.values():
        model_type = config_cls.model_type
        if model_type in CONFIG_MAPPING:
            other = CONFIG_MAPPING[model_type]
            if not _same_class(other, config_cls):
                warnings.warn(f"linattn_models: model type {model_type!r} is already registered by "
                              f"{other.__module__}.{other.__qualname__}; not registering {config_cls.__name__} "
                              f"over it (load our checkpoints with {lm_cls.__name__}.from_pretrained)",
                              stacklevel=2)
                continue
        AutoConfig.register(model_type, config_cls, exist_ok=True)
        for auto, cls in ((AutoModel, model_cls), (AutoModelForCausalLM, lm_cls),
                          (AutoModelForSequenceClassification, seq_cls)):
            auto.register(config_cls, cls, exist_ok=True)
        done.append(model_type)
    return done


REGISTERED_MODEL_TYPES = register_all()

__all__ = ["ARCHITECTURES", "REGISTERED_MODEL_TYPES", "register_all", "LinAttnConfig", "LinearAttentionCache",
           "LinearTransformerConfig", "LinearTransformerModel", "LinearTransformerForCausalLM",
           "LinearTransformerForSequenceClassification", "RetNetConfig", "RetNetModel", "RetNetForCausalLM",
           "RetNetForSequenceClassification", "GLAConfig", "GLAModel", "GLAForCausalLM", "GLAForSequenceClassification"]
