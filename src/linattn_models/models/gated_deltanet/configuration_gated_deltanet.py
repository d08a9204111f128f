"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025) configuration."""
from ..common.configuration_common import LinAttnConfig
from ..deltanet.configuration_deltanet import check_delta_fields


class GatedDeltaNetConfig(LinAttnConfig):
    """Gated DeltaNet: DeltaNet (DeltaNetConfig) with a per-head decay, S_t = e^{g_t} (I − β_t k_t k_tᵀ) S_{t−1}
    + β_t k_t v_tᵀ, g_t = −exp(A_log) · softplus(W_a x_t + dt_bias) (layers/deltanet.py).

    Args: those of DeltaNetConfig (the same fields and defaults; the decay has no settings).

    Example:
        >>> model = transformers.AutoModelForCausalLM.from_config(GatedDeltaNetConfig(num_hidden_layers=2,
        ...                                                                             hidden_size=256, num_heads=2))
    """

    model_type = "linattn_gated_deltanet"
    class_prefix = "GatedDeltaNet"

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
