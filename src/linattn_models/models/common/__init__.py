"""Shared model code: config base, cache, decoder block and the generic model heads."""
from .cache import LinearAttentionCache
from .configuration_common import LinAttnConfig
from .modeling_common import (CACHE_OUTPUT_NAME, LinAttnDecoderLayer, LinAttnForCausalLM,
                              LinAttnForSequenceClassification, LinAttnModel, LinAttnPreTrainedModel, resolve_cache)

__all__ = ["LinearAttentionCache", "LinAttnConfig", "CACHE_OUTPUT_NAME", "LinAttnDecoderLayer", "LinAttnForCausalLM",
           "LinAttnForSequenceClassification", "LinAttnModel", "LinAttnPreTrainedModel", "resolve_cache"]
