from .configuration_linear_transformer import LinearTransformerConfig
from .modeling_linear_transformer import (LinearTransformerForCausalLM, LinearTransformerForSequenceClassification,
                                          LinearTransformerModel)

__all__ = ["LinearTransformerConfig", "LinearTransformerModel", "LinearTransformerForCausalLM",
           "LinearTransformerForSequenceClassification"]
