"""DeltaNet: the shared model code with the DeltaNet mixer."""
from ...layers import DeltaNet
from ..common.modeling_common import LinAttnForCausalLM, LinAttnForSequenceClassification, LinAttnModel
from .configuration_deltanet import DeltaNetConfig


class DeltaNetModel(LinAttnModel):
    config_class = DeltaNetConfig

    @staticmethod
    def build_mixer(config, layer_idx):
        return DeltaNet(config.hidden_size, config.num_heads, config.head_k_dim, config.head_v_dim,
                        use_short_conv=config.use_short_conv, conv_size=config.conv_size,
                        norm_eps=config.rms_norm_eps, layer_idx=layer_idx, mode=config.attn_mode,
                        use_output_gate=config.use_output_gate, allow_neg_eigval=config.allow_neg_eigval)


class DeltaNetForCausalLM(LinAttnForCausalLM):
    config_class = DeltaNetConfig
    _base_model_class = DeltaNetModel


class DeltaNetForSequenceClassification(LinAttnForSequenceClassification):
    config_class = DeltaNetConfig
    _base_model_class = DeltaNetModel
