"""Shared model code: config base, cache, decoder block and the generic model heads.

Only the config is imported eagerly; the rest loads on first access (linattn_models/_lazy.py says why)."""
from ..._lazy import lazy_exports
from .compat import CACHE_OUTPUT_NAME
from .configuration_common import LinAttnConfig

_LAZY = {
    "LinearAttentionCache": ".cache",
    "LinAttnDecoderLayer": ".modeling_common",
    "LinAttnForCausalLM": ".modeling_common",
    "LinAttnForSequenceClassification": ".modeling_common",
    "LinAttnModel": ".modeling_common",
    "LinAttnPreTrainedModel": ".modeling_common",
    "resolve_cache": ".modeling_common",
}

__all__ = ["CACHE_OUTPUT_NAME", "LinAttnConfig", *_LAZY]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
