#!/usr/bin/env python3
"""Build the bundled tokenizer (src/linattn_models/tokenizer/) from text every machine has.

A byte-level BPE (GPT-2 style pre-tokenization, no normalization, exact round trip for any UTF-8 text)
trained with `tokenizers` on the Python standard library's source files, gathered at build time.
The result is committed; rerun only to change it:

    python scripts/build_tokenizer.py [--vocab-size 8192] [--out src/linattn_models/tokenizer]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from linattn_models.cli.data import iter_stdlib_texts, is_eval_file, stdlib_dir  # noqa: E402
from linattn_models.tokenizer import CHAT_TEMPLATE, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS  # noqa: E402


def build(vocab_size: int, out: Path, min_frequency: int = 2) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for rel, t in iter_stdlib_texts() if not is_eval_file(rel)]  # train split only
    print(f"training byte-level BPE (vocab {vocab_size}) on {len(texts)} files, "
          f"{sum(map(len, texts)) / 1e6:.1f} M chars from {stdlib_dir()}")

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer, length=len(texts))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).unlink(missing_ok=True)
    fast.save_pretrained(str(out))
    # Name the class every transformers 5.x (and 4.x) resolves; 5.24 maps it to TokenizersBackend.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.json"))}
    print(f"saved to {out}: {sizes}")

    sample = "def greet(name):\n    \"\"\"Say hello.\"\"\"\n    return f'héllo, {name} ✓'\n"
    ids = fast(sample)["input_ids"]
    assert fast.decode(ids) == sample, "round trip failed"
    print(f"vocab {len(fast)}; sample of {len(sample)} chars -> {len(ids)} tokens")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "linattn_models" / "tokenizer")
    args = ap.parse_args(argv)
    build(args.vocab_size, args.out, args.min_frequency)


if __name__ == "__main__":
    main()
