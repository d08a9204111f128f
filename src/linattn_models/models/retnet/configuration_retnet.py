"""RetNet (Sun et al. 2023) configuration: multi-scale retention with fixed per-head decays."""
from ..common.configuration_common import LinAttnConfig


class RetNetConfig(LinAttnConfig):
    """RetNet: values are 2x wider than keys by default (expand_v = 2), as in the paper.

    Args (besides LinAttnConfig's):
        rope_theta: the rotary embedding's base.

    Example:
        >>> model = transformers.AutoModelForCausalLM.from_config(RetNetConfig(num_hidden_layers=2, hidden_size=256))
    """

    model_type = "linattn_retnet"
    class_prefix = "RetNet"

    num_heads: int = 8
    expand_v: float = 2.0
    rope_theta: float = 10000.0
