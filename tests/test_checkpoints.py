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
