"""linattn_models: linear-attention language models for the transformers ecosystem, on one Triton kernel core.

`import linattn_models` registers the three architectures (linattn_linear_transformer, linattn_retnet,
linattn_gla) with the transformers Auto classes. It stays light: neither it nor `linattn_models.ops` imports
triton (or transformers' modeling code); the model classes load on first use.

fla checkpoints (model types gla, retnet, linear_attn): `linattn_models.convert_fla(src, dst)` or
`python -m linattn_models.convert SRC DST` converts them into ours.
"""
__version__ = "0.1.0"

import os as _os

from . import ops  # noqa: E402,F401
from . import models  # noqa: E402,F401  (registers the model types)
from .models import GLAConfig, LinearTransformerConfig, RetNetConfig  # noqa: E402,F401

_LAZY = ("LinearAttentionCache", "LinearTransformerModel", "LinearTransformerForCausalLM",
         "LinearTransformerForSequenceClassification", "RetNetModel", "RetNetForCausalLM",
         "RetNetForSequenceClassification", "GLAModel", "GLAForCausalLM", "GLAForSequenceClassification")


def __getattr__(name):
    if name in _LAZY:
        return getattr(models, name)
    if name == "convert_fla":  # lazily, so that `python -m linattn_models.convert` runs the module fresh
        from .convert import convert_fla
        return convert_fla
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"convert_fla"})


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
