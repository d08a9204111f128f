"""The bundled tokenizer: a byte-level BPE trained on the Python standard library's source.

The files in this directory (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``)
are built by ``scripts/build_tokenizer.py`` and load with ``AutoTokenizer.from_pretrained(BUNDLED_DIR)``.
Special tokens: ``<|endoftext|>`` (BOS and EOS, id 0) and ``<|pad|>`` (id 1). No BOS is prepended
when encoding; the training script appends EOS after each document.
"""
from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def bundled_tokenizer_path() -> str:
    return str(BUNDLED_DIR)


def load_tokenizer(path: str | os.PathLike | None = None, **kwargs):
    """Load a tokenizer with ``AutoTokenizer``: the bundled one when ``path`` is None, else any local
    tokenizer directory (or checkpoint directory that holds one). Never downloads.

    A tokenizer without a pad token gets its EOS token as pad (needed for batching)."""
    from transformers import AutoTokenizer

    src = bundled_tokenizer_path() if path is None else str(path)
    kwargs.setdefault("local_files_only", True)
    tok = AutoTokenizer.from_pretrained(src, **kwargs)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


__all__ = ["BUNDLED_DIR", "EOS_TOKEN", "PAD_TOKEN", "bundled_tokenizer_path", "load_tokenizer"]
