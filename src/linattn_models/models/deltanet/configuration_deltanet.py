"""DeltaNet (the delta rule, Schlag et al. 2021; parallelised by Yang et al. 2024) configuration."""
from ..common.configuration_common import LinAttnConfig


class DeltaNetConfig(LinAttnConfig):
    """DeltaNet: the delta rule S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ with L2-normalised q, k and
    β_t = sigmoid(W_b x_t) per head, short convs (+ SiLU) on q, k, v, and a gated RMSNorm on the output
    (layers/deltanet.py). Keys and values are as wide as the hidden size by default (expand_k = expand_v = 1).

    Args: LinAttnConfig's; use_short_conv defaults to True (must be a bool), conv_size to 4 (>= 2), and
        use_output_gate: gate the normed output with swish(W_g x_t) (default True); False: per-head RMSNorm only.
        allow_neg_eigval: β_t = 2 sigmoid(W_b x_t): I − β_t k_t k_tᵀ has eigenvalues down to −1 (default False).

    Example:
        >>> model = transformers.AutoModelForCausalLM.from_config(DeltaNetConfig(num_hidden_layers=2, hidden_size=256,
        ...                                                                        num_heads=2))
    """

    model_type = "linattn_deltanet"
    class_prefix = "DeltaNet"

    num_heads: int = 8
    expand_k: float = 1.0
    expand_v: float = 1.0
    use_short_conv: bool = True
    conv_size: int = 4
    use_output_gate: bool = True
    allow_neg_eigval: bool = False

    def __post_init__(self, **kwargs):
        check_delta_fields(self)
        super().__post_init__(**kwargs)


def check_delta_fields(config):
    """The mixer's fields of DeltaNetConfig / GatedDeltaNetConfig, checked when the config is made (the layer
    would fail later, or not at all)."""
    if not isinstance(config.use_short_conv, bool):
        raise ValueError(f"use_short_conv must be True or False, got {config.use_short_conv!r}")
    if isinstance(config.conv_size, bool) or not isinstance(config.conv_size, int) or config.conv_size < 2:
        raise ValueError(f"conv_size must be an integer >= 2, got {config.conv_size!r}")
    for name in ("use_output_gate", "allow_neg_eigval"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(config, name)!r}")
