"""The kernel core: causal (gated) linear attention in the [B, T, H, K] layout. See api.py."""
from .api import (gated_linear_attention, linear_attention, normalize_linear_attention, retention,
                  retention_log_decays, simple_gla)
from .delta import delta_rule, gated_delta_rule
from .context_parallel import context_parallel, split_sequence
from .compat import *  # noqa: F401,F403  fla-compatible names (chunk_gla, fused_recurrent_gla, ...)
from .compat import __all__ as _compat_all
from .dispatch import bf16_supported, default_device, resolve_backend

__all__ = ["linear_attention", "retention", "simple_gla", "gated_linear_attention", "retention_log_decays",
           "normalize_linear_attention", "delta_rule", "gated_delta_rule", "context_parallel", "split_sequence", "resolve_backend"] + _compat_all
