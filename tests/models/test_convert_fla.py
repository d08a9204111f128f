"""Converting flash-linear-attention (fla 0.6.0) checkpoints into ours (issues 8, 19), without fla installed.

The fla checkpoints here are written by hand: config.json with fla's field names and defaults, and safetensors
with fla's parameter names and shapes (random values). The expected fla -> ours name table is stated here,
independently of linattn_models.convert, so that a wrong mapping fails."""
import json
import os
import runpy
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import linattn_models
from devices import ROOT
from linattn_models import DeltaNetConfig, GatedDeltaNetConfig, GLAConfig, RetNetConfig
from linattn_models.models.common import CACHE_OUTPUT_NAME

H, D, L, VOCAB = 2, 64, 2, 100  # heads, hidden size, layers, vocab

# config.json as fla 0.6.0's save_pretrained writes it (every field, fla's defaults), at our small size
_COMMON = dict(hidden_size=D, num_hidden_layers=L, num_heads=H, vocab_size=VOCAB, intermediate_size=None,
               num_kv_heads=None, hidden_act="swish", max_position_embeddings=2048, elementwise_affine=True,
               norm_eps=1e-6, attn=None, use_cache=True, pad_token_id=None, bos_token_id=1, eos_token_id=2,
               tie_word_embeddings=False, initializer_range=0.02, fuse_norm=True, fuse_swiglu=True,
               fuse_cross_entropy=True, fuse_linear_cross_entropy=False, use_l2warp=False, attnres_block_size=None,
               dtype="float32", transformers_version="5.24.0")
FLA_CONFIGS = {
    "gla": dict(_COMMON, model_type="gla", architectures=["GLAForCausalLM"], expand_k=0.5, expand_v=1.0,
                hidden_ratio=4, feature_map=None, attn_mode="chunk", use_short_conv=False, conv_size=4,
                use_output_gate=True, clamp_min=None, use_gk=True, use_gv=False),
    "retnet": dict(_COMMON, model_type="retnet", architectures=["RetNetForCausalLM"], expand_k=1.0, expand_v=2.0,
                   hidden_ratio=2, feature_map=None, attn_mode="chunk", use_short_conv=False, conv_size=4,
                   use_output_gate=True),
    "linear_attn": dict(_COMMON, model_type="linear_attn", architectures=["LinearAttentionForCausalLM"],
                        expand_k=1.0, expand_v=1.0, hidden_ratio=4, feature_map="elementwise_product",
                        attn_mode="fused_chunk",
                        tie_feature_map_qk=False, norm_q=False, norm_k=False, norm_feature_map=False),
}
# fla 0.6.0's DeltaNetConfig / GatedDeltaNetConfig: no num_kv_heads, no elementwise_affine
_DELTA = dict({k: v for k, v in _COMMON.items() if k not in ("num_kv_heads", "elementwise_affine")},
              attn_mode="chunk", use_short_conv=True, allow_neg_eigval=False, conv_size=4, hidden_ratio=4)
FLA_CONFIGS.update({
    "delta_net": dict(_DELTA, model_type="delta_net", architectures=["DeltaNetForCausalLM"], expand_k=1.0,
                      expand_v=1.0, use_gate=False, use_beta=True, use_output_norm=True, qk_norm="l2",
                      qk_activation="silu"),
    "gated_deltanet": dict(_DELTA, model_type="gated_deltanet", architectures=["GatedDeltaNetForCausalLM"],
                           expand_v=2.0, use_gate=True, head_dim=16, num_v_heads=None,
                           output_gate_activation="swish"),
})

# fla name -> our name, per layer (prefix model.layers.N.) and for the rest
LAYER = {n: n for n in ("attn_norm.weight", "mlp_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                        "mlp.down_proj.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
                        "attn.o_proj.weight")}
ATTN = {
    "gla": {"attn.g_proj.weight": "attn.g_proj.weight", "attn.gk_proj.0.weight": "attn.gk_proj.0.weight",
            "attn.gk_proj.1.weight": "attn.gk_proj.1.weight", "attn.gk_proj.1.bias": "attn.gk_proj.1.bias",
            "attn.g_norm_swish_gate.weight": "attn.g_norm.weight", "attn.g_norm.weight": "attn.g_norm.weight",
            "attn.q_conv1d.weight": "attn.q_conv1d.weight", "attn.k_conv1d.weight": "attn.k_conv1d.weight",
            "attn.v_conv1d.weight": "attn.v_conv1d.weight"},
    "retnet": {"attn.g_proj.weight": "attn.g_proj.weight", "attn.g_norm_swish_gate.weight": "attn.g_norm.weight"},
    "linear_attn": {"attn.norm.weight": "attn.o_norm.weight"},
}
# DeltaNet / Gated DeltaNet: fla's names, except the output norm o_norm, which is our g_norm when it is gated
_DELTA_NAMES = ("q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight", "b_proj.weight", "g_proj.weight",
                "o_norm.weight")
ATTN["delta_net"] = {f"attn.{n}": f"attn.{n}" for n in _DELTA_NAMES}
ATTN["gated_deltanet"] = {f"attn.{n}": f"attn.{n}" for n in _DELTA_NAMES + ("a_proj.weight", "A_log", "dt_bias")}
GATED_OUTPUT_NORM = {"attn.o_norm.weight": "attn.g_norm.weight"}  # fla's use_gate=True
TOP = {"model.embeddings.weight": "model.embed_tokens.weight", "model.norm.weight": "model.norm.weight",
       "lm_head.weight": "lm_head.weight"}
# fla's learnable linear_attn feature maps (fla 0.6.0 modules/feature_map.py): nn.Linear(K, K) layers with bias,
# one set shared by all heads, in attn.feature_map_q and attn.feature_map_k. Ours: per head, weight [H, K, N] and
# bias [H, N] in attn.feature_map (tie_feature_map_qk=True) or attn.feature_map_q / attn.feature_map_k:
#   hedgehog (fla softmax([2y, -2y]), ours softmax([y, -y])): layer -> weight[h] = 2 Wᵀ, bias[h] = 2 b
#   elementwise_product (φ = (x W1ᵀ + b1) ⊙ (x W2ᵀ + b2)): layer1, layer2 -> weight[h] = [W1ᵀ | W2ᵀ],
#       bias[h] = [b1 | b2]
FLA_FEATURE_MAP_LAYERS = {"hedgehog": ("layer",), "elementwise_product": ("layer1", "layer2")}


def expected_name(c, fla_name):
    if fla_name in TOP:
        return TOP[fla_name]
    _, _, i, rest = fla_name.split(".", 3)
    table = {**LAYER, **ATTN[c["model_type"]], **(GATED_OUTPUT_NORM if c.get("use_gate") else {})}
    return f"model.layers.{i}." + table[rest]


def expected_state(c, tensors):
    """Our name -> expected tensor, for every fla tensor (feature maps transformed as in the table above)."""
    out = {expected_name(c, n): t for n, t in tensors.items() if ".feature_map_" not in n}
    layers = FLA_FEATURE_MAP_LAYERS.get(c["feature_map"] if c["model_type"] == "linear_attn" else None, ())
    scale = 2 if c.get("feature_map") == "hedgehog" else 1
    for i in range(L if layers else 0):
        if attn_spec(c) and i in attn_spec(c)["layers"]:
            continue  # a softmax-attention layer of a hybrid: no feature map
        p = f"model.layers.{i}.attn."
        ours = {"feature_map": "q"} if c["tie_feature_map_qk"] else {"feature_map_q": "q", "feature_map_k": "k"}
        for our, qk in ours.items():
            w = scale * torch.cat([tensors[f"{p}feature_map_{qk}.{n}.weight"].T for n in layers], dim=1)
            b = scale * torch.cat([tensors[f"{p}feature_map_{qk}.{n}.bias"] for n in layers])
            out[f"{p}{our}.weight"], out[f"{p}{our}.bias"] = w.expand(H, *w.shape), b.expand(H, *b.shape)
    return out


def fla_head_dims(c):
    """(heads, head key dim, head value dim) of fla's layer for the config dict c."""
    if c["model_type"] == "gated_deltanet":  # head_dim, and head_dim * expand_v per value head
        return c["num_heads"], c["head_dim"], int(c["head_dim"] * c["expand_v"])
    return c["num_heads"], int(D * c["expand_k"]) // c["num_heads"], int(D * c["expand_v"]) // c["num_heads"]


def attn_spec(c):
    """fla's `attn` as one dict (a list of specs with one setting, as fla allows, merged), or None."""
    spec = c.get("attn")
    if isinstance(spec, list):
        spec = dict(spec[0], layers=[i for s in spec for i in s["layers"]])
    return spec


def fla_shapes(c):
    """fla's parameter names and shapes for the config dict c."""
    t = c["model_type"]
    nh, hk, hv = fla_head_dims(c)
    K, V = nh * hk, nh * hv
    inter = 256 * ((int(D * c["hidden_ratio"] * 2 / 3) + 255) // 256)
    attn = {"q_proj.weight": (K, D), "k_proj.weight": (K, D), "v_proj.weight": (V, D), "o_proj.weight": (D, V)}
    if t in ("gla", "retnet"):
        attn["g_proj.weight"] = (V, D)
        if c["elementwise_affine"]:
            attn["g_norm_swish_gate.weight" if c["fuse_norm"] else "g_norm.weight"] = (V // H,)
    if t == "gla":
        attn.update({"gk_proj.0.weight": (16, D), "gk_proj.1.weight": (K, 16), "gk_proj.1.bias": (K,)})
        if c["use_short_conv"]:
            attn.update({"q_conv1d.weight": (K, 1, 4), "k_conv1d.weight": (K, 1, 4), "v_conv1d.weight": (V, 1, 4)})
    if t in ("delta_net", "gated_deltanet"):
        W = c["conv_size"]
        attn.update({"q_conv1d.weight": (K, 1, W), "k_conv1d.weight": (K, 1, W), "v_conv1d.weight": (V, 1, W),
                     "b_proj.weight": (nh, D), "o_norm.weight": (hv,)})
        if c["use_gate"]:
            attn["g_proj.weight"] = (V, D)
    if t == "gated_deltanet":
        attn.update({"a_proj.weight": (nh, D), "A_log": (nh,), "dt_bias": (nh,)})
    if t == "linear_attn":
        attn["norm.weight"] = (V // H,)
        for layer in FLA_FEATURE_MAP_LAYERS.get(c["feature_map"], ()):
            for qk in "qk":
                attn[f"feature_map_{qk}.{layer}.weight"] = (K // H, K // H)
                attn[f"feature_map_{qk}.{layer}.bias"] = (K // H,)
    shapes = {"model.embeddings.weight": (VOCAB, D), "model.norm.weight": (D,)}
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (VOCAB, D)
    spec = attn_spec(c)
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({p + "attn_norm.weight": (D,), p + "mlp_norm.weight": (D,),
                       p + "mlp.gate_proj.weight": (inter, D), p + "mlp.up_proj.weight": (inter, D),
                       p + "mlp.down_proj.weight": (D, inter)})
        if spec and i in spec["layers"]:  # fla's softmax attention (layers/attn.py): head dim D / num_heads
            kv = (spec.get("num_kv_heads") or spec["num_heads"]) * (D // spec["num_heads"])
            mixer = {"q_proj.weight": (D, D), "k_proj.weight": (kv, D), "v_proj.weight": (kv, D),
                     "o_proj.weight": (D, D)}
        else:
            mixer = attn
        shapes.update({p + "attn." + n: s for n, s in mixer.items()})
    return shapes


def write_fla(path, fla_type, tensors=None, shards=1, **overrides):
    """An fla-style checkpoint directory; returns (path, config dict, tensors)."""
    c = dict(FLA_CONFIGS[fla_type], **overrides)
    if tensors is None:
        g = torch.Generator().manual_seed(0)
        tensors = {n: torch.randn(s, generator=g) * 0.1 for n, s in fla_shapes(c).items()}
        if c.get("tie_feature_map_qk"):  # fla's tied q/k feature map: one module under both names (equal tensors)
            for n in [n for n in tensors if "feature_map_k" in n]:
                tensors[n] = tensors[n.replace("feature_map_k", "feature_map_q")].clone()
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(c, f)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            save_file(part, os.path.join(path, fname), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, fname))
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return str(path), c, tensors


@pytest.mark.parametrize("fla_type", ["gla", "retnet", "linear_attn", "gated_deltanet"])
def test_hybrid_attention_layers_convert(tmp_path, fla_type):
    """fla's `attn` spec -> our attn_* fields, its attention layers' q/k/v/o_proj placed as they are (every tensor
    of ours filled), for every model type that has the field."""
    spec = {"layers": [0], "num_heads": 4, "num_kv_heads": 1, "window_size": 3, "rope_theta": 2000.0}
    src, c, tensors = write_fla(tmp_path / "fla", fla_type, attn=spec)
    model = AutoModelForCausalLM.from_pretrained(linattn_models.convert_fla(src, tmp_path / "ours"))
    cfg = model.config
    assert (cfg.attn_layers, cfg.attn_num_heads, cfg.attn_num_kv_heads, cfg.attn_window, cfg.attn_rope_theta) == \
        ([0], 4, 1, 3, 2000.0)
    assert tuple(model.state_dict()["model.layers.0.attn.k_proj.weight"].shape) == (D // 4, D)
    check_placed(c, tensors, model.state_dict())
    assert set(expected_state(c, tensors)) == set(model.state_dict())
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, VOCAB, (2, 9))).logits).all()


def check_placed(c, tensors, state):
    for ours, t in expected_state(c, tensors).items():
        assert torch.equal(state[ours].float(), t.float()), f"{ours} is not what the fla tensors give"


@pytest.mark.parametrize("fla_type,our_class", [("gla", "GLAForCausalLM"), ("retnet", "RetNetForCausalLM"),
                                                ("linear_attn", "LinearTransformerForCausalLM"),
                                                ("delta_net", "DeltaNetForCausalLM"),
                                                ("gated_deltanet", "GatedDeltaNetForCausalLM")])
def test_convert_load_and_run(tmp_path, fla_type, our_class):
    src, c, tensors = write_fla(tmp_path / "fla", fla_type)
    in_memory = linattn_models.convert_fla(src)
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 2048}, f)
    dst = linattn_models.convert_fla(src, tmp_path / "ours")
    assert os.path.isfile(os.path.join(dst, "tokenizer_config.json"))
    model = AutoModelForCausalLM.from_pretrained(dst)
    assert type(model).__name__ == our_class
    cfg = model.config
    assert (cfg.num_heads, cfg.head_k_dim, cfg.head_v_dim) == fla_head_dims(c)
    assert cfg.intermediate_size == 256 and cfg.rms_norm_eps == 1e-6 and not cfg.tie_word_embeddings
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, None)
    with open(os.path.join(dst, "config.json")) as f:
        assert "auto_map" in json.load(f)
    if fla_type == "linear_attn":  # fla's default: elementwise_product, separate q and k maps
        assert (cfg.feature_map, cfg.tie_feature_map_qk, cfg.normalize_attention) == ("elementwise_product", False,
                                                                                      False)
    state = model.state_dict()
    check_placed(c, tensors, state)
    assert set(expected_state(c, tensors)) == set(state)  # nothing of ours left unfilled
    if fla_type in ("delta_net", "gated_deltanet"):  # fla's defaults: DeltaNet ungated, Gated DeltaNet gated
        assert cfg.use_output_gate == (fla_type == "gated_deltanet") and not cfg.allow_neg_eigval
        assert cfg.use_short_conv and cfg.conv_size == 4
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        logits = model(ids).logits
        assert torch.equal(logits, in_memory(ids).logits)  # saved and loaded: the same model
    assert logits.shape == (2, 12, VOCAB) and torch.isfinite(logits).all()


@pytest.mark.parametrize("overrides", [dict(use_short_conv=True, fuse_norm=False), dict(elementwise_affine=False),
                                       dict(tie_word_embeddings=True)])
def test_gla_variants(tmp_path, overrides):
    src, c, tensors = write_fla(tmp_path, "gla", **overrides)
    model = linattn_models.convert_fla(src)  # dst_dir=None: the model itself
    state = model.state_dict()
    check_placed(c, tensors, state)
    assert model.config.use_short_conv == c["use_short_conv"]
    if not c["elementwise_affine"]:  # fla's gate norm has no weight: ours gets ones
        assert torch.equal(state["model.layers.1.attn.g_norm.weight"], torch.ones(D // H))
    if c["tie_word_embeddings"]:
        assert model.config.tie_word_embeddings
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def fla_feature_map(kind, tensors, prefix, x):
    """fla 0.6.0's map on x [..., H, K], from its formulas (one set of Linear layers shared by all heads)."""
    def linear(n):
        return x @ tensors[f"{prefix}.{n}.weight"].T + tensors[f"{prefix}.{n}.bias"]
    if kind == "hedgehog":
        y = 2 * linear("layer")
        return torch.cat([y, -y], -1).softmax(-1)
    return linear("layer1") * linear("layer2")


@pytest.mark.parametrize("kind", ["elementwise_product", "hedgehog"])
@pytest.mark.parametrize("tie", [False, True])
def test_linear_attn_learnable_feature_maps(tmp_path, kind, tie):
    src, c, tensors = write_fla(tmp_path, "linear_attn", feature_map=kind, tie_feature_map_qk=tie)
    model = linattn_models.convert_fla(src)
    assert (model.config.feature_map, model.config.tie_feature_map_qk) == (kind, tie)
    check_placed(c, tensors, model.state_dict())
    attn = model.model.layers[1].attn
    x = torch.randn(3, 5, H, D // H)
    for qk in "qk":
        fm = attn.feature_map if tie else getattr(attn, f"feature_map_{qk}")
        want = fla_feature_map(kind, tensors, f"model.layers.1.attn.feature_map_{qk}", x)
        torch.testing.assert_close(fm(x), want)
    if not tie:  # the converted q and k maps are really different
        assert not torch.allclose(attn.feature_map_q(x), attn.feature_map_k(x))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, VOCAB, (2, 12))).logits).all()


def test_linear_attn_tied_feature_map_names(tmp_path):
    """fla's tied map is one module under two names: a checkpoint may hold both (equal) or only one of them."""
    _, c, tensors = write_fla(tmp_path / "a", "linear_attn", tie_feature_map_qk=True)
    only_q = {n: t for n, t in tensors.items() if "feature_map_k" not in n}
    src, _, _ = write_fla(tmp_path / "b", "linear_attn", tensors=only_q, tie_feature_map_qk=True)
    check_placed(c, only_q, linattn_models.convert_fla(src).state_dict())
    tensors["model.layers.1.attn.feature_map_k.layer2.bias"] += 1  # tied, yet different: refused, named
    src, _, _ = write_fla(tmp_path / "c", "linear_attn", tensors=tensors, tie_feature_map_qk=True)
    with pytest.raises(ValueError, match=r"feature_map_q\.layer2\.bias != .*feature_map_k.*tie_feature_map_qk"):
        linattn_models.convert_fla(src)
    # untied, a map missing: named
    _, _, tensors = write_fla(tmp_path / "d", "linear_attn")
    del tensors["model.layers.0.attn.feature_map_k.layer1.weight"]
    src, _, _ = write_fla(tmp_path / "d", "linear_attn", tensors=tensors)
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.0\.attn\.feature_map_k\.layer1\.weight"):
        linattn_models.convert_fla(src)


def test_linear_attn_normaliser_warns(tmp_path):
    with pytest.warns(UserWarning, match="1e-10"):  # fla's normaliser epsilon differs from ours: said, not hidden
        src, _, _ = write_fla(tmp_path, "linear_attn", feature_map="elu", norm_feature_map=True)
        model = linattn_models.convert_fla(src)
    assert model.config.feature_map == "elu" and model.config.normalize_attention
    assert model.config.tie_feature_map_qk  # fla's tie_feature_map_qk=False means nothing for a map without weights


@pytest.mark.parametrize("fla_type,overrides", [
    ("delta_net", dict(use_gate=True)), ("delta_net", dict(allow_neg_eigval=True, use_output_norm=False)),
    ("delta_net", dict(expand_k=0.5, expand_v=2.0, conv_size=3, tie_word_embeddings=True)),
    ("gated_deltanet", dict(use_gate=False, output_gate_activation="sigmoid")),  # no gate: its activation unused
    ("gated_deltanet", dict(allow_neg_eigval=True, output_gate_activation="silu", num_v_heads=H)),
    ("gated_deltanet", dict(head_dim=32, expand_v=1.5, conv_size=2))])
def test_delta_variants(tmp_path, fla_type, overrides):
    src, c, tensors = write_fla(tmp_path, fla_type, **overrides)
    model = linattn_models.convert_fla(src)
    cfg = model.config
    assert (cfg.num_heads, cfg.head_k_dim, cfg.head_v_dim) == fla_head_dims(c)
    assert (cfg.use_output_gate, cfg.allow_neg_eigval) == (c["use_gate"], c["allow_neg_eigval"])
    assert cfg.conv_size == c["conv_size"] and cfg.tie_word_embeddings == c["tie_word_embeddings"]
    state = model.state_dict()
    check_placed(c, tensors, state)
    assert set(expected_state(c, tensors)) | {"lm_head.weight"} == set(state)
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():  # cached decoding gives the full forward's logits (the ungated output norm included)
        full = model(ids).logits
        out = model(ids[:, :7], use_cache=True)
        steps = [out.logits]
        for i in range(7, 10):
            out = model(ids[:, i:i + 1], use_cache=True, **{CACHE_OUTPUT_NAME: out[CACHE_OUTPUT_NAME]})
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [DeltaNetConfig, GatedDeltaNetConfig])
def test_delta_config_options(tmp_path, cls):
    """The two fields the conversion needs: defaults unchanged (gated, β = sigmoid), checked, saved and loaded."""
    assert (cls().use_output_gate, cls().allow_neg_eigval) == (True, False)
    for field in ("use_output_gate", "allow_neg_eigval"):
        with pytest.raises(ValueError, match=f"{field} must be True or False"):
            cls(**{field: "no"})
    cls(use_output_gate=False, allow_neg_eigval=True).save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert (loaded.use_output_gate, loaded.allow_neg_eigval) == (False, True)


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def fla_delta_mixer(c, t, p, x):
    """fla 0.6.0's DeltaNet / GatedDeltaNet layer (layers/delta_net.py, layers/gated_deltanet.py) on x [B, T, D],
    from its parameter names `t[p + name]`, with the delta rule run token by token."""
    B, T, _ = x.shape
    nh, hk, hv = fla_head_dims(c)

    def short_conv(y, w):  # causal depthwise conv over time, taps w [C, 1, W] (w[:, 0, -1] on the current token)
        W = w.shape[-1]
        out = torch.zeros_like(y)
        for j in range(W):
            shift = W - 1 - j
            out[:, shift:] += y[:, :T - shift] * w[:, 0, j]
        return F.silu(out)

    def l2(y):
        return y * torch.rsqrt(y.pow(2).sum(-1, keepdim=True) + 1e-6)

    q = l2(short_conv(x @ t[p + "q_proj.weight"].T, t[p + "q_conv1d.weight"]).view(B, T, nh, hk))
    k = l2(short_conv(x @ t[p + "k_proj.weight"].T, t[p + "k_conv1d.weight"]).view(B, T, nh, hk))
    v = short_conv(x @ t[p + "v_proj.weight"].T, t[p + "v_conv1d.weight"]).view(B, T, nh, hv)
    beta = torch.sigmoid(x @ t[p + "b_proj.weight"].T) * (2 if c["allow_neg_eigval"] else 1)  # [B, T, H]
    if c["model_type"] == "gated_deltanet":
        decay = torch.exp(-t[p + "A_log"].exp() * F.softplus(x @ t[p + "a_proj.weight"].T + t[p + "dt_bias"]))
    else:
        decay = torch.ones_like(beta)
    S = x.new_zeros(B, nh, hk, hv)
    outs = []
    for i in range(T):
        S = decay[:, i, :, None, None] * S
        err = v[:, i] - torch.einsum("bhk,bhkv->bhv", k[:, i], S)  # v_t - S^T k_t
        S = S + beta[:, i, :, None, None] * k[:, i, :, :, None] * err[:, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, i] * hk ** -0.5, S))
    o = rms(torch.stack(outs, 1), t[p + "o_norm.weight"], c["norm_eps"])
    if c["use_gate"]:
        o = o * F.silu(x @ t[p + "g_proj.weight"].T).view(B, T, nh, hv)
    return o.reshape(B, T, nh * hv) @ t[p + "o_proj.weight"].T


def fla_attention(spec, t, p, x):
    """fla 0.6.0's softmax attention layer (layers/attn.py) on x [B, T, D]: no biases, head dim D / num_heads,
    rotate-half RoPE (base rope_theta) from position 0, query head h reading key/value head h // (H / H_kv),
    causal, a window of window_size tokens including the current one; written out with an explicit mask."""
    B, T, _ = x.shape
    Hq = spec["num_heads"]
    Hk = spec.get("num_kv_heads") or Hq
    hd = D // Hq
    q = (x @ t[p + "q_proj.weight"].T).view(B, T, Hq, hd)
    k = (x @ t[p + "k_proj.weight"].T).view(B, T, Hk, hd)
    v = (x @ t[p + "v_proj.weight"].T).view(B, T, Hk, hd)
    inv = spec.get("rope_theta", 10000.0) ** -(torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]  # [T, hd / 2]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[None, :, None], torch.cat([ang.sin()] * 2, -1)[None, :, None]

    def rope(y):
        return y * cos + torch.cat([-y[..., hd // 2:], y[..., :hd // 2]], -1) * sin

    q, k = rope(q), rope(k).repeat_interleave(Hq // Hk, 2)
    v = v.repeat_interleave(Hq // Hk, 2)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = j <= i
    if spec.get("window_size") is not None:
        allowed = allowed & (i - j < spec["window_size"])
    s = torch.einsum("bthd,bshd->bhts", q, k) / hd ** 0.5
    a = s.masked_fill(~allowed, float("-inf")).softmax(-1)
    return torch.einsum("bhts,bshd->bthd", a, v).reshape(B, T, D) @ t[p + "o_proj.weight"].T


def fla_delta_logits(c, t, ids):
    """fla's DeltaNetForCausalLM / GatedDeltaNetForCausalLM: pre-norm blocks (attn_norm, mixer, residual,
    mlp_norm, SwiGLU GatedMLP, residual), the final norm and the LM head; the layers in c["attn"]["layers"]
    (a hybrid) with fla's softmax attention as the mixer."""
    eps = c["norm_eps"]
    x = t["model.embeddings.weight"][ids]
    spec = attn_spec(c)
    for i in range(L):
        p = f"model.layers.{i}."
        mixer = (lambda *a: fla_attention(spec, *a)) if spec and i in spec["layers"] else \
            (lambda *a: fla_delta_mixer(c, *a))
        x = x + mixer(t, p + "attn.", rms(x, t[p + "attn_norm.weight"], eps))
        h = rms(x, t[p + "mlp_norm.weight"], eps)
        h = F.silu(h @ t[p + "mlp.gate_proj.weight"].T) * (h @ t[p + "mlp.up_proj.weight"].T)
        x = x + h @ t[p + "mlp.down_proj.weight"].T
    head = t["model.embeddings.weight" if c["tie_word_embeddings"] else "lm_head.weight"]
    return rms(x, t["model.norm.weight"], eps) @ head.T


@pytest.mark.parametrize("fla_type,overrides", [
    ("delta_net", dict()), ("delta_net", dict(use_gate=True, allow_neg_eigval=True)),
    ("gated_deltanet", dict()), ("gated_deltanet", dict(use_gate=False, allow_neg_eigval=True, conv_size=3)),
    ("gated_deltanet", dict(num_heads=3, head_dim=24, expand_v=1.5)),  # 3 heads of 24 in a hidden size of 64
    # hybrids: fla's softmax attention in layer 1 (grouped-query, a window, another rotary base) or layer 0
    ("gated_deltanet", dict(attn={"layers": [1], "num_heads": 4, "num_kv_heads": 2, "window_size": 7,
                                  "rope_theta": 500.0})),
    ("delta_net", dict(attn=[{"layers": [0], "num_heads": 2, "qkv_bias": False}]))])
def test_delta_logits_match_fla_math(tmp_path, fla_type, overrides):
    """The converted model (float64) against fla's forward written out above, at 12 tokens (our recurrent mode)
    and 40 (chunked)."""
    c = dict(FLA_CONFIGS[fla_type], **overrides)
    g = torch.Generator().manual_seed(1)
    tensors = {n: torch.randn(s, generator=g) * 0.2 for n, s in fla_shapes(c).items()}
    for n in tensors:
        if n.endswith("norm.weight"):
            tensors[n] = 1 + tensors[n]
        elif n.endswith("A_log"):  # decays e^g of about 0.8 .. 0.95
            tensors[n] = tensors[n] - 1.5
    src, c, tensors = write_fla(tmp_path, fla_type, tensors=tensors, **overrides)
    model = linattn_models.convert_fla(src).double()
    t = {n: v.double() for n, v in tensors.items()}
    for T in (12, 40):
        ids = torch.randint(0, VOCAB, (2, T), generator=g)
        with torch.no_grad():
            got = model(ids).logits
        want = fla_delta_logits(c, t, ids)
        assert want.abs().max() > 0.5  # not a degenerate check
        # attention layers: our rotary frequencies are an fp32 table (cast to fp64 by .double()), fla's here fp64
        tol = 1e-6 if c.get("attn") else 1e-9
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("fla_type,field,value", [
    ("gla", "feature_map", "relu"), ("gla", "clamp_min", -5.0), ("gla", "use_output_gate", False),
    ("gla", "num_kv_heads", 1), ("gla", "hidden_act", "powlu"), ("gla", "attn", {"layers": [1], "num_heads": 2, "qkv_bias": True}),
    ("gla", "attnres_block_size", 2), ("gla", "expand_k", 0.3), ("gla", "some_new_option", 1),
    ("retnet", "feature_map", "elu"), ("retnet", "use_output_gate", False),
    ("linear_attn", "feature_map", "t2r"), ("linear_attn", "feature_map", "dpfp"),
    ("linear_attn", "norm_q", True), ("linear_attn", "norm_k", True),
    ("delta_net", "use_short_conv", False), ("delta_net", "qk_activation", "relu"), ("delta_net", "qk_norm", "sum"),
    ("delta_net", "use_beta", False), ("delta_net", "attn", {"layers": [1], "num_heads": 2, "qk_norm": True}),
    ("delta_net", "attnres_block_size", 2), ("delta_net", "hidden_act", "relu"), ("delta_net", "expand_k", 0.3),
    ("delta_net", "num_kv_heads", 1), ("delta_net", "elementwise_affine", False),
    ("gated_deltanet", "num_v_heads", 2 * H), ("gated_deltanet", "output_gate_activation", "sigmoid"),
    ("gated_deltanet", "use_short_conv", False),
    ("gated_deltanet", "attn", [{"layers": [0], "num_heads": 2}, {"layers": [1], "num_heads": 4}]),
    ("gated_deltanet", "expand_v", 0.3), ("gated_deltanet", "expand_k", 1.0)])
def test_unconvertible_config_is_named(tmp_path, fla_type, field, value):
    _, _, tensors = write_fla(tmp_path, fla_type)
    src, _, _ = write_fla(tmp_path, fla_type, tensors=tensors, **{field: value})
    with pytest.raises(ValueError, match=field):
        linattn_models.convert_fla(src, tmp_path / "ours")
    assert not os.path.exists(tmp_path / "ours")


def test_tensor_errors_are_named(tmp_path):
    _, _, good = write_fla(tmp_path, "gla")
    cases = [({**good, "model.layers.0.attn.extra.weight": torch.zeros(2)}, r"model\.layers\.0\.attn\.extra\.weight"),
             ({k: v for k, v in good.items() if k != "model.layers.1.attn.k_proj.weight"},
              r"missing.*model\.layers\.1\.attn\.k_proj\.weight"),
             ({**good, "model.layers.0.attn.q_proj.weight": torch.zeros(8, D)},
              r"model\.layers\.0\.attn\.q_proj\.weight has shape \(8, 64\)"),
             ({**good, "model.layers.0.attn.g_norm.weight": torch.ones(D // H)}, "g_norm_swish_gate.weight and")]
    for tensors, message in cases:
        src, _, _ = write_fla(tmp_path, "gla", tensors=tensors)
        with pytest.raises(ValueError, match=message):
            linattn_models.convert_fla(src)


def test_delta_tensor_errors_are_named(tmp_path):
    _, _, good = write_fla(tmp_path, "gated_deltanet")
    cases = [({k: v for k, v in good.items() if k != "model.layers.1.attn.A_log"},
              r"missing.*model\.layers\.1\.attn\.A_log"),
             ({**good, "model.layers.0.attn.q_conv1d.weight": torch.zeros(2 * 16, 1, 3)},
              r"model\.layers\.0\.attn\.q_conv1d\.weight has shape \(32, 1, 3\)"),
             ({**good, "model.layers.0.attn.q_conv1d.bias": torch.zeros(2 * 16)},  # fla's conv_bias=True
              r"without a counterpart.*model\.layers\.0\.attn\.q_conv1d\.bias")]
    for tensors, message in cases:
        src, _, _ = write_fla(tmp_path, "gated_deltanet", tensors=tensors)
        with pytest.raises(ValueError, match=message):
            linattn_models.convert_fla(src)
    # an ungated config with the gate's projection: the tensor is named
    _, _, gated = write_fla(tmp_path / "d", "delta_net", use_gate=True)
    src, _, _ = write_fla(tmp_path / "d", "delta_net", tensors=gated)
    with pytest.raises(ValueError, match=r"without a counterpart.*model\.layers\.0\.attn\.g_proj\.weight"):
        linattn_models.convert_fla(src)


def test_sharded_checkpoint_and_dtype(tmp_path):
    src, _, tensors = write_fla(tmp_path / "fla", "retnet", shards=3)
    assert len([n for n in os.listdir(src) if n.endswith(".safetensors")]) == 3
    dst = linattn_models.convert_fla(src, tmp_path / "ours", dtype="bf16")
    state = load_file(os.path.join(dst, "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    check_placed(FLA_CONFIGS["retnet"], {k: v.bfloat16() for k, v in tensors.items()}, state)
    assert AutoModelForCausalLM.from_pretrained(dst).config.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        linattn_models.convert_fla(src, dtype="int8")
    os.remove(os.path.join(src, "model-00002-of-00003.safetensors"))
    with pytest.raises(ValueError, match="model-00002-of-00003.safetensors"):
        linattn_models.convert_fla(src)


def test_loading_an_fla_dir_says_convert(tmp_path):
    gla, _, _ = write_fla(tmp_path / "gla", "gla")
    retnet, _, _ = write_fla(tmp_path / "retnet", "retnet")
    for load in (GLAConfig.from_pretrained, linattn_models.GLAForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match=r"fla\) checkpoint.*\n.*linattn_models\.convert " + str(gla)):
            load(gla)
    with pytest.raises(ValueError, match="convert"):
        RetNetConfig.from_pretrained(retnet)
    for fla_type, cls in (("delta_net", DeltaNetConfig), ("gated_deltanet", GatedDeltaNetConfig)):
        src, _, _ = write_fla(tmp_path / fla_type, fla_type)
        with pytest.raises(ValueError, match=f"model_type '{fla_type}'.*\n.*linattn_models\\.convert"):
            cls.from_pretrained(src)


def test_auto_loading_an_fla_dir_says_convert(tmp_path):
    """Without fla imported, fla's model types hold our placeholders (fla's exist_ok=True registration replaces
    them when it is imported later): the Auto classes name the conversion, not 'unrecognized model type'."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    if not CONFIG_MAPPING["linear_attn"].__module__.startswith("linattn_models"):
        pytest.skip("fla is imported in this process: its own configs own these model types")
    for fla_type in FLA_CONFIGS:
        src, _, _ = write_fla(tmp_path / fla_type, fla_type)
        for load in (AutoConfig.from_pretrained, AutoModelForCausalLM.from_pretrained):
            with pytest.raises(ValueError, match=f"fla\\) checkpoint \\(model_type '{fla_type}'\\).*\n.*convert"):
                load(src)


def test_cli(tmp_path, monkeypatch, capsys):
    script = str(ROOT / "scripts" / "convert_fla.py")
    src, _, _ = write_fla(tmp_path / "fla", "linear_attn")

    def run(*args):
        monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(script, run_name="__main__")
        return e.value.code

    assert run(src, tmp_path / "ours", "--dtype", "fp32") == 0
    assert os.path.isfile(tmp_path / "ours" / "model.safetensors")
    bad, _, _ = write_fla(tmp_path / "bad", "linear_attn", feature_map="dpfp")
    assert run(bad, tmp_path / "ours2") == 2
    assert "error: fla config field feature_map='dpfp'" in capsys.readouterr().err
    bad, _, _ = write_fla(tmp_path / "bad_delta", "delta_net", qk_norm="sum")
    assert run(bad, tmp_path / "ours3") == 2
    assert "error: fla config field qk_norm='sum'" in capsys.readouterr().err
