"""linattn_models: linear-attention language models for the transformers ecosystem, on one Triton kernel core.

`import linattn_models` registers the three architectures (linattn_linear_transformer, linattn_retnet,
linattn_gla) with the transformers Auto classes. `linattn_models.ops` never imports Triton eagerly.
"""
__version__ = "0.1.0"

import os as _os

from . import ops  # noqa: E402,F401
from .models import (GLAConfig, GLAForCausalLM, GLAForSequenceClassification, GLAModel,  # noqa: E402,F401
                     LinearAttentionCache, LinearTransformerConfig, LinearTransformerForCausalLM,
                     LinearTransformerForSequenceClassification, LinearTransformerModel, RetNetConfig,
                     RetNetForCausalLM, RetNetForSequenceClassification, RetNetModel)


def configs_path(arch=None, size=None):
    """Directory of the shipped model configs (configs/<arch>/<size>.json), or one file's path.

    Looks in the installed package data first (linattn_models/configs), then in the source checkout."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    candidates = [_os.path.join(here, "configs"), _os.path.join(here, _os.pardir, _os.pardir, "configs")]
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
