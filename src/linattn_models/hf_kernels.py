"""Run transformers' own Gated DeltaNet models on our kernels: `use_in_transformers()`.

transformers' Qwen3Next (`Qwen3NextForCausalLM`) and OLMo Hybrid (`OlmoHybridForCausalLM`) have a Gated DeltaNet
layer (`Qwen3NextGatedDeltaNet`, `OlmoHybridGatedDeltaNet`) that calls the gated delta rule through names of its
modeling module:

* transformers >= 5.2x: the module-level functions `torch_chunk_gated_delta_rule` (prefill / training) and
  `torch_recurrent_gated_delta_rule` (one-token decode), looked up at call time. They are wrapped by
  `use_kernel_func_from_hub_with_fallback`, which picks fla when installed, else the pure-PyTorch reference
  (that one refuses packed sequences).
* older 5.x / 4.5x: instance attributes `self.chunk_gated_delta_rule` / `self.recurrent_gated_delta_rule`, set in
  `__init__` from the module-level names `chunk_gated_delta_rule` / `fused_recurrent_gated_delta_rule` (fla's, or
  None) with the torch functions as fallback.

`use_in_transformers()` replaces exactly these: the module-level names (whichever exist), the attributes on
layers that already exist, and the attributes of layers built later (the class `__init__` is wrapped). Nothing
else of the model changes (projections, conv, norms, cache). It returns a handle whose `undo()` (or a `with`
block) restores transformers' own functions. Calling it again while patched only updates the backend.

What the layer passes (both models, transformers 5.24): `fn(query, key, value, g=g, beta=beta,
initial_state=state or None, output_final_state=cache is not None, use_qk_l2norm_in_kernel=True,
cu_seqlens=kwargs.pop("cu_seq_lens_q", None), **kwargs)` with q, k [B, T, H_k, K], v [B, T, H_v, V]
(H_v a multiple of H_k: grouped value heads), g, beta [B, T, H_v]; the remaining forward kwargs (flash-attention
style cu_seq_lens_k, max_length_q, ...) ride along and are ignored here. It expects (o [B, T, H_v, V],
final state [B, H_v, K, V] or None).

Packed sequences: the models have no position_ids-based boundary path for the linear layers; they pass
`cu_seq_lens_q` (what `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` makes) as `cu_seqlens` to the
delta rule. Ours honours it (transformers' torch fallback raises). The short convolution before it receives the
same kwargs but ignores them in transformers (it mixes neighbouring sequences at the boundaries), so on the
call-time path (transformers >= 5.2x) `causal_conv1d_fn` is wrapped too: with `cu_seq_lens_q` it convolves each
sequence on its own; without, it calls transformers' function unchanged.
"""
import gc
import importlib
import threading

import torch

__all__ = ["use_in_transformers", "MODELS"]

# model key -> (modeling module, Gated DeltaNet layer class)
MODELS = {
    "qwen3_next": ("transformers.models.qwen3_next.modeling_qwen3_next", "Qwen3NextGatedDeltaNet"),
    "olmo_hybrid": ("transformers.models.olmo_hybrid.modeling_olmo_hybrid", "OlmoHybridGatedDeltaNet"),
}
_CHUNK_NAMES = ("torch_chunk_gated_delta_rule", "chunk_gated_delta_rule")
_RECURRENT_NAMES = ("torch_recurrent_gated_delta_rule", "fused_recurrent_gated_delta_rule")
_ATTRS = {"chunk_gated_delta_rule": "chunk", "recurrent_gated_delta_rule": "recurrent"}
_CONV_NAME = "causal_conv1d_fn"

_lock = threading.Lock()
_settings = {"backend": None}
_patched = {}  # model key -> {"module", "cls", "names": {name: original}, "init": original __init__}


def _prepare(query, key, value, initial_state):
    hk, hv = key.shape[2], value.shape[2]
    if hk != hv:  # grouped value heads: q/k head i serves value heads i*r .. i*r+r-1 (as transformers' fallback)
        if hv % hk:
            raise ValueError(f"value heads ({hv}) must be a multiple of key heads ({hk})")
        query = query.repeat_interleave(hv // hk, dim=2)
        key = key.repeat_interleave(hv // hk, dim=2)
    if initial_state is not None and initial_state.dtype != torch.float32:
        initial_state = initial_state.float()
    return query, key, initial_state


def _run(mode, query, key, value, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens,
         scale):
    from .ops import gated_delta_rule
    query, key, initial_state = _prepare(query, key, value, initial_state)
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dtype not in (torch.int32, torch.int64):
        cu_seqlens = cu_seqlens.long()
    o, state = gated_delta_rule(query, key, value, g, beta, use_qk_l2norm=bool(use_qk_l2norm_in_kernel),
                                scale=scale, initial_state=initial_state,
                                output_final_state=bool(output_final_state), cu_seqlens=cu_seqlens, mode=mode,
                                backend=_settings["backend"])
    return o.to(value.dtype), state


def chunk_gated_delta_rule(query, key, value, g, beta, chunk_size=64, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, cu_seqlens=None, scale=None, **kwargs):
    """Drop-in for transformers' torch_chunk_gated_delta_rule / fla's chunk_gated_delta_rule, on our kernels.
    chunk_size is the kernels' own choice (ignored); other keyword arguments (forward kwargs the layer forwards)
    are ignored."""
    return _run("chunk", query, key, value, g, beta, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                cu_seqlens, scale)


def recurrent_gated_delta_rule(query, key, value, g, beta, initial_state=None, output_final_state=False,
                               use_qk_l2norm_in_kernel=False, cu_seqlens=None, scale=None, **kwargs):
    """Drop-in for transformers' torch_recurrent_gated_delta_rule / fla's fused_recurrent_gated_delta_rule."""
    return _run("recurrent", query, key, value, g, beta, initial_state, output_final_state,
                use_qk_l2norm_in_kernel, cu_seqlens, scale)


_FUNCS = {"chunk": chunk_gated_delta_rule, "recurrent": recurrent_gated_delta_rule}


def _packed_conv(original):
    """transformers' causal_conv1d_fn, but with cu_seq_lens_q (packed rows, batch 1) each sequence on its own."""
    def causal_conv1d_fn(hidden_states, *args, **kwargs):
        cu = kwargs.get("cu_seq_lens_q")
        if cu is None or hidden_states.shape[0] != 1:
            return original(hidden_states, *args, **kwargs)
        kwargs = {k: v for k, v in kwargs.items()
                  if k not in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")}
        bounds = [int(x) for x in cu.tolist()]
        # with a cache the layer prepends the cached conv state: it belongs to the first sequence
        offset = hidden_states.shape[-1] - bounds[-1]
        bounds = [0] + [b + offset for b in bounds[1:]]
        parts = [original(hidden_states[..., s:e], *args, **kwargs) for s, e in zip(bounds[:-1], bounds[1:])]
        return torch.cat(parts, dim=-1)
    causal_conv1d_fn._linattn_original = original
    return causal_conv1d_fn


def _set_attrs(layer):
    for attr, kind in _ATTRS.items():
        if attr in vars(layer):
            if not hasattr(layer, "_linattn_saved"):
                layer._linattn_saved = {}
            layer._linattn_saved.setdefault(attr, vars(layer)[attr])
            setattr(layer, attr, _FUNCS[kind])


def _restore_attrs(layer):
    saved = vars(layer).pop("_linattn_saved", None) or {}
    for attr, fn in saved.items():
        setattr(layer, attr, fn)


def _patch(key):
    module_name, cls_name = MODELS[key]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    names = {}
    for name in _CHUNK_NAMES + _RECURRENT_NAMES:
        if name in vars(module):
            names[name] = vars(module)[name]
            setattr(module, name, _FUNCS["chunk" if name in _CHUNK_NAMES else "recurrent"])
    if callable(vars(module).get(_CONV_NAME)) and "torch_chunk_gated_delta_rule" in names:
        names[_CONV_NAME] = vars(module)[_CONV_NAME]
        setattr(module, _CONV_NAME, _packed_conv(names[_CONV_NAME]))
    original_init = cls.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        _set_attrs(self)
    __init__._linattn_original = original_init
    cls.__init__ = __init__
    for obj in gc.get_objects():  # layers built before the call (instance attributes, older transformers)
        if issubclass(type(obj), cls):
            _set_attrs(obj)
    _patched[key] = {"module": module, "cls": cls, "names": names, "init": original_init}


def _unpatch(key):
    entry = _patched.pop(key)
    module, cls = entry["module"], entry["cls"]
    for name, fn in entry["names"].items():
        setattr(module, name, fn)
    cls.__init__ = entry["init"]
    for obj in gc.get_objects():
        if issubclass(type(obj), cls):
            _restore_attrs(obj)


class Handle:
    """What use_in_transformers returns: `undo()` restores what that call patched (idempotent); also a context
    manager."""

    def __init__(self, keys, previous_backend):
        self.models, self._previous_backend, self._done = tuple(keys), previous_backend, False

    def undo(self):
        with _lock:
            if self._done:
                return
            self._done = True
            for key in self.models:
                if key in _patched:
                    _unpatch(key)
            _settings["backend"] = self._previous_backend

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()

    def __repr__(self):
        return f"<linattn_models.use_in_transformers handle: {list(self.models)}, undone={self._done}>"


def use_in_transformers(models=None, backend=None):
    """Make transformers' own Gated DeltaNet layers (Qwen3Next, OLMo Hybrid) run on linattn_models' kernels.

    Args:
        models: None (every one of MODELS that the installed transformers has), a key ("qwen3_next",
            "olmo_hybrid") or a list of keys; a named model the installed transformers lacks raises ImportError.
        backend: our ops' backend: None (auto / LINATTN_BACKEND), "triton" or "torch".

    Returns:
        a handle; `handle.undo()` (or leaving `with use_in_transformers(): ...`) restores transformers' own path.
        Calling again while patched is a no-op apart from the backend (that call's undo restores the backend only).

    Example:
        >>> import linattn_models
        >>> handle = linattn_models.use_in_transformers()   # before or after building the model
        >>> # model = Qwen3NextForCausalLM(...) / from_pretrained(...): its linear-attention layers use our ops
        >>> handle.undo()
    """
    if backend not in (None, "auto", "triton", "torch"):
        raise ValueError(f"backend must be None, 'auto', 'triton' or 'torch', got {backend!r}")
    explicit = models is not None
    keys = list(MODELS) if models is None else ([models] if isinstance(models, str) else list(models))
    for key in keys:
        if key not in MODELS:
            raise ValueError(f"unknown model {key!r}; known: {sorted(MODELS)}")
    with _lock:
        done = []
        previous_backend = _settings["backend"]
        _settings["backend"] = backend
        for key in keys:
            if key in _patched:
                continue
            try:
                importlib.import_module(MODELS[key][0])
            except ImportError:
                if explicit:
                    raise
                continue
            _patch(key)
            done.append(key)
    return Handle(done, previous_backend)
