"""Linear Transformer: the shared model code with the LinearAttention mixer."""
from ...layers import LinearAttention
from ..common.modeling_common import LinAttnForCausalLM, LinAttnForSequenceClassification, LinAttnModel
from .configuration_linear_transformer import LinearTransformerConfig


class LinearTransformerModel(LinAttnModel):
    config_class = LinearTransformerConfig

    @staticmethod
    def build_mixer(config, layer_idx):
        return LinearAttention(config.hidden_size, config.num_heads, config.head_k_dim, config.head_v_dim,
                               feature_map=config.feature_map, tie_feature_map_qk=config.tie_feature_map_qk,
                               normalize=config.normalize_attention,
                               output_norm=config.output_norm, use_short_conv=config.use_short_conv,
                               conv_size=config.conv_size, norm_eps=config.rms_norm_eps, layer_idx=layer_idx,
                               mode=config.attn_mode)


class LinearTransformerForCausalLM(LinAttnForCausalLM):
    config_class = LinearTransformerConfig
    _base_model_class = LinearTransformerModel


class LinearTransformerForSequenceClassification(LinAttnForSequenceClassification):
    config_class = LinearTransformerConfig
    _base_model_class = LinearTransformerModel
