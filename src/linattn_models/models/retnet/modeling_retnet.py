"""RetNet: the shared model code with the MultiScaleRetention mixer."""
from ...layers import MultiScaleRetention
from ..common.modeling_common import LinAttnForCausalLM, LinAttnForSequenceClassification, LinAttnModel
from .configuration_retnet import RetNetConfig


class RetNetModel(LinAttnModel):
    config_class = RetNetConfig

    @staticmethod
    def build_mixer(config, layer_idx):
        return MultiScaleRetention(config.hidden_size, config.num_heads, config.head_k_dim, config.head_v_dim,
                                   rope_theta=config.rope_theta, use_short_conv=config.use_short_conv,
                                   conv_size=config.conv_size, norm_eps=config.rms_norm_eps, layer_idx=layer_idx,
                                   mode=config.attn_mode)


class RetNetForCausalLM(LinAttnForCausalLM):
    config_class = RetNetConfig
    _base_model_class = RetNetModel


class RetNetForSequenceClassification(LinAttnForSequenceClassification):
    config_class = RetNetConfig
    _base_model_class = RetNetModel
