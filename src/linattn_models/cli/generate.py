"""``linattn-generate`` / ``python scripts/generate.py``: sample text from a checkpoint.

Loads any checkpoint directory (the output dir of ``linattn-train`` or one of its ``checkpoint-*``
subdirectories, or any other local causal LM) with ``AutoModelForCausalLM`` after ``import linattn_models``,
and its tokenizer (the bundled one if the directory has none). Prints samples through
``pipeline("text-generation")``; with ``--stream``, prints tokens as they are generated
(``TextStreamer`` + ``model.generate``).

    linattn-generate runs/default --prompt "def parse(" --max-new-tokens 200 --stream
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="linattn-generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", default="runs/default", help="checkpoint dir (default: runs/default)")
    ap.add_argument("--prompt", action="append",
                    help="prompt (repeatable; default 'def '); must not be empty: the model continues a prompt")
    ap.add_argument("--max-new-tokens", type=int, default=120)
    ap.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    ap.add_argument("--tokenizer", help="tokenizer dir (default: the checkpoint's, else the bundled one)")
    ap.add_argument("--device", default="auto", help="auto (the accelerator torch sees: cuda, xpu, ...; else cpu) | cpu | cuda | cuda:1 | xpu | ...")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                    help="auto: bfloat16 on a GPU that supports it, float32 on CPU")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def load_model_and_tokenizer(checkpoint: str, tokenizer: str | None = None, device: str = "auto",
                             dtype: str = "auto"):
    import torch
    from transformers import AutoModelForCausalLM

    import linattn_models  # noqa: F401  (registers the model types with AutoConfig / AutoModelForCausalLM)
    from linattn_models.ops import bf16_supported, default_device
    from linattn_models.tokenizer import load_tokenizer

    from linattn_models.cli import UsageError

    ckpt = Path(checkpoint)
    if not (ckpt / "config.json").is_file():
        raise UsageError(f"checkpoint {ckpt}: " + ("no config.json in this directory" if ckpt.is_dir() else
                         "no such directory") + " (expected a checkpoint directory, e.g. runs/default)")
    if device == "auto":
        device = default_device()
    if dtype == "auto":
        dt = torch.bfloat16 if bf16_supported(device) else torch.float32
    else:
        dt = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=dt).to(device).eval()
    if tokenizer is None:
        tokenizer = str(ckpt) if (ckpt / "tokenizer_config.json").is_file() else None
        if tokenizer is None:
            print(f"[linattn-generate] no tokenizer in {ckpt}; using the bundled one", file=sys.stderr)
    tok = load_tokenizer(tokenizer)
    return model, tok


def validate_args(args) -> None:
    """Check the arguments before the model is loaded; raises UsageError naming the flag."""
    from linattn_models.cli import UsageError

    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1 (samples per prompt), got {args.num_samples}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.greedy:
        if not args.temperature > 0:
            raise UsageError(f"--temperature must be > 0 (or pass --greedy), got {args.temperature}")
        if args.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0 = no top-k filtering), got {args.top_k}")
        if not 0 < args.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not args.repetition_penalty > 0:
        raise UsageError(f"--repetition-penalty must be > 0, got {args.repetition_penalty}")
    for p in args.prompt or []:
        if p == "":
            raise UsageError("--prompt must not be empty: the model continues the prompt's tokens "
                             "(pass some text, e.g. --prompt 'def ')")


def main(argv=None) -> list[str]:
    """Sample from a checkpoint; returns the generated texts. Bad input exits (SystemExit, status 2) with
    one line ``linattn-generate: error: ...`` on stderr, like argparse."""
    ap = build_parser()
    args = ap.parse_args(argv)
    from linattn_models.cli import UsageError

    try:
        validate_args(args)
        return _run(args)
    except UsageError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")


def _run(args) -> list[str]:
    import torch
    from transformers import TextStreamer, pipeline, set_seed

    model, tok = load_model_and_tokenizer(args.checkpoint, args.tokenizer, args.device, args.dtype)
    prompts = args.prompt or ["def "]
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, repetition_penalty=args.repetition_penalty)
    if args.greedy:
        gen_kwargs.update(do_sample=False)
    else:
        gen_kwargs.update(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    set_seed(args.seed)
    outputs = []
    if args.stream:
        streamer = TextStreamer(tok, skip_prompt=False, skip_special_tokens=True)
        for prompt in prompts:
            for _ in range(args.num_samples):
                ids = tok(prompt, return_tensors="pt").to(model.device)
                with torch.no_grad():
                    out = model.generate(**ids, streamer=streamer, **gen_kwargs)
                outputs.append(tok.decode(out[0], skip_special_tokens=True))
                print("-" * 78, flush=True)
        return outputs

    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    for prompt in prompts:
        res = pipe(prompt, num_return_sequences=args.num_samples, return_full_text=True, **gen_kwargs)
        for r in res:
            outputs.append(r["generated_text"])
            print(r["generated_text"])
            print("-" * 78, flush=True)
    return outputs


def cli() -> None:
    """Console entry point (returns None, so the exit status is 0 on success)."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
