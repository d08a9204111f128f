"""linattn_models: linear-attention language models for the transformers ecosystem, on one Triton kernel core.

`import linattn_models` registers the five architectures (linattn_linear_transformer, linattn_retnet,
linattn_gla, linattn_deltanet, linattn_gated_deltanet) with the transformers Auto classes. It stays light:
neither it nor `linattn_models.ops` imports triton (or transformers' modeling code); the model classes load on
first use.

fla checkpoints (model types gla, retnet, linear_attn): `linattn_models.convert_fla(src, dst)` or
`python -m linattn_models.convert SRC DST` converts them into ours.

transformers' own Gated DeltaNet models (Qwen3Next, OLMo Hybrid): `linattn_models.use_in_transformers()` makes
their linear-attention layers call our delta-rule ops (hf_kernels.py).
"""
__version__ = "0.1.0"

import os as _os

from ._lazy import lazy_exports  # noqa: E402
from . import ops  # noqa: E402,F401
from . import models  # noqa: E402,F401  (registers the model types)
from .models import (DeltaNetConfig, GatedDeltaNetConfig, GLAConfig, LinearTransformerConfig,  # noqa: E402,F401
                     RetNetConfig)

# the model classes and the converter load on first access (_lazy.py says why); `convert` lazily also so that
# `python -m linattn_models.convert` runs that module fresh
_LAZY = {name: ".models" for name in (
    "LinearAttentionCache", "LinearTransformerModel", "LinearTransformerForCausalLM",
    "LinearTransformerForSequenceClassification", "RetNetModel", "RetNetForCausalLM",
    "RetNetForSequenceClassification", "GLAModel", "GLAForCausalLM", "GLAForSequenceClassification",
    "DeltaNetModel", "DeltaNetForCausalLM", "DeltaNetForSequenceClassification", "GatedDeltaNetModel", "GatedDeltaNetForCausalLM",
    "GatedDeltaNetForSequenceClassification")}
_LAZY["convert_fla"] = ".convert"
_LAZY["tokenizer"] = ".tokenizer"  # the bundled tokenizer's module (BUNDLED_DIR, CHAT_TEMPLATE, ...)
_LAZY["load_tokenizer"] = ".tokenizer"
_LAZY["use_in_transformers"] = ".hf_kernels"  # transformers' Qwen3Next / OLMo Hybrid GDN layers on our ops
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


def configs_path(arch=None, size=None):
    """Directory of the shipped model configs (configs/<arch>/<size>.json), or one file's path. Sizes: tiny, 125m,
    370m, 1.3b, and for gla and gated_deltanet also tiny-hybrid ... 1.3b-hybrid (every 4th layer softmax attention).

    Looks in the installed package data first (linattn_models/configs), then in the source checkout, then in
    ./configs. The one config lookup of the package (the training CLI's --arch/--size use it)."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    candidates = [_os.path.join(here, "configs"), _os.path.join(here, _os.pardir, _os.pardir, "configs"),
                  _os.path.join(_os.getcwd(), "configs")]
    for root in candidates:
        root = _os.path.normpath(root)
        if _os.path.isdir(_os.path.join(root, "gla")):
            if arch is None:
                return root
            path = _os.path.join(root, arch) if size is None else _os.path.join(root, arch, f"{size}.json")
            if not _os.path.exists(path):
                raise FileNotFoundError(f"no shipped config {path}")
            return path
    raise FileNotFoundError(f"model configs not found (looked in {candidates})")
