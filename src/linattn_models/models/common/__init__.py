"""Shared model code: config base, cache, decoder block and the generic model heads.

Only the config is imported eagerly: the modeling code imports transformers.modeling_utils, which imports
torch._dynamo and thereby triton, and `import linattn_models` must not (Triton's interpreter must be
switchable on before triton is first imported). The rest loads on first access."""
import importlib

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


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
