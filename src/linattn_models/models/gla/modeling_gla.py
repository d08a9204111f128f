"""GLA: the shared model code with the GatedLinearAttention mixer."""
from ...layers import GatedLinearAttention
from ..common.modeling_common import LinAttnForCausalLM, LinAttnForSequenceClassification, LinAttnModel
from .configuration_gla import GLAConfig


class GLAModel(LinAttnModel):
    config_class = GLAConfig

    @staticmethod
    def build_mixer(config, layer_idx):
        return GatedLinearAttention(config.hidden_size, config.num_heads, config.head_k_dim, config.head_v_dim,
                                    gate_low_rank_dim=config.gate_low_rank_dim,
                                    gate_logit_normalizer=config.gate_logit_normalizer,
                                    use_short_conv=config.use_short_conv, conv_size=config.conv_size,
                                    norm_eps=config.rms_norm_eps, layer_idx=layer_idx, mode=config.attn_mode)


class GLAForCausalLM(LinAttnForCausalLM):
    config_class = GLAConfig
    _base_model_class = GLAModel


class GLAForSequenceClassification(LinAttnForSequenceClassification):
    config_class = GLAConfig
    _base_model_class = GLAModel
