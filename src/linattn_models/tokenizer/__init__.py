"""The bundled tokenizer: a byte-level BPE trained on the Python standard library's source.

The files in this directory (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``)
are built by ``scripts/build_tokenizer.py`` and load with ``AutoTokenizer.from_pretrained(BUNDLED_DIR)``.
Special tokens: ``<|endoftext|>`` (BOS and EOS, id 0), ``<|pad|>`` (id 1), and ``<|im_start|>`` (2) /
``<|im_end|>`` (3) for the chat template. No BOS is prepended when encoding; the training script appends EOS
after each document.

Chat: ``tok.apply_chat_template(messages, add_generation_prompt=True)`` renders ChatML (below): each message is
``<|im_start|>{role}\n{content}<|im_end|>\n``, and the generation prompt opens ``<|im_start|>assistant\n``. A
model answering in that format ends its turn with ``<|im_end|>``: pass ``eos_token_id=[tok.eos_token_id,
tok.convert_tokens_to_ids(IM_END)]`` to ``generate`` so it stops there (the models' own EOS stays
``<|endoftext|>``, the end of a pretraining document).
"""
from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, IM_START, IM_END)  # ids 0..3, in this order
# ChatML; roles are free-form strings (system / user / assistant / tool ...), content is inserted verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


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


__all__ = ["BUNDLED_DIR", "CHAT_TEMPLATE", "EOS_TOKEN", "IM_END", "IM_START", "PAD_TOKEN", "SPECIAL_TOKENS", "bundled_tokenizer_path", "load_tokenizer"]
