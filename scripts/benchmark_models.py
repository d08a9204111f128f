"""Benchmark ~370M models on a GPU: ours (each architecture) vs fla's matching model vs a Llama with SDPA.

    PYTHONPATH=src python scripts/benchmark_models.py                    # everything (several minutes)
    PYTHONPATH=src python scripts/benchmark_models.py --models ours_retnet fla_retnet --no-generate

Training: tokens/s and peak memory of AdamW steps at B=4, T=4096 (bf16 autocast, fp32 master weights,
no torch.compile; median step time after warm-up steps). Generation: greedy `generate` of --new-tokens tokens
at B=1 and B=8 after prompts of 512 and 2048/16K random tokens, bf16 weights; decode tokens/s counts only the
new tokens and subtracts the time of a 1-token generate (the prefill); per-token latency is decode time / (new - 1).
Writes bench_models.json to --out and prints a table last.
"""
import argparse
import json
import os
import statistics
import time

import torch

ARCHS = ("linear_transformer", "retnet", "gla")


def build(name, vocab=32000, hidden=1024, layers=24, size="370m"):
    """A randomly initialised model by name: ours_<arch>, fla_<arch>, llama."""
    if name.startswith("ours_"):
        from transformers import AutoConfig, AutoModelForCausalLM

        import linattn_models
        cfg = AutoConfig.from_pretrained(linattn_models.configs_path(name[5:], size))
        return AutoModelForCausalLM.from_config(cfg)
    if name.startswith("fla_"):
        import fla  # noqa: F401  (registers fla's model types)
        from transformers import AutoModelForCausalLM
        from fla.models import GLAConfig, LinearAttentionConfig, RetNetConfig
        arch = name[4:]
        common = dict(hidden_size=hidden, num_hidden_layers=layers, vocab_size=vocab)
        cfg = {"retnet": lambda: RetNetConfig(num_heads=8, **common),
               "gla": lambda: GLAConfig(num_heads=4, **common),
               "linear_transformer": lambda: LinearAttentionConfig(num_heads=16, **common)}[arch]()
        return AutoModelForCausalLM.from_config(cfg)
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2816, num_hidden_layers=layers, num_attention_heads=16,
                          num_key_value_heads=16, vocab_size=vocab, max_position_embeddings=32768,
                          tie_word_embeddings=True, attn_implementation="sdpa")
        return LlamaForCausalLM(cfg)
    raise ValueError(f"unknown model {name!r}")


def bench_train(model, B, T, steps, warmup, dev="cuda", profile=False):
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
    vocab = model.config.vocab_size
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    def train_step():
        x = torch.randint(0, vocab, (B, T), device=dev)
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        loss = train_step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    step = statistics.median(times)
    extra = {}
    if profile:
        from benchmark_ops import profile as profile_step
        extra["profile"] = profile_step(train_step, iters=2, top=20)
    return extra | {"train_tok_s": B * T / step, "train_step_s": step, "train_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else 0.0,
            "train_loss_first_last": [losses[0], losses[-1]], "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


@torch.no_grad()
def bench_generate(model, B, prompt, new_tokens, repeats=2, dev="cuda"):
    model.to(dev).eval().to(torch.bfloat16)
    vocab = model.config.vocab_size
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    x = torch.randint(2, vocab, (B, prompt), device=dev)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def run(n):
        sync()
        t0 = time.perf_counter()
        out = model.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
        sync()
        assert out.shape[1] == prompt + n, out.shape
        return time.perf_counter() - t0

    run(2)  # warm-up: compile kernels for this shape
    full = statistics.median(run(new_tokens) for _ in range(repeats))
    prefill = statistics.median(run(1) for _ in range(repeats))
    decode = max(full - prefill, 1e-9)
    return {"decode_tok_s": B * (new_tokens - 1) / decode, "ms_per_token": 1e3 * decode / (new_tokens - 1),
            "prefill_s": prefill, "generate_s": full}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+",
                   default=[f"ours_{a}" for a in ARCHS] + [f"fla_{a}" for a in ("retnet", "gla")] + ["llama"])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-generate", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile one training step: kernels vs wall time")
    p.add_argument("--gen-batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--prompts", nargs="+", type=int, default=[512, 2048, 16384])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--size", default="370m", help="size of our configs (tiny for a CPU smoke run)")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import transformers
    import triton
    meta = {"card": torch.cuda.get_device_name() if a.device == "cuda" else a.device, "torch": torch.__version__, "triton": triton.__version__,
            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(meta), flush=True)
    results = {}
    for name in a.models:
        r = results[name] = {}
        try:
            torch.manual_seed(0)
            model = build(name, size=a.size)
            if not a.no_train:
                r.update(bench_train(model, a.B, a.T, a.steps, a.warmup, a.device, a.profile))
            if not a.no_generate:
                for B in a.gen_batches:
                    for P in a.prompts:
                        r[f"gen_B{B}_P{P}"] = bench_generate(model, B, P, a.new_tokens, dev=a.device)
        except Exception as e:  # report and go on: one model's failure must not hide the others
            r["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(name, json.dumps(r), flush=True)
        model = None
        if a.device == "cuda":
            torch.cuda.empty_cache()
    with open(os.path.join(a.out, "bench_models.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"\n{meta['card']}, torch {meta['torch']}, triton {meta['triton']}, transformers {meta['transformers']}, "
          f"{meta['date']}; train B={a.B} T={a.T} bf16 autocast AdamW; generate greedy {a.new_tokens} new tokens")
    gen_cols = [(B, P) for B in a.gen_batches for P in a.prompts]
    print(f"{'model':24s} {'params':>7s} {'tok/s':>9s} {'peak GB':>8s} | "
          + " ".join(f"{f'B{B} P{P}':>16s}" for B, P in gen_cols) + "   (decode tok/s, ms/token)")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:24s} ERROR {r['error']}")
            continue
        tr = (f"{r.get('params_m', 0):6.0f}M {r.get('train_tok_s', 0):9.0f} {r.get('train_peak_gb', 0):8.1f}"
              if "train_tok_s" in r else f"{'-':>7s} {'-':>9s} {'-':>8s}")
        gens = " ".join(f"{r[k]['decode_tok_s']:8.0f} {r[k]['ms_per_token']:6.2f}ms" if (k := f"gen_B{B}_P{P}") in r
                        else f"{'-':>16s}" for B, P in gen_cols)
        print(f"{name:24s} {tr} | {gens}")


if __name__ == "__main__":
    main()
