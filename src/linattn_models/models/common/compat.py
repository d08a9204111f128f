"""Differences between transformers versions, decided once, here (a light import: no modeling code).

CACHE_OUTPUT_NAME: the output field (and `generate`'s model kwarg) that carries the cache: "cache" in
transformers >= 5.2x (5.24 checked), "past_key_values" in 5.17. Models accept all of `cache`,
`past_key_values` and `cache_params` as inputs and return the cache under this name.
"""
from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_OUTPUT_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
