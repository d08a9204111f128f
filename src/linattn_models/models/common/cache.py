"""The recurrent-state cache: O(1) memory in the sequence length for the linear layers.

Per layer it holds named tensors written by the token mixer: "recurrent" [B, H, K, V] (fp32), the linear
attention normaliser [B, H, K], short-conv states [B, D, W-1]. A hybrid stack's softmax-attention layers
(layers/attention.py) keep their keys and values here too, as named states of their layer that grow by the
new columns each call: "key" / "value" [B, H_kv, S, D] and, once a padded call was cached, "kv_mask" [B, S]
(True = real token). So one cache serves both kinds of layer. It also counts the columns processed
(`get_seq_length`, so `generate` can slice a continued prompt exactly as for an attention cache) and, per
row, the real (non-pad) tokens seen (`positions`, for rotary positions).

It is a `transformers.Cache`, so generate / beam search drive it: `reorder_cache` (beam search),
`batch_repeat_interleave` / `batch_select_indices` and `reset` act on every tensor (KV included: every state
is batch first). A recurrent state cannot
be rolled back, so `crop` raises (assisted/speculative decoding is refused anyway: the models are stateful).
"""
import torch
from transformers.cache_utils import Cache

KV_STATES = ("key", "value", "kv_mask")  # the softmax-attention layers' states (layers/attention.py)


class RecurrentStateLayer:
    """One layer's named state tensors (batch first)."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        self.states = {}

    def __repr__(self):
        return f"RecurrentStateLayer({ {k: tuple(v.shape) for k, v in self.states.items()} })"

    @property
    def is_initialized(self):
        return bool(self.states)

    def _apply(self, fn):
        self.states = {name: fn(x) for name, x in self.states.items()}

    def reorder_cache(self, beam_idx):
        self._apply(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_repeat_interleave(self, repeats):
        self._apply(lambda x: x.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        self._apply(lambda x: x[indices.to(x.device) if torch.is_tensor(indices) else indices])

    def reset(self):
        self.states = {}

    def offload(self):
        pass

    def prefetch(self):
        pass

    def get_seq_length(self):
        raise NotImplementedError

    def get_max_length(self):
        return -1

    def crop(self, tokens_to_remove):
        raise NotImplementedError("a recurrent state cannot be rolled back (crop)")


class LinearAttentionCache(Cache):
    """Cache for the linattn models. Build it with `LinearAttentionCache(config)` (or num_layers=...)."""

    def __init__(self, config=None, num_layers=None, **kwargs):
        if num_layers is None:
            if config is None:
                raise ValueError("LinearAttentionCache needs a config or num_layers")
            num_layers = config.num_hidden_layers
        super().__init__(layers=[RecurrentStateLayer() for _ in range(num_layers)])
        self.seen_tokens = 0
        self.positions = None  # [B] long: real tokens absorbed per row
        # True on the CUDA-graph decode step's static cache: the ops write final states into the held buffers
        self.states_in_place = False

    # --- what the token mixers use ---------------------------------------------------------------------------
    def get_state(self, layer_idx, name):
        return self.layers[layer_idx].states.get(name)

    def set_state(self, layer_idx, name, value):
        self.layers[layer_idx].states[name] = value

    def advance(self, num_columns, real_tokens_per_row):
        """Called once per model forward after all layers ran: count the new columns and real tokens."""
        self.seen_tokens += int(num_columns)
        if self.positions is None:
            self.positions = real_tokens_per_row.clone()
        else:
            self.positions = self.positions + real_tokens_per_row.to(self.positions.device)

    def check_batch_size(self, batch_size):
        """A cache from a call with another batch size (states [B, ...]) cannot continue this input."""
        held = self.batch_size
        if held != -1 and held != batch_size:
            raise ValueError(f"the cache holds states for batch size {held} but the input has batch size "
                             f"{batch_size}: pass a cache only with inputs of the batch it was built for "
                             f"(or a new cache)")

    def nbytes(self, kv=True):
        """Bytes held by the state tensors: independent of the sequence length, except for the attention layers'
        KV ("key", "value", "kv_mask"), which grow with it; kv=False leaves those out."""
        return sum(x.numel() * x.element_size() for layer in self.layers for name, x in layer.states.items()
                   if kv or name not in KV_STATES)

    def kv_length(self, layer_idx):
        """Columns held in an attention layer's KV (0 for a linear layer or an empty cache)."""
        key = self.get_state(layer_idx, "key")
        return 0 if key is None else key.shape[2]

    # --- the transformers.Cache interface ------------------------------------------------------------------------
    def __repr__(self):
        return f"{type(self).__name__}(num_layers={len(self.layers)}, seen_tokens={self.seen_tokens})"

    def update(self, *args, **kwargs):
        raise TypeError("LinearAttentionCache has no update(): its layers write named states (set_state), the "
                        "attention layers' keys/values included")

    def get_seq_length(self, layer_idx=0):
        return self.seen_tokens

    def get_max_length(self, layer_idx=None):
        return -1

    def get_mask_sizes(self, query_length, layer_idx=0):
        return query_length + self.seen_tokens, 0

    def has_previous_state(self, layer_idx=None, state_idx=None):
        return self.seen_tokens > 0

    def reorder_cache(self, beam_idx):
        for layer in self.layers:
            layer.reorder_cache(beam_idx)
        if self.positions is not None:
            self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))

    def batch_repeat_interleave(self, repeats):
        for layer in self.layers:
            layer.batch_repeat_interleave(repeats)
        if self.positions is not None:
            self.positions = self.positions.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices):
        for layer in self.layers:
            layer.batch_select_indices(indices)
        if self.positions is not None:
            self.positions = self.positions[indices]

    def reset(self):
        for layer in self.layers:
            layer.reset()
        self.seen_tokens = 0
        self.positions = None

    def crop(self, tokens_to_remove):
        raise NotImplementedError("LinearAttentionCache cannot crop: a recurrent state cannot be rolled back")

    def activate_past_recording(self):
        raise NotImplementedError("LinearAttentionCache cannot record past states")

    @property
    def batch_size(self):
        if self.positions is not None:
            return self.positions.shape[0]
        for layer in self.layers:
            for x in layer.states.values():
                return x.shape[0]
        return -1

    @property
    def is_compileable(self):
        return False

    @property
    def is_initialized(self):
        return self.seen_tokens > 0

    @property
    def is_croppable(self):
        return False

    @property
    def is_sliding(self):
        return [False] * len(self.layers)

    @property
    def is_linear(self):
        # False on purpose: this cache tracks its sequence length, so generate may slice a continued prompt to
        # the unprocessed tokens as it does for attention caches (with True, 5.24 re-feeds the whole prompt).
        return [False] * len(self.layers)

    @property
    def is_dummy(self):
        return [False] * len(self.layers)
