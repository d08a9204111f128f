"""RetNet (Sun et al. 2023) configuration: multi-scale retention with fixed per-head decays."""
from ..common.configuration_common import LinAttnConfig


class RetNetConfig(LinAttnConfig):
    """Values are 2x wider than keys by default (expand_v = 2), as in the paper; rotary base `rope_theta`."""

    model_type = "linattn_retnet"
    class_prefix = "RetNet"

    num_heads: int = 8
    expand_v: float = 2.0
    rope_theta: float = 10000.0
