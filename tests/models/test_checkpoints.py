"""Faulty checkpoints give clear errors naming what is wrong (issue 7); legitimate partial loads still work."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

import linattn_models


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ckpt"))
    cfg = AutoConfig.from_pretrained(linattn_models.configs_path("retnet", "tiny"))
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    return d, load_file(os.path.join(d, "model.safetensors"))


def _write(d, sd):
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_is_named(checkpoint):
    d, sd = checkpoint
    name = next(k for k in sd if ".layers.1." in k)
    _write(d, {k: v for k, v in sd.items() if k != name})
    try:
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            AutoModelForCausalLM.from_pretrained(d)
        with pytest.raises(ValueError, match="missing from the checkpoint"):
            AutoModel.from_pretrained(d)
    finally:
        _write(d, sd)


def test_mismatched_shape_is_named(checkpoint):
    d, sd = checkpoint
    name = next(k for k in sd if k.endswith("q_proj.weight"))
    _write(d, dict(sd, **{name: torch.zeros(3, 3)}))
    try:
        want = sd[name].shape
        with pytest.raises(RuntimeError, match=rf"{name.replace('.', r'[.]')} \(checkpoint \(3, 3\), model "
                                               rf"\({want[0]}, {want[1]}\)\).*ignore_mismatched_sizes=True"):
            AutoModelForCausalLM.from_pretrained(d)
        # asked for: re-initialised at the model's shape
        m = AutoModelForCausalLM.from_pretrained(d, ignore_mismatched_sizes=True)
        assert m.get_parameter(name).shape == want
    finally:
        _write(d, sd)


def test_tensors_of_another_architecture_are_named(tmp_path):
    """A GLA checkpoint whose config.json says linattn_retnet: RetNet has every other tensor at the same shape, so
    only GLA's gk_proj is left over; it must not be dropped silently."""
    import json

    cfg = AutoConfig.from_pretrained(linattn_models.configs_path("gla", "tiny"))
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(saved, model_type="linattn_retnet"), f)
    for auto in (AutoModelForCausalLM, AutoModel, AutoModelForSequenceClassification):
        with pytest.raises(ValueError, match=r"6 tensor\(s\) in the checkpoint in .* that RetNet\w+ does not have: "
                                             r"model[.]layers[.]0[.]attn[.]gk_proj[.]0[.]weight, .*'linattn_retnet'"):
            auto.from_pretrained(tmp_path)
    # loaded with another architecture's class: the model type is checked before any tensor
    with open(tmp_path / "config.json", "w") as f:
        json.dump(saved, f)
    with pytest.raises(ValueError, match="config.json has model_type 'linattn_gla', but RetNetConfig expects "
                                         "model_type 'linattn_retnet'"):
        linattn_models.RetNetForCausalLM.from_pretrained(tmp_path)
    # left-over task heads stay allowed: an untied lm_head when the causal-LM checkpoint is loaded as a backbone
    cfg.tie_word_embeddings = False
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "untied")
    AutoModel.from_pretrained(tmp_path / "untied")


def test_bad_paths_and_foreign_model_types(tmp_path):
    missing = tmp_path / "no" / "such_dir"
    for load in (linattn_models.GLAForCausalLM.from_pretrained, linattn_models.GLAConfig.from_pretrained):
        with pytest.raises(FileNotFoundError, match=f"{missing} does not exist: from_pretrained expects a directory"):
            load(missing)
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load(str(missing))
    cfg = AutoConfig.from_pretrained(linattn_models.configs_path("gla", "tiny"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        linattn_models.GLAForCausalLM.from_pretrained(missing, config=cfg)
    # a config.json of another library's model
    (tmp_path / "bert").mkdir()
    with open(tmp_path / "bert" / "config.json", "w") as f:
        f.write('{"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100}')
    for load in (linattn_models.GLAForCausalLM.from_pretrained, linattn_models.GLAConfig.from_pretrained,
                 linattn_models.LinearTransformerForSequenceClassification.from_pretrained):
        with pytest.raises(ValueError, match=r"config.json has model_type 'bert', but \w+Config expects model_type "
                                             r"'linattn_\w+' \(it is not a linattn_models checkpoint\)"):
            load(tmp_path / "bert")


def test_truncated_file(checkpoint):
    d, sd = checkpoint
    path = os.path.join(d, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    try:
        with pytest.raises(OSError, match="truncated or corrupt"):
            AutoModelForCausalLM.from_pretrained(d)
    finally:
        _write(d, sd)


def test_complete_and_partial_loads_still_work(checkpoint):
    d, sd = checkpoint
    m, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True)
    assert not info["missing_keys"]
    assert torch.equal(m.model.embed_tokens.weight, sd["model.embed_tokens.weight"])
    AutoModel.from_pretrained(d)
    # A new task head on a pretrained backbone is the normal fine-tuning case, not an error.
    clf = AutoModelForSequenceClassification.from_pretrained(d, num_labels=3)
    assert clf.score.weight.shape[0] == 3


@pytest.mark.parametrize("feature_map,tie", [("elementwise_product", False), ("elementwise_product", True),
                                             ("hedgehog", False)])
def test_learnable_feature_maps_round_trip(tmp_path, feature_map, tie):
    """Save and load a linear transformer with learnable (per-head) q/k feature maps, tied or not: same config,
    same tensors (random ones: an init at load time must not overwrite them), same logits."""
    import json

    cfg = AutoConfig.from_pretrained(linattn_models.configs_path("linear_transformer", "tiny"), feature_map=feature_map,
                                     tie_feature_map_qk=tie, normalize_attention=False, output_norm=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    names = [n for n, _ in model.named_parameters() if ".feature_map" in n]
    want = [f"feature_map{s}.{p}" for s in ([""] if tie else ["_q", "_k"]) for p in ("weight", "bias")]
    assert [n.split(".attn.")[1] for n in names if ".layers.0." in n] == want
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".feature_map" in n:
                p.normal_(std=0.3)
    model.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    assert (saved["feature_map"], saved["tie_feature_map_qk"]) == (feature_map, tie)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (loaded.config.feature_map, loaded.config.tie_feature_map_qk) == (feature_map, tie)
    for n, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[n], t), n
    x = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    # a config.json from before tie_feature_map_qk existed loads tied (the default), as it was saved
    if tie:
        del saved["tie_feature_map_qk"]
        with open(tmp_path / "config.json", "w") as f:
            json.dump(saved, f)
        assert AutoModelForCausalLM.from_pretrained(tmp_path).config.tie_feature_map_qk is True


@pytest.mark.parametrize("override", [dict(num_heads=2), dict(hidden_size=96), dict(num_heads=2, hidden_size=96),
                                      dict(num_attention_heads=8)])
def test_config_overrides_rederive_sizes(checkpoint, override):
    """from_pretrained's kwargs are set after __init__: the head dims derived from hidden_size / num_heads must
    follow them (they were saved in config.json), so the projections are built at the new sizes."""
    d, _ = checkpoint
    cfg = AutoConfig.from_pretrained(d, **override)
    D, H = cfg.hidden_size, cfg.num_heads
    want_heads = override.get("num_heads", override.get("num_attention_heads", 4))
    assert (D, H) == (override.get("hidden_size", 64), want_heads)
    K, V = int(D * cfg.expand_k), int(D * cfg.expand_v)
    assert (cfg.head_k_dim, cfg.head_v_dim) == (K // H, V // H)
    attn = AutoModelForCausalLM.from_config(cfg).eval().model.layers[0].attn
    assert (attn.num_heads, attn.head_k_dim, attn.head_v_dim) == (H, K // H, V // H)
    assert attn.q_proj.weight.shape == (K, D) and attn.o_proj.weight.shape == (D, V)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    assert model(torch.randint(0, cfg.vocab_size, (2, 7))).logits.shape == (2, 7, cfg.vocab_size)
    saved = AutoConfig.from_pretrained(d)  # an explicit head dim (not the derived one) is kept
    explicit = type(saved)(**dict(saved.to_dict(), head_k_dim=4))
    explicit.num_heads = 2
    assert explicit.head_k_dim == 4 and explicit.head_v_dim == int(64 * saved.expand_v) // 2


def test_invalid_config_overrides_are_refused(checkpoint):
    d, _ = checkpoint
    with pytest.raises(ValueError, match="num_heads = 3 must divide hidden_size = 64"):
        AutoConfig.from_pretrained(d, num_heads=3)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        AutoConfig.from_pretrained(d, hidden_size=0)
    with pytest.raises(ValueError, match="num_hidden_layers must be an integer >= 1"):
        AutoModelForCausalLM.from_pretrained(d, num_hidden_layers=0)
    cfg = AutoConfig.from_pretrained(d)
    cfg.num_heads = 5  # set after the config was made: the model checks again
    with pytest.raises(ValueError, match="num_heads = 5 must divide hidden_size = 64"):
        AutoModelForCausalLM.from_config(cfg)
