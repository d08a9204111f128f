"""Convert a flash-linear-attention (fla 0.6.0) checkpoint into one of ours (issue #8).

    linattn_models.convert_fla("fla-gla-1.3b", "gla-1.3b")         # -> "gla-1.3b" (a directory of ours)
    model = linattn_models.convert_fla("fla-gla-1.3b")              # dst_dir=None: the converted model, in memory
    python -m linattn_models.convert SRC_DIR DST_DIR [--dtype bf16]   # same, from the shell

fla model type -> ours: `gla` -> linattn_gla, `retnet` -> linattn_retnet, `linear_attn` ->
linattn_linear_transformer, `delta_net` -> linattn_deltanet, `gated_deltanet` -> linattn_gated_deltanet
(convert_delta.py: those two types' fields and refusals). The conversion is exact or it is refused: every fla
config field is either mapped, known not to change the forward math (kernel choice, fused-kernel switches,
training-loss options), or must hold a value our layers compute identically; anything else, and any tensor
without a counterpart or with the wrong shape, is a ValueError naming it. Field names and defaults are those of
fla 0.6.0's GLAConfig, RetNetConfig, LinearAttentionConfig, DeltaNetConfig and GatedDeltaNetConfig (a field
missing from config.json takes fla's default).
"""
import argparse
import json
import math
import os
import re
import shutil
import sys
import warnings

import torch

from .convert_delta import ATTN_SOURCES as _DELTA_ATTN_SOURCES
from .convert_delta import DELTA_DEFAULTS, delta_mixer_kwargs
from .models.common.configuration_common import FLA_MODEL_TYPES

# fla model type -> our architecture (the key of linattn_models.models.CONFIGS)
ARCHS = {"gla": "gla", "retnet": "retnet", "linear_attn": "linear_transformer", "delta_net": "deltanet",
         "gated_deltanet": "gated_deltanet"}
assert set(ARCHS) == set(FLA_MODEL_TYPES)

# fla 0.6.0 config defaults (configuration_{gla,retnet,linear_attn}.py)
_COMMON = dict(hidden_size=2048, hidden_ratio=4, intermediate_size=None, num_hidden_layers=24, num_kv_heads=None,
               hidden_act="swish", max_position_embeddings=2048, elementwise_affine=True, norm_eps=1e-6, attn=None,
               use_cache=True, pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
               initializer_range=0.02, fuse_norm=True, fuse_swiglu=True, fuse_cross_entropy=True,
               fuse_linear_cross_entropy=False, use_l2warp=False, vocab_size=32000, attnres_block_size=None)
FLA_DEFAULTS = {
    # gate_low_rank_dim / gate_logit_normalizer are not config fields in 0.6.0 (its layer fixes both at 16);
    # older configs carry them, so they are accepted and mapped.
    "gla": dict(_COMMON, expand_k=0.5, expand_v=1.0, num_heads=4, feature_map=None, attn_mode="chunk",
                use_short_conv=False, conv_size=4, use_output_gate=True, clamp_min=None, use_gk=True, use_gv=False,
                gate_low_rank_dim=16, gate_logit_normalizer=16),
    "retnet": dict(_COMMON, hidden_ratio=2, expand_k=1.0, expand_v=2.0, num_heads=8, feature_map=None,
                   attn_mode="chunk", use_short_conv=False, conv_size=4, use_output_gate=True),
    "linear_attn": dict(_COMMON, expand_k=1.0, expand_v=1.0, num_heads=4, feature_map="elementwise_product",
                        attn_mode="fused_chunk", tie_feature_map_qk=False, norm_q=False, norm_k=False,
                        norm_feature_map=False),
    **DELTA_DEFAULTS,
}
# Fields read nowhere below, because they do not change what the model computes: attn_mode (kernel choice),
# fuse_norm (it only renames the gate norm's weight, handled in _ATTN_SOURCES), fuse_swiglu, fuse_cross_entropy,
# fuse_linear_cross_entropy, use_l2warp (training loss), max_position_embeddings (unused by these layers); and
# fields fla 0.6.0 itself ignores: GLA use_gk / use_gv (GLABlock does not pass them to its layer), RetNet
# use_short_conv / conv_size (RetNetBlock does not pass them; its layer then has no convs).

# transformers' own config keys (any version), not part of the architecture
_GENERIC = {"_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "model_type",
            "output_attentions", "output_hidden_states", "return_dict", "use_return_dict", "chunk_size_feed_forward",
            "is_encoder_decoder", "is_decoder", "id2label", "label2id", "problem_type", "tokenizer_class",
            "_commit_hash", "_attn_implementation_autoset", "torchscript", "use_bfloat16", "pruned_heads",
            "tie_encoder_decoder", "add_cross_attention"}
# fla linear_attn feature maps that ours computes identically (same names); the learnable ones carry weights
LA_FEATURE_MAPS = ("elu", "relu", "identity", "hedgehog", "elementwise_product")
LEARNABLE_FEATURE_MAPS = ("hedgehog", "elementwise_product")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def convert_fla(src_dir, dst_dir=None, dtype=None):
    """Convert the fla checkpoint in `src_dir` (config.json + *.safetensors, sharded or not).

    dst_dir: where to save ours (config.json with auto_map, safetensors, and the tokenizer / generation config
    files found in src_dir); returns dst_dir. None: returns the converted ...ForCausalLM instead (eval mode).
    dtype: None keeps the checkpoint's dtype (config `dtype`/`torch_dtype`, else the embedding's), or one of
    "bf16", "fp16", "fp32" or a torch.dtype. Raises ValueError naming any field or tensor it cannot map."""
    src_dir = os.fspath(src_dir)
    if dst_dir is not None and os.path.abspath(dst_dir) == os.path.abspath(src_dir):
        raise ValueError(f"dst_dir must differ from src_dir ({src_dir}): it would overwrite fla's config.json")
    fla_cfg = read_fla_config(src_dir)
    tensors = read_safetensors(src_dir)
    arch = ARCHS[fla_cfg["model_type"]]
    config = our_config(fla_cfg)
    target = _resolve_dtype(dtype, fla_cfg, tensors)
    config.dtype = target

    from accelerate import init_empty_weights

    from .models import model_classes

    # parameters on the meta device (no random init: the checkpoint replaces them); buffers (rotary) stay real
    with init_empty_weights():
        model = model_classes(arch)[2](config)
    expected = model.state_dict()
    state = convert_state_dict(fla_cfg, tensors, {k: tuple(v.shape) for k, v in expected.items()})
    state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    if config.tie_word_embeddings:  # one tensor under both names, so the tie survives assign=True
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"conversion left tensors uninitialised: {', '.join(left)}")
    model.eval()
    if dst_dir is None:
        return model

    dst_dir = os.fspath(dst_dir)
    model.save_pretrained(dst_dir)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src_dir, name)):
            shutil.copy2(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    return dst_dir


def read_fla_config(src_dir):
    """fla's config.json as a dict, completed with fla 0.6.0's defaults; checks the model type."""
    path = os.path.join(src_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"no config.json in {src_dir}: expected an fla checkpoint directory")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    model_type = raw.get("model_type")
    if model_type not in FLA_DEFAULTS:
        hint = " (already one of ours: load it directly)" if str(model_type).startswith("linattn_") else ""
        raise ValueError(f"{path}: model_type {model_type!r} is not an fla model type we convert; expected one of "
                         f"{sorted(FLA_DEFAULTS)}{hint}")
    return dict(FLA_DEFAULTS[model_type], **raw)


def our_config(c):
    """Our config for the fla config dict `c` (as from read_fla_config); ValueError names an unmappable field."""
    fla_type = c["model_type"]
    unknown = sorted(set(c) - set(FLA_DEFAULTS[fla_type]) - _GENERIC)
    if unknown:
        raise ValueError(f"fla config field(s) {', '.join(unknown)} are not fields of fla 0.6.0's {fla_type} config; "
                         f"cannot tell whether they change the model")
    _require(c, "attnres_block_size", (None,), "attention residuals (AttnRes) are not implemented here")
    # hidden_act is both the MLP activation and (GLA, RetNet) the output gate's; ours are swish throughout
    _require(c, "hidden_act", ("swish", "silu"), "our MLP and output gate use swish")
    if "num_kv_heads" in c:  # not a field of delta_net / gated_deltanet
        _require(c, "num_kv_heads", (None, c["num_heads"]), "our layers have one key/value head per query head")
    if fla_type in ("gla", "retnet"):
        _require(c, "feature_map", (None,), "our GLA/RetNet layers apply no feature map to q and k")
        _require(c, "use_output_gate", (True,), "our GLA/RetNet layers always gate the output")
    if fla_type == "gla":
        _require(c, "clamp_min", (None,), "our GLA does not clamp the log gates")
    if fla_type == "linear_attn":
        _require(c, "feature_map", LA_FEATURE_MAPS, "our linear transformer has no such feature map")
        _require(c, "norm_q", (False,), "our linear transformer does not sum-normalise q")
        _require(c, "norm_k", (False,), "our linear transformer does not sum-normalise k")
        if c["norm_feature_map"]:
            warnings.warn("fla's normaliser divides by (q·z + 1e-10), ours by (q·z + 1e-6): outputs differ where "
                          "|q·z| is below ~1e-4", stacklevel=3)

    from .models import CONFIGS
    H = c["num_heads"]
    if fla_type in DELTA_DEFAULTS:
        mixer = delta_mixer_kwargs(c, _require)
    else:
        mixer = dict(num_heads=H, head_k_dim=_width(c, "expand_k") // H, head_v_dim=_width(c, "expand_v") // H,
                     expand_k=c["expand_k"], expand_v=c["expand_v"])
    kwargs = dict(
        mixer, vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
        intermediate_size=_intermediate_size(c), hidden_act="silu",
        rms_norm_eps=c["norm_eps"], initializer_range=c["initializer_range"],
        tie_word_embeddings=c["tie_word_embeddings"], use_cache=c["use_cache"], pad_token_id=c["pad_token_id"],
        bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"], attn_mode="auto")
    if fla_type == "gla":
        kwargs.update(gate_low_rank_dim=c["gate_low_rank_dim"], gate_logit_normalizer=float(c["gate_logit_normalizer"]),
                      use_short_conv=c["use_short_conv"], conv_size=c["conv_size"])
    elif fla_type in DELTA_DEFAULTS:
        pass  # all in `mixer`
    elif fla_type == "retnet":
        kwargs.update(rope_theta=10000.0)  # fla's MultiScaleRetention: RotaryEmbedding(head_k_dim), base 10000
    else:  # fla's LinearAttentionBlock always builds the per-head output RMSNorm (output_norm='rmsnorm')
        # tie_feature_map_qk only matters for maps with weights (fla builds its parameter-free maps either way)
        tie = c["tie_feature_map_qk"] if c["feature_map"] in LEARNABLE_FEATURE_MAPS else True
        kwargs.update(feature_map=c["feature_map"], tie_feature_map_qk=tie,
                      normalize_attention=bool(c["norm_feature_map"]), output_norm=True)
    kwargs.update(_attn_fields(c))
    return CONFIGS[ARCHS[fla_type]](**kwargs)


# fla 0.6.0's attention spec (models/configuration_utils.py): its keys and their defaults
_FLA_ATTN_SPEC = {"layers": None, "num_heads": None, "num_kv_heads": None, "qkv_bias": False, "window_size": None,
                  "rope_theta": 10000.0}


def _attn_fields(c):
    """fla's `attn` (None, one spec, or a list of specs, each {layers, num_heads, num_kv_heads, qkv_bias,
    window_size, rope_theta}) -> our attn_* config fields. fla's attention layer (layers/attn.py as built by
    get_attention) is ours: q/k/v/o_proj without bias, head dim hidden_size / num_heads, rotate-half RoPE with base
    rope_theta from position 0, grouped-query heads, a window of window_size tokens including the current one."""
    attn = c["attn"]
    if attn is None:
        return {}
    specs = [attn] if isinstance(attn, dict) else attn
    if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
        raise ValueError(f"fla config field attn={attn!r} cannot be converted: expected a dict or a list of dicts")
    settings = set()
    for spec in specs:
        unknown = sorted(set(spec) - set(_FLA_ATTN_SPEC))
        if unknown:
            raise ValueError(f"fla config field attn.{unknown[0]} is not a key of fla 0.6.0's attention spec; cannot "
                             "tell whether it changes the model")
        s = dict(_FLA_ATTN_SPEC, **spec)
        if s["layers"] is None or s["num_heads"] is None:
            raise ValueError("fla config field attn needs 'layers' and 'num_heads' in every spec")
        if s["qkv_bias"]:
            raise ValueError("fla config field attn.qkv_bias=True cannot be converted: our attention layers have no "
                             "q/k/v biases (convertible: False)")
        settings.add((s["num_heads"], s["num_kv_heads"] or s["num_heads"], s["window_size"], float(s["rope_theta"])))
    if len(settings) > 1:
        raise ValueError(f"fla config field attn holds specs with different settings {sorted(settings)}: ours has one "
                         "setting for all attention layers")
    heads, kv_heads, window, theta = settings.pop()
    return dict(attn_layers=sorted(i for s in specs for i in s["layers"]), attn_num_heads=heads,
                attn_num_kv_heads=kv_heads, attn_window=window, attn_rope_theta=theta)


def _require(c, field, allowed, why):
    if c[field] not in allowed:
        raise ValueError(f"fla config field {field}={c[field]!r} cannot be converted: {why} "
                         f"(convertible: {', '.join(repr(a) for a in allowed)})")


def _width(c, field):
    """hidden_size * expand_k (or expand_v) as fla rounds it; must split evenly over the heads."""
    width = c["hidden_size"] * c[field]
    if not math.isclose(width, round(width)) or round(width) % c["num_heads"]:
        raise ValueError(f"fla config: hidden_size * {field} = {width} must be an integer divisible by "
                         f"num_heads = {c['num_heads']}")
    return round(width)


def _intermediate_size(c):
    """fla's GatedMLP width: intermediate_size, else 2/3 * hidden_ratio (None: 4) * hidden_size rounded up to 256."""
    if c["intermediate_size"] is not None:
        return int(c["intermediate_size"])
    n = int(c["hidden_size"] * (4 if c["hidden_ratio"] is None else c["hidden_ratio"]) * 2 / 3)
    return 256 * ((n + 255) // 256)


def read_safetensors(src_dir):
    """All tensors of the checkpoint: the shards listed in model.safetensors.index.json, else every *.safetensors."""
    from safetensors.torch import load_file

    index = os.path.join(src_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(n for n in os.listdir(src_dir) if n.endswith(".safetensors"))
    if not files:
        other = [n for n in os.listdir(src_dir) if n.endswith((".bin", ".pt", ".pth"))]
        hint = f" (found {', '.join(other)}: re-save with save_pretrained, which writes safetensors)" if other else ""
        raise ValueError(f"no *.safetensors in {src_dir}{hint}")
    tensors = {}
    for name in files:
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path):
            raise ValueError(f"shard {name} listed in {index} is missing")
        part = load_file(path)
        dup = sorted(set(part) & set(tensors))
        if dup:
            raise ValueError(f"tensor(s) {', '.join(dup[:5])} appear in more than one shard ({name})")
        tensors.update(part)
    return tensors


# Our parameter (inside model.layers.N.attn.) -> the fla names it may come from. Everything else keeps its name,
# except the embedding. fla names the gate norm g_norm_swish_gate when it is fused (fuse_norm and a swish gate).
_ATTN_SOURCES = {
    "g_norm.weight": ("g_norm_swish_gate.weight", "g_norm.weight"),  # GLA, RetNet
    "o_norm.weight": ("norm.weight",),  # linear attention's per-head output norm
}
_ATTN = re.compile(r"(model\.layers\.\d+\.attn\.)(.+)")
# our learnable feature maps: tied `feature_map`, or untied `feature_map_q` / `feature_map_k`
_FEATURE_MAP = re.compile(r"(model\.layers\.\d+\.attn\.)feature_map(_q|_k)?\.(weight|bias)")
# fla's learnable maps hold nn.Linear(K, K) layers (with bias), one set shared by all heads, per q / k map
_FLA_FEATURE_MAP_LAYERS = {"hedgehog": ("layer",), "elementwise_product": ("layer1", "layer2")}


def _sources(name, fla_type):
    if name == "model.embed_tokens.weight":
        return ("model.embeddings.weight",)
    m = _ATTN.fullmatch(name)
    if m:
        table = _DELTA_ATTN_SOURCES if fla_type in DELTA_DEFAULTS else _ATTN_SOURCES
        return tuple(m.group(1) + s for s in table.get(m.group(2), (m.group(2),)))
    return (name,)


def _feature_map_sources(c, m):
    """fla tensor names for our feature map parameter (match of _FEATURE_MAP): one tuple per fla Linear
    layer, each holding the q and/or k names it may come from (tied: either, both must then be equal)."""
    prefix, qk, part = m.groups()
    maps = ("feature_map_q", "feature_map_k") if qk is None else ("feature_map" + qk,)
    return [tuple(f"{prefix}{fm}.{layer}.{part}" for fm in maps) for layer in _FLA_FEATURE_MAP_LAYERS[c["feature_map"]]]


def convert_state_dict(c, tensors, shapes):
    """Our state dict from fla's tensors. shapes: our parameter name -> shape (the target model's state dict).

    Raises ValueError naming fla tensors that are unknown, missing, ambiguous or of the wrong shape."""
    out, used, missing = {}, set(), []
    for name, shape in shapes.items():
        if name == "lm_head.weight" and c["tie_word_embeddings"]:
            continue  # tied to the embedding (fla does not save it; if it did, it must equal the embedding)
        fm = _FEATURE_MAP.fullmatch(name)
        if fm:
            groups = _feature_map_sources(c, fm)
            used.update(s for g in groups for s in g if s in tensors)
            out[name] = _feature_map(c["feature_map"], name, groups, tensors, shape)
            continue
        sources = _sources(name, c["model_type"])
        found = [s for s in sources if s in tensors]
        used.update(found)
        if len(found) > 1:
            raise ValueError(f"fla checkpoint holds both {' and '.join(found)}; expected one of them")
        elif found:
            out[name] = tensors[found[0]]
        elif name.endswith(("g_norm.weight", "o_norm.weight")) and not c.get("elementwise_affine", True):
            out[name] = torch.ones(shape)  # elementwise_affine=False: fla's norm has no weight, i.e. weight 1
        else:
            missing.append(" or ".join(sources))
        if name in out and tuple(out[name].shape) != shape:
            raise ValueError(f"fla tensor {' / '.join(found) or name} has shape {tuple(tensors[found[0]].shape)}; "
                             f"our {name} needs {shape} (for this config)")
    if missing:
        raise ValueError(f"{len(missing)} tensor(s) missing from the fla checkpoint: {', '.join(missing[:10])}"
                         + (" ..." if len(missing) > 10 else ""))
    if c["tie_word_embeddings"] and "lm_head.weight" in tensors:
        used.add("lm_head.weight")
        if not torch.equal(tensors["lm_head.weight"], tensors["model.embeddings.weight"]):
            raise ValueError("fla config has tie_word_embeddings=True but lm_head.weight differs from "
                             "model.embeddings.weight")
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise ValueError(f"fla tensor(s) without a counterpart in our {c['model_type']} model for this config: "
                         f"{', '.join(unknown[:10])}" + (" ..." if len(unknown) > 10 else ""))
    return out


def _feature_map(kind, name, groups, tensors, shape):
    """Our per-head map parameter from fla's Linear(K, K) layers, which all heads share (y = x Wᵀ + b):
      hedgehog: fla φ = softmax([2y, -2y]); ours φ = softmax([y', -y']), y' = x W_h + b_h: W_h = 2 Wᵀ, b_h = 2 b.
      elementwise_product: fla φ = (x W1ᵀ + b1) ⊙ (x W2ᵀ + b2); ours holds both factors in one [K, 2K] weight,
        W_h = [W1ᵀ | W2ᵀ], b_h = [b1 | b2].
    For every head h. groups: per fla layer, the q and/or k names (tied ours: both of fla's maps, which must be
    equal; an fla checkpoint of a tied model may hold only one of them)."""
    part = name.rsplit(".", 1)[1]
    K = shape[1] if part == "weight" else shape[1] // len(groups)  # weight [H, K, n K], bias [H, n K]
    parts = []
    for names in groups:
        found = [n for n in names if n in tensors]
        if not found:
            raise ValueError(f"tensor(s) missing from the fla checkpoint: {' or '.join(names)}")
        a = tensors[found[0]]
        if len(found) == 2 and not torch.equal(a, tensors[found[1]]):
            raise ValueError(f"fla's feature_map_q and feature_map_k differ ({found[0]} != {found[1]}) but the "
                             f"config has tie_feature_map_qk=True: which one q and k share is undefined")
        want = (K, K) if part == "weight" else (K,)
        if tuple(a.shape) != want:
            raise ValueError(f"fla tensor {found[0]} has shape {tuple(a.shape)}; expected {want} (for this config)")
        parts.append(a.T if part == "weight" else a)
    x = torch.cat(parts, dim=-1) * (2 if kind == "hedgehog" else 1)
    if (shape[0], *x.shape) != shape:
        raise ValueError(f"fla feature map {' / '.join(g[0] for g in groups)} gives {tuple(x.shape)} per head; "
                         f"our {name} needs {shape[1:]}")
    return x.expand(shape[0], *x.shape).contiguous()


def _resolve_dtype(dtype, c, tensors):
    if dtype is None:
        name = c.get("dtype") or c.get("torch_dtype")
        if name in DTYPES:
            return DTYPES[name]
        return tensors["model.embeddings.weight"].dtype if "model.embeddings.weight" in tensors else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be None, a torch dtype or one of {sorted(DTYPES)}, got {dtype!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert a flash-linear-attention (fla 0.6.0) checkpoint (model "
                                                 "types gla, retnet, linear_attn, delta_net, gated_deltanet) into "
                                                 "a linattn_models one.")
    parser.add_argument("src_dir", help="fla checkpoint directory (config.json + *.safetensors)")
    parser.add_argument("dst_dir", help="output directory (created)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="cast the weights (default: the checkpoint's dtype)")
    args = parser.parse_args(argv)
    try:
        dst = convert_fla(args.src_dir, args.dst_dir, dtype=args.dtype)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"converted {args.src_dir} -> {dst}; load it with AutoModelForCausalLM.from_pretrained({dst!r}) "
          f"after `import linattn_models`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
