"""linattn_models: linear-attention language models for the transformers ecosystem, on one Triton kernel core."""
__version__ = "0.1.0"

from . import ops  # noqa: E402,F401
