"""The model code shared by the three architectures: decoder block, base model, causal LM and
sequence-classification heads. An architecture only supplies its config class and a mixer builder.

Cache naming across transformers versions is decided once here: forward accepts `cache`, `past_key_values`
and `cache_params`, and outputs carry the cache under the field name of the installed transformers
(`cache` in 5.24, `past_key_values` in 5.17), which is what that version's `generate` reads back.
"""
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast,
                                           SequenceClassifierOutputWithPast)
from transformers.utils import logging

from ...layers import DeltaNet, Padding, SoftmaxAttention, TokenMixer
from ...ops.validate import ATTN_MODES
from ...modules import GatedMLP, LearnableFeatureMap, RMSNorm, RotaryEmbedding, ShortConvolution
from ...ops.context_parallel import active_group, piece_offset
from ...ops.fused import cross_entropy_sum
from ...ops.validate import values_checked
from .cache import LinearAttentionCache
from .compat import CACHE_OUTPUT_NAME
from .configuration_common import LinAttnConfig, check_checkpoint_path
from .decode_graph import DecodeGraphs, ineligible

logger = logging.get_logger(__name__)



def resolve_cache(cache=None, past_key_values=None, cache_params=None):
    """Pick the cache from whichever of the three names carried it; only LinearAttentionCache is accepted
    (an empty generic Cache, e.g. a fresh DynamicCache, is replaced by a new LinearAttentionCache)."""
    given = [c for c in (cache, past_key_values, cache_params) if c is not None]
    if not given:
        return None
    if any(c is not given[0] for c in given[1:]):
        raise ValueError("pass the cache once: `cache`, `past_key_values` and `cache_params` got different objects")
    c = given[0]
    if isinstance(c, LinearAttentionCache):
        return c
    if isinstance(c, Cache) and not any(getattr(layer, "is_initialized", False) for layer in c.layers):
        logger.warning_once(f"Replacing an empty {type(c).__name__} by a LinearAttentionCache (these models keep "
                            "recurrent states).")
        return None
    raise TypeError(f"these models need a LinearAttentionCache (from linattn_models.models import "
                    f"LinearAttentionCache), got {type(c).__name__}")


def _check_input_ids(input_ids, vocab_size):
    """[batch, seq] integer ids in [0, vocab_size); the range check syncs, so it runs where values_checked says."""
    if not torch.is_tensor(input_ids) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an int64/int32 tensor, got "
                        f"{input_ids.dtype if torch.is_tensor(input_ids) else type(input_ids).__name__}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if input_ids.numel() and values_checked(input_ids):
        lo, hi = input_ids.min().item(), input_ids.max().item()
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), got values in [{lo}, {hi}]")


def _check_attention_mask(attention_mask, source, shape):
    """A 2-D padding mask with the input's batch size (a mask of another batch would pack the wrong rows)."""
    if not torch.is_tensor(attention_mask):
        raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
    if attention_mask.ndim == 2 and attention_mask.shape[0] != shape[0]:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but {source} has shape "
                         f"{tuple(shape)}: the mask must be [batch, seq] with batch {shape[0]}")


def _check_labels(labels, source, shape, vocab_size, ignore_index=-100, name="labels"):
    """[batch, seq] ids as the input, in [0, vocab_size) or ignore_index. A [T, B] tensor has as many elements
    and would give a wrong loss silently. The range check syncs, so it runs where values_checked says (as for
    input_ids)."""
    if not torch.is_tensor(labels) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64/int32 tensor, got "
                        f"{labels.dtype if torch.is_tensor(labels) else type(labels).__name__}")
    if tuple(labels.shape) != tuple(shape[:2]):
        raise ValueError(f"{name} has shape {tuple(labels.shape)} but {source} has shape {tuple(shape)}: {name} "
                         f"must be [batch, seq] = {tuple(shape[:2])}")
    if labels.numel() and values_checked(labels):
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab_size))
        if bool(bad.any()):
            values = labels[bad]
            raise ValueError(f"{name} must lie in [0, vocab_size={vocab_size}) or be ignore_index={ignore_index}, "
                             f"got values in [{values.min().item()}, {values.max().item()}]")


class LinAttnDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + mixer(norm(x)), then h + MLP(norm(h))."""

    def __init__(self, config, layer_idx, mixer):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = mixer
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, hidden_states, cache=None, padding=None, positions=None, **kwargs):
        h = hidden_states + self.attn(self.attn_norm(hidden_states), cache=cache, padding=padding, positions=positions)
        return h + self.mlp(self.mlp_norm(h))


class LinAttnPreTrainedModel(PreTrainedModel):
    config_class = LinAttnConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LinAttnDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _is_stateful = True
    _supports_cache_class = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, made strict: a backbone tensor missing from the checkpoint, or one in it that the
        model does not have (e.g. GLA's gk_proj in a checkpoint relabelled linattn_retnet), is an error naming it
        (transformers would re-initialise / drop it and only log), as is one of another shape (unless
        ignore_mismatched_sizes=True); a truncated file and a path that does not exist name the path.
        Task heads missing or left over (e.g. `score` when a causal-LM checkpoint is loaded for classification,
        `lm_head` when loaded as the base model) stay allowed."""
        check_checkpoint_path(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        ignore_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        try:
            # mismatched sizes reported in `info`, so that the error below can name them
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  ignore_mismatched_sizes=True, **kwargs)
        except Exception as e:
            if type(e).__name__ == "SafetensorError":
                raise OSError(f"the checkpoint in {pretrained_model_name_or_path} is truncated or corrupt "
                              f"(safetensors: {e})") from e
            raise
        src = pretrained_model_name_or_path
        mismatched = sorted(info.get("mismatched_keys", ()))
        if mismatched and not ignore_mismatched:
            raise RuntimeError(f"{len(mismatched)} tensor(s) in the checkpoint in {src} have another shape than "
                               f"the model's: " + ", ".join(f"{k} (checkpoint {tuple(a)}, model {tuple(b)})"
                                                           for k, a, b in mismatched[:20])
                               + (" ..." if len(mismatched) > 20 else "")
                               + "; pass ignore_mismatched_sizes=True to re-initialise them")
        problems = []
        missing = model._backbone_keys(info.get("missing_keys", ()))
        if missing:
            problems.append(f"{len(missing)} tensor(s) missing from the checkpoint in {src}: {_names(missing)}")
        unexpected = model._backbone_keys(info.get("unexpected_keys", ()))
        if unexpected:
            problems.append(f"{len(unexpected)} tensor(s) in the checkpoint in {src} that {cls.__name__} does not "
                            f"have: {_names(unexpected)} (were they saved from another architecture than "
                            f"config.json's model_type {model.config.model_type!r}?)")
        if problems:
            raise ValueError("; ".join(problems))
        return (model, info) if want_info else model

    def _backbone_keys(self, keys):
        """The keys (model or checkpoint names) of backbone tensors; the rest are task heads."""
        prefix = self.base_model_prefix
        backbone = getattr(self, prefix, self)
        children = {name for name, _ in backbone.named_children()}
        return sorted(k for k in keys if k.split(".", 1)[0] in children | {prefix})

    @classmethod
    def _supports_default_dynamic_cache(cls):
        # generate must not build a DynamicCache: forward creates a LinearAttentionCache when use_cache is on.
        return False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RotaryEmbedding):
            # non-persistent buffer: rebuilt here after meta-device construction (from_pretrained)
            init.copy_(module.inv_freq, module.compute_inv_freq())
        elif isinstance(module, ShortConvolution):
            # PyTorch's default conv init (as fla's short convs), not the N(0, 0.02) of linear layers
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (LearnableFeatureMap, DeltaNet)):
            # their own start values: hedgehog, elementwise_product; Gated DeltaNet's A_log, dt_bias
            for name, value in module.initial_parameters().items():
                init.copy_(getattr(module, name), value)

    def set_attn_mode(self, mode):
        """Force "chunk" or "recurrent" in every mixer ("auto": by length); also sets config.attn_mode."""
        if mode not in ATTN_MODES:
            raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got {mode!r}")
        for m in self.modules():
            if isinstance(m, TokenMixer):
                m.mode = mode
        self.config.attn_mode = mode


def _names(keys, limit=20):
    return ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")


def _output(cls, **fields):
    cache = fields.pop("cache", None)
    fields[CACHE_OUTPUT_NAME] = cache
    return cls(**fields)


def build_attention(config, layer_idx):
    """The softmax-attention mixer of a hybrid stack's layer `layer_idx` (config.attn_layers)."""
    return SoftmaxAttention(config.hidden_size, config.attn_num_heads, num_kv_heads=config.attn_num_kv_heads,
                            window_size=config.attn_window, rope_theta=config.attn_rope_theta, layer_idx=layer_idx,
                            mode=config.attn_mode)


class LinAttnModel(LinAttnPreTrainedModel):
    """Embeddings, N decoder blocks, final norm. Subclasses set `config_class` and `build_mixer`; the layers in
    config.attn_layers get a SoftmaxAttention mixer instead (a hybrid stack)."""

    @staticmethod
    def build_mixer(config, layer_idx):
        raise NotImplementedError

    def __init__(self, config):
        super().__init__(config)
        config.check_sizes()  # again: fields may have been set after the config was made
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        attention = set(config.attention_layer_indices)
        self.layers = nn.ModuleList([LinAttnDecoderLayer(config, i, build_attention(config, i) if i in attention
                                                         else self.build_mixer(config, i))
                                     for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, output_hidden_states=None, return_dict=None, past_key_values=None,
                cache_params=None, **kwargs):
        cache = resolve_cache(cache, past_key_values, cache_params)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            _check_input_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)
        elif inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"inputs_embeds must be [batch, seq, {self.config.hidden_size}], "
                             f"got shape {tuple(inputs_embeds.shape)}")
        B, T = inputs_embeds.shape[:2]
        if B == 0 or T == 0:
            raise ValueError(f"the input holds no tokens (batch {B}, length {T})")
        if attention_mask is not None:
            source, given = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
            _check_attention_mask(attention_mask, source, given.shape)
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and self.gradient_checkpointing and self.training:
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; setting use_cache=False")
            use_cache = False
        if not use_cache:
            cache = None
        elif cache is None:
            cache = LinearAttentionCache(self.config)
        else:
            cache.check_batch_size(B)

        padding = Padding.from_mask(attention_mask, T)
        positions = self._positions(position_ids, cache, padding, B, T, inputs_embeds.device)

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(hidden_states, cache=cache, padding=padding, positions=positions)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if cache is not None:
            real = (padding.mask.sum(1) if padding is not None
                    else torch.full((B,), T, dtype=torch.long, device=inputs_embeds.device))
            cache.advance(T, real)
        out = _output(BaseModelOutputWithPast, last_hidden_state=hidden_states, cache=cache,
                      hidden_states=all_hidden_states)
        return out if return_dict else out.to_tuple()

    @staticmethod
    def _positions(position_ids, cache, padding, B, T, device):
        """Positions for rotary embeddings: explicit position_ids, else real tokens counted per row."""
        if position_ids is not None:
            pid = position_ids[:, -T:].to(device)
            if (padding is None and T > 1 and not torch.compiler.is_compiling()  # a data-dependent branch
                    and bool(((pid[:, 1:] == 0) & (pid[:, :-1] > 0)).any())):
                logger.warning_once("position_ids restart inside a row (packed sequences, e.g. "
                                    "DataCollatorWithFlattening): the recurrent state is NOT reset at those "
                                    "boundaries; pad the batch and pass attention_mask instead")
            return pid.expand(B, T)
        offset = None if cache is None else cache.positions
        split, group = active_group()
        if split and cache is None:  # this rank's piece of a split sequence: positions continue the earlier ones
            offset = torch.full((B,), piece_offset(T, device, group), dtype=torch.long, device=device)
        if padding is None:
            pos = torch.arange(T, device=device).expand(B, T)
        else:
            pos = (padding.mask.long().cumsum(1) - 1).clamp(min=0)
        return pos if offset is None else pos + offset.to(device)[:, None]


class LinAttnForCausalLM(LinAttnPreTrainedModel, GenerationMixin):
    """Causal LM head. On CUDA, one-token decode steps with a populated cache (what `generate` runs after the
    prompt) replay a captured CUDA graph (decode_graph.py; hybrid stacks, with attn_layers, decode eagerly): model.enable_decode_graph(False) or
    LINATTN_DECODE_GRAPH=0 turns that off; graphs are dropped on .to()/.half()/..., on train() and by
    reset_decode_graphs() (call it after replacing parameter tensors, e.g. load_state_dict(assign=True))."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _base_model_class = LinAttnModel

    def __init__(self, config):
        super().__init__(config)
        self.model = self._base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decode_graph_enabled = True
        self._decode_graphs = DecodeGraphs()
        self.post_init()

    # --- CUDA-graph decode step ----------------------------------------------------------------------------------
    def enable_decode_graph(self, enabled=True):
        """Use (default) or not a captured CUDA graph for one-token decode steps; False also drops the graphs."""
        self.decode_graph_enabled = bool(enabled)
        if not enabled:
            self.reset_decode_graphs()
        return self

    def reset_decode_graphs(self):
        """Drop the captured decode graphs (and their memory); the next eligible step captures again."""
        graphs = self.__dict__.get("_decode_graphs")
        if graphs is not None:
            graphs.reset()

    def decode_graph_ineligible(self, input_ids=None, **kwargs):
        """Why a forward call with these arguments would not use a decode graph (None: it would)."""
        return ineligible(self, input_ids=input_ids, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .half(), ... may move or recast parameters that captured graphs point at
        self.reset_decode_graphs()
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode=True):
        if mode:
            self.reset_decode_graphs()
        return super().train(mode)

    def set_attn_mode(self, mode):
        self.reset_decode_graphs()  # the mode is baked into a captured step
        super().set_attn_mode(mode)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, output_hidden_states=None, return_dict=None, logits_to_keep=0,
                past_key_values=None, cache_params=None, **kwargs):
        """labels: [B, T] token ids (-100 = ignored), shifted inside the loss like other causal LMs; extra
        kwargs (num_items_in_batch, ignore_index) go to the loss. logits_to_keep: int (last n positions, 0 =
        all) or an index tensor."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cache = resolve_cache(cache, past_key_values, cache_params)
        source, given = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
        if labels is not None and torch.is_tensor(given):
            for name, lab in (("labels", labels), ("shift_labels", kwargs.get("shift_labels"))):
                if lab is not None:
                    _check_labels(lab, source, given.shape, self.config.vocab_size, kwargs.get("ignore_index", -100),
                                  name)
        if cache is not None and input_ids is not None and input_ids.is_cuda and not torch.compiler.is_compiling() \
                and ineligible(
                self, input_ids=input_ids, inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
                labels=labels, output_hidden_states=output_hidden_states, attention_mask=attention_mask,
                position_ids=position_ids, logits_to_keep=logits_to_keep) is None:
            logits = self._decode_graphs.step(self, input_ids, cache, position_ids)
            if logits is not None:
                result = _output(CausalLMOutputWithPast, logits=logits, cache=cache)
                return result if return_dict else result.to_tuple()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, output_hidden_states=output_hidden_states, return_dict=True)
        hidden_states = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.vocab_size, **kwargs)
        result = _output(CausalLMOutputWithPast, loss=loss, logits=logits, cache=out[CACHE_OUTPUT_NAME]
                         if CACHE_OUTPUT_NAME in out else None, hidden_states=out.hidden_states)
        return result if return_dict else result.to_tuple()


def causal_lm_loss(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None,
                   **kwargs):
    """transformers' ForCausalLMLoss (labels shifted inside, ignore_index left out; the sum over
    num_items_in_batch when given (gradient accumulation), else the mean over counted tokens), computed by
    ops.fused.cross_entropy_sum, which keeps no float32 copy of the logits for the backward."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    target = shift_labels.reshape(-1).to(logits.device)
    total = cross_entropy_sum(logits.reshape(-1, vocab_size), target, ignore_index)
    if num_items_in_batch is None:
        return total / (target != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class LinAttnForSequenceClassification(LinAttnPreTrainedModel):
    """Scores the last real token of each row (from attention_mask, else pad_token_id, else the last)."""

    _base_model_class = LinAttnModel

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = self._base_model_class(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, output_hidden_states=None, return_dict=None, past_key_values=None,
                cache_params=None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=resolve_cache(cache, past_key_values, cache_params), inputs_embeds=inputs_embeds,
                         use_cache=use_cache, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.score(out.last_hidden_state)
        B, T = logits.shape[:2]
        if attention_mask is not None:
            real = attention_mask[:, -T:].bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = input_ids != self.config.pad_token_id
        else:
            real = None
        if real is None:
            last = torch.full((B,), T - 1, device=logits.device)
        else:
            if self.config.pad_token_id is None and attention_mask is None and B > 1:
                warnings.warn("no pad_token_id / attention_mask: scoring the last position of each row")
            last = (T - 1) - real.flip(1).int().argmax(1).to(logits.device)
        pooled = logits[torch.arange(B, device=logits.device), last]
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=pooled, config=self.config, **kwargs)
        result = _output(SequenceClassifierOutputWithPast, loss=loss, logits=pooled,
                         cache=out[CACHE_OUTPUT_NAME] if CACHE_OUTPUT_NAME in out else None,
                         hidden_states=out.hidden_states)
        return result if return_dict else result.to_tuple()
