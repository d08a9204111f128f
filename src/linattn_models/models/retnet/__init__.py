from .configuration_retnet import RetNetConfig
from .modeling_retnet import RetNetForCausalLM, RetNetForSequenceClassification, RetNetModel

__all__ = ["RetNetConfig", "RetNetModel", "RetNetForCausalLM", "RetNetForSequenceClassification"]
