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
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            AutoModelForCausalLM.from_pretrained(d)
    finally:
        _write(d, sd)


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
