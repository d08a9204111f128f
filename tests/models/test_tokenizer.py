"""The bundled byte-level BPE: loads with AutoTokenizer and load_tokenizer, round-trips text exactly."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from transformers import AutoTokenizer

from linattn_models.tokenizer import BUNDLED_DIR, EOS_TOKEN, PAD_TOKEN, load_tokenizer

TEXTS = [
    "def f(x):\n    return x + 1\n",
    "Hello,   world!\n\n\tTabs\tand  double  spaces  \n",
    "  leading and trailing spaces  ",
    "naïve café — 日本語テキスト, emoji 🤗🚀, math ∑∫√, zero-width\u200bjoiner\r\nCRLF",
    "",
    "<|endoftext|> looks special",  # special token text inside normal text
    "\x00\x01 control \x7f bytes",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_bundled_files_small():
    size = (BUNDLED_DIR / "tokenizer.json").stat().st_size
    assert (BUNDLED_DIR / "tokenizer_config.json").exists()
    assert size < 2_000_000


def test_load_with_auto_tokenizer():
    t = AutoTokenizer.from_pretrained(str(BUNDLED_DIR))
    assert t.eos_token == EOS_TOKEN and t.bos_token == EOS_TOKEN and t.pad_token == PAD_TOKEN
    assert t.eos_token_id == 0 and t.pad_token_id == 1
    assert len(t) == t.vocab_size == 8192


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    ids2 = tok(text)["input_ids"]  # no BOS/EOS added by default
    assert tok.decode(ids2) == text


def test_round_trip_stdlib_file(tok):
    import inspect
    import json

    text = inspect.getsource(json)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2.5  # trained on Python source: compresses well


def test_special_tokens_and_batch(tok):
    ids = tok("a" + EOS_TOKEN + "b")["input_ids"]
    assert tok.eos_token_id in ids
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    batch = tok(["short", "a bit longer text"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2
    assert (batch["input_ids"][0] == tok.pad_token_id).any()


def test_chat_template_round_trip(tmp_path, tok):
    """ChatML: the rendered text is exact, <|im_start|>/<|im_end|> are single special tokens, the template survives
    save/load, and decoding the ids gives the rendered text back."""
    from linattn_models.tokenizer import IM_END, IM_START
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f(x):\n    return"},
            {"role": "assistant", "content": " x + 1"}]
    want = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\ndef f(x):\n    return<|im_end|>\n"
            "<|im_start|>assistant\n x + 1<|im_end|>\n")
    assert tok.apply_chat_template(msgs, tokenize=False) == want
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    start, end = tok.convert_tokens_to_ids([IM_START, IM_END])
    assert (start, end) == (2, 3) and len(tok) == 8192
    ids = tok(want)["input_ids"]
    assert ids.count(start) == 3 and ids.count(end) == 3 and tok.decode(ids) == want
    assert tok.decode(ids, skip_special_tokens=True) == want.replace(IM_START, "").replace(IM_END, "")
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).apply_chat_template(msgs, tokenize=False) == want


def test_tokenizer_is_an_attribute_of_the_package():
    import linattn_models
    assert linattn_models.tokenizer.BUNDLED_DIR == BUNDLED_DIR
    assert linattn_models.load_tokenizer is load_tokenizer


def test_load_other_path_and_save(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    t2 = load_tokenizer(tmp_path)
    assert t2("x = 1")["input_ids"] == tok("x = 1")["input_ids"]
    t3 = AutoTokenizer.from_pretrained(str(tmp_path))
    assert t3.decode(t3("héllo")["input_ids"]) == "héllo"
