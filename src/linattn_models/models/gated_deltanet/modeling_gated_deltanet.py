"""Gated DeltaNet: the shared model code with the GatedDeltaNet mixer."""
from ...layers import GatedDeltaNet
from ..common.modeling_common import LinAttnForCausalLM, LinAttnForSequenceClassification, LinAttnModel
from .configuration_gated_deltanet import GatedDeltaNetConfig


class GatedDeltaNetModel(LinAttnModel):
    config_class = GatedDeltaNetConfig

    @staticmethod
    def build_mixer(config, layer_idx):
        return GatedDeltaNet(config.hidden_size, config.num_heads, config.head_k_dim, config.head_v_dim,
                             use_short_conv=config.use_short_conv, conv_size=config.conv_size,
                             norm_eps=config.rms_norm_eps, layer_idx=layer_idx, mode=config.attn_mode,
                             use_output_gate=config.use_output_gate, allow_neg_eigval=config.allow_neg_eigval)


class GatedDeltaNetForCausalLM(LinAttnForCausalLM):
    config_class = GatedDeltaNetConfig
    _base_model_class = GatedDeltaNetModel


class GatedDeltaNetForSequenceClassification(LinAttnForSequenceClassification):
    config_class = GatedDeltaNetConfig
    _base_model_class = GatedDeltaNetModel
