"""The one-token decode step as a CUDA graph: per-token cost independent of the context, no per-token launch storm.

A linear-attention model's cache is a fixed set of fixed-size tensors, so the step "input_ids [B, 1] + cache ->
logits [B, 1, vocab] + updated cache" has the same shapes at every token and can be captured once (per batch size,
device, dtype and state layout) with torch.cuda.CUDAGraph and replayed. What the graph reads and writes lives in
static buffers owned by a `_StepGraph`:

    ids [B, 1], rope [B, 1] (rotary positions of the new token), positions [B] (cache.positions),
    one buffer per cache state (layer, name): "recurrent", "normalizer", "conv_q", ...

The captured function is the model's own eager forward (LinAttnModel.forward on a throw-away cache whose states
are the static buffers), then lm_head on the last token, then `static.copy_(new)` for every state and for the
positions; the recurrent states skip that copy: the throw-away cache says `states_in_place`, so the mixers call
their ops with final_state_in_place=True and the Triton recurrent kernel writes them into the static buffer directly. So after a replay the static buffers hold the new cache.

Binding a cache: before a replay, every cache tensor that is not the static buffer (the first step after the
prefill, after beam search's reorder_cache, a cache built elsewhere) is copied into it and the cache is re-pointed
at it; in steady-state decoding nothing is copied. A graph's buffers belong to one cache at a time: when another
cache binds, the previous owner (if still alive and still pointing at the buffers) gets its own copies first, so
two caches never share state. A tensor the user took out of a bound cache (cache.get_state) is therefore
updated in place by later steps; clone it to keep a snapshot.

Host-side state stays outside the graph: cache.seen_tokens (a Python int) is advanced after the replay.

Hybrid stacks (config.attn_layers set) decode eagerly: their attention layers' KV cache grows by a column per
token, so the step has no fixed shapes; `ineligible` says so (documented fallback, tested in test_models.py).

The eligibility rules are in `ineligible` (why a call runs eagerly); the model hooks are in modeling_common.py
(LinAttnForCausalLM.forward, enable_decode_graph, reset_decode_graphs). Turned off by
model.enable_decode_graph(False) or the environment variable LINATTN_DECODE_GRAPH=0.
"""
import time
import weakref
from collections import OrderedDict

import torch
from transformers.utils import logging

from ... import env
from .cache import LinearAttentionCache

logger = logging.get_logger(__name__)

ENV_VAR = "LINATTN_DECODE_GRAPH"
MAX_GRAPHS = 8  # graphs kept per model (batch sizes x layouts); the least recently used is dropped
WARMUP_STEPS = 2  # eager runs on a side stream before capture (Triton compiles, cuBLAS picks its kernels)


def env_enabled():
    return env.flag(ENV_VAR)


def ineligible(model, input_ids=None, inputs_embeds=None, cache=None, use_cache=None, labels=None,
               output_hidden_states=None, attention_mask=None, position_ids=None, logits_to_keep=0):
    """None when this LinAttnForCausalLM.forward call may run as a captured decode step, else the reason why not.

    Cheap checks first. The last one reads attention_mask's last column, a host sync; it is only reached for a
    [B, 1] step with a cache and a mask, where the eager path syncs on that same mask anyway (Padding.from_mask).
    A new token that is padding (0 in the last mask column) runs eagerly: pads are packed out of the mixers, which
    a fixed graph does not do.
    """
    if not model.decode_graph_enabled:
        return "disabled (model.enable_decode_graph(False))"
    if not env_enabled():
        return f"disabled ({ENV_VAR}=0)"
    if model.config.attention_layer_indices:
        return ("hybrid stack: softmax-attention layers (config.attn_layers) keep a growing KV cache, which a "
                "fixed graph does not; decoding runs eagerly")
    if input_ids is None or inputs_embeds is not None:
        return "needs input_ids, not inputs_embeds"
    if not torch.is_tensor(input_ids) or input_ids.ndim != 2 or input_ids.shape[1] != 1 or input_ids.shape[0] == 0:
        return "input_ids is not [B, 1]"
    if model.training or torch.is_grad_enabled():
        return "training or grad enabled"
    if not isinstance(cache, LinearAttentionCache) or cache.seen_tokens <= 0:
        return "no populated LinearAttentionCache"
    if not (model.config.use_cache if use_cache is None else use_cache):
        return "use_cache is off"
    if cache.positions is None or cache.positions.shape != (input_ids.shape[0],):
        return "cache batch size differs from input_ids"
    if labels is not None:
        return "labels given"
    if output_hidden_states or (output_hidden_states is None and model.config.output_hidden_states):
        return "output_hidden_states"
    if not isinstance(logits_to_keep, int):
        return "logits_to_keep is a tensor"
    if input_ids.device.type != "cuda":
        return "not on a CUDA device"
    if torch.is_autocast_enabled("cuda"):
        return "autocast is on (a graph would freeze its casts)"
    if env.flag("LINATTN_CHECK_VALUES"):
        return "LINATTN_CHECK_VALUES=1 (value checks sync, which a graph cannot)"
    if len(set(map(str, (getattr(model, "hf_device_map", None) or {}).values()))) > 1:
        return "model split across devices (device_map)"
    weight = model.get_input_embeddings().weight
    if weight.device != input_ids.device:
        return "input_ids on another device than the model"
    if position_ids is not None and (not torch.is_tensor(position_ids) or position_ids.ndim != 2
                                     or position_ids.shape[0] not in (1, input_ids.shape[0])):
        return "position_ids is not [B or 1, T]"
    if attention_mask is not None:
        if (not torch.is_tensor(attention_mask) or attention_mask.ndim != 2
                or attention_mask.shape[0] != input_ids.shape[0]):
            return "attention_mask is not [B, T]"
        if not bool(attention_mask[:, -1].bool().all()):  # host sync (see above)
            return "the new token is padding in some row"
    return None


def _layout(cache):
    """What a graph is specialised on: every state's (layer, name, shape, dtype), in the cache's order."""
    return tuple((i, name, tuple(x.shape), x.dtype) for i, layer in enumerate(cache.layers)
                 for name, x in layer.states.items())


class _LayoutMismatch(RuntimeError):
    pass


class _StepGraph:
    """One captured decode step with its static buffers (see the module docstring)."""

    def __init__(self, model, layout, batch_size, device, pool):
        self.layout = layout
        B = batch_size
        with torch.cuda.device(device):
            self.ids = torch.zeros(B, 1, dtype=torch.long, device=device)
            self.rope = torch.zeros(B, 1, dtype=torch.long, device=device)
            self.positions = torch.zeros(B, dtype=torch.long, device=device)
            self.states = {(i, name): torch.zeros(shape, dtype=dtype, device=device)
                           for i, name, shape, dtype in layout}
            self.num_layers = len(model.model.layers)
            self.owner = None  # weakref to the cache whose tensors are these buffers
            self.copied = set()  # states the step copies into their buffer (the rest are written in place)
            start = time.perf_counter()
            # Warm up on a side stream (PyTorch's recipe), then capture. Warm-up runs mutate the buffers, which is
            # fine: no cache is bound yet, and binding copies the real state in.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._step(model)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.logits = self._step(model)
            torch.cuda.synchronize(device)
            self.capture_seconds = time.perf_counter() - start  # warm-up + capture (reported by the GPU check)

    def _step(self, model):
        """The captured work: the eager one-token forward on a cache made of the static buffers."""
        cache = LinearAttentionCache(num_layers=self.num_layers)
        for (i, name), buf in self.states.items():
            cache.layers[i].states[name] = buf
        cache.seen_tokens, cache.positions = 1, self.positions
        cache.states_in_place = True  # the mixers' ops write their final states into these very buffers
        hidden = model.model(input_ids=self.ids, position_ids=self.rope, cache=cache, use_cache=True,
                             output_hidden_states=False, return_dict=True).last_hidden_state
        logits = model.lm_head(hidden[:, -1:])
        written = {(i, name): x for i, layer in enumerate(cache.layers) for name, x in layer.states.items()}
        if written.keys() != self.states.keys():
            raise _LayoutMismatch(f"the step wrote states {sorted(written)} but the cache held {sorted(self.states)}")
        for key, buf in self.states.items():
            new = written[key]
            if new.shape != buf.shape or new.dtype != buf.dtype:
                raise _LayoutMismatch(f"state {key} came out {tuple(new.shape)} {new.dtype}, "
                                      f"the cache held {tuple(buf.shape)} {buf.dtype}")
            if not (new.data_ptr() == buf.data_ptr() and new.stride() == buf.stride()):  # written in place already
                buf.copy_(new)
                self.copied.add(key)
        self.positions.copy_(cache.positions)
        return logits

    def _release(self, cache):
        """Give `cache` its own copies of whatever of its tensors are still these buffers."""
        for (i, name), buf in self.states.items():
            if cache.layers[i].states.get(name) is buf:
                cache.layers[i].states[name] = buf.clone()
        if cache.positions is self.positions:
            cache.positions = self.positions.clone()

    def bind(self, cache):
        """Make the static buffers hold this cache's state and the cache point at them (copies only what differs)."""
        owner = self.owner() if self.owner is not None else None
        if owner is not None and owner is not cache:
            self._release(owner)
        for (i, name), buf in self.states.items():
            x = cache.layers[i].states[name]
            if x is not buf:
                buf.copy_(x)
                cache.layers[i].states[name] = buf
        if cache.positions is not self.positions:
            self.positions.copy_(cache.positions)
            cache.positions = self.positions
        self.owner = weakref.ref(cache)

    def bound_to(self, cache):
        """Whether every tensor of `cache` already is this graph's buffer (the steady state: nothing to copy)."""
        if cache.positions is not self.positions or self.owner is None or self.owner() is not cache:
            return False
        if sum(len(layer.states) for layer in cache.layers) != len(self.states):
            return False
        layers = cache.layers
        return all(layers[i].states.get(name) is buf for (i, name), buf in self.states.items())

    def run(self, cache, input_ids, position_ids):
        if not self.bound_to(cache):
            self.bind(cache)
        self.ids.copy_(input_ids)
        if position_ids is None:
            self.rope.copy_(self.positions[:, None])  # as the eager path: real tokens seen so far
        else:
            self.rope.copy_(position_ids[:, -1:])
        self.graph.replay()
        cache.seen_tokens += 1
        return self.logits.clone()


class DecodeGraphs:
    """The captured decode steps of one model, keyed by (device, dtype, state layout); used by
    LinAttnForCausalLM.forward. Copies of a model (deepcopy, pickle) start without graphs."""

    def __init__(self):
        self.graphs = OrderedDict()
        self.failed = set()  # keys whose capture failed: they run eagerly
        self.pool = None
        self.last = None  # (key, graph) of the latest step: the fast path skips computing the layout

    def __deepcopy__(self, memo):
        return DecodeGraphs()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __len__(self):
        return len(self.graphs)

    def reset(self):
        self.graphs.clear()
        self.failed.clear()
        self.pool = None
        self.last = None

    def step(self, model, input_ids, cache, position_ids=None):
        """Logits [B, 1, vocab] of one decode step through a graph (capturing it on first use), advancing `cache`;
        None when no graph can serve this call (it then runs eagerly)."""
        weight = model.get_input_embeddings().weight
        if self.last is not None:
            (device, dtype, _), graph = self.last
            if device == weight.device and dtype == weight.dtype and graph.bound_to(cache):
                return graph.run(cache, input_ids, position_ids)
        key = (weight.device, weight.dtype, _layout(cache))
        if key in self.failed:
            return None
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture(model, key, input_ids.shape[0])
            if graph is None:
                return None
        self.graphs.move_to_end(key)
        self.last = (key, graph)
        return graph.run(cache, input_ids, position_ids)

    def _capture(self, model, key, batch_size):
        device, _, layout = key
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()  # one memory pool shared by this model's graphs
        try:
            graph = _StepGraph(model, layout, batch_size, device, self.pool)
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to the eager step, loudly
            self.failed.add(key)
            logger.warning(f"linattn_models: CUDA-graph decode step unavailable for batch {batch_size} "
                           f"({type(e).__name__}: {e}); decoding eagerly")
            return None
        self.graphs[key] = graph
        while len(self.graphs) > MAX_GRAPHS:
            old_key, _ = self.graphs.popitem(last=False)
            if self.last is not None and self.last[0] == old_key:
                self.last = None
        return graph
