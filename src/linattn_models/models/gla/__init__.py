from .configuration_gla import GLAConfig
from .modeling_gla import GLAForCausalLM, GLAForSequenceClassification, GLAModel

__all__ = ["GLAConfig", "GLAModel", "GLAForCausalLM", "GLAForSequenceClassification"]
