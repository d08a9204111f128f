#!/usr/bin/env python
"""GPU check of the three architectures at ~370M (configs/<arch>/370m.json), no downloads, no `datasets`.

Per architecture:
  1. train: a few AdamW steps in bf16 autocast on one fixed random batch; the loss must be finite and drop;
  2. then, in float32 (TF32 off), after a random prompt of --prompt-len tokens (default 2048):
     - cached greedy `generate` == argmax of full forwards, token by token (--new-tokens);
     - a left-padded batch (prompt, and a shorter second prompt) == each prompt run alone (logits + tokens);
     - chunk and recurrent mode logits vs the same model run in float64 (torch backend), ‖Δ‖/‖ref‖ ≤ --tol;
     - the model cast to bf16: chunk and recurrent logits vs that float64 run. These errors are large for RetNet
       and GLA (0.1-0.25 of ‖logits‖) in BOTH modes: the models amplify a relative error of 1e-3 in one layer's
       attention output 30-400x at these widths (measured by a one-off diagnosis, README "GPU results": ours
       and fla's kernels have the same error on the models' real activations). So the bf16 check is relative: chunk
       mode (bf16 boundary states, as fla) must be no less accurate than the token-by-token recurrence (fp32
       state) by more than --bf16-ratio; cached-vs-full is reported;
  3. prints a table. Exit status 1 if a check fails.

A greedy token that differs only where the full forward's top-2 logits are within --tie-tol is reported as a
near tie, not a failure (a randomly initialised model has very flat logits).

    PYTHONPATH=src python scripts/check_models_gpu.py                 # all three, 370m, prompt 2048
    PYTHONPATH=src python scripts/check_models_gpu.py --archs gla --prompt-len 4096
"""
import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

import linattn_models  # noqa: E402
from linattn_models.models.common import CACHE_OUTPUT_NAME  # noqa: E402
from linattn_models.ops import resolve_backend  # noqa: E402


def max_rel(a, b):
    """max |a - b| / max |b|."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def norm_rel(a, b):
    """‖a - b‖ / ‖b‖ (float64)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@contextlib.contextmanager
def backend(name):
    """Run the ops with this backend inside the block (LINATTN_BACKEND), restoring the old setting after."""
    old = os.environ.get("LINATTN_BACKEND")
    os.environ["LINATTN_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LINATTN_BACKEND")
        else:
            os.environ["LINATTN_BACKEND"] = old


@torch.no_grad()
def fp64_logits(model, prompt):
    """The model's logits in float64 through the torch backend (the kernels have no float64 path)."""
    m = copy.deepcopy(model).double()
    m.set_attn_mode("chunk")
    with backend("torch"):
        return m(prompt, use_cache=False).logits


def train(model, args, device, vocab):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(3, vocab, (args.batch, args.train_len), generator=g).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(args.steps):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    del opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return losses


@torch.no_grad()
def greedy_check(model, prompt, n_new, tie_tol):
    out = model.generate(prompt, max_new_tokens=n_new, do_sample=False, eos_token_id=None,
                         pad_token_id=model.config.pad_token_id)
    P = prompt.shape[1]
    exact, ties, worst = 0, 0, 0.0
    for t in range(n_new):
        logits = model(out[:, :P + t], use_cache=False, logits_to_keep=1).logits[0, -1].float()
        want = int(logits.argmax())
        got = int(out[0, P + t])
        if got == want:
            exact += 1
        else:
            margin = (logits[want] - logits[got]).item()
            worst = max(worst, margin)
            if margin <= tie_tol:
                ties += 1
            else:
                return exact, ties, worst, False
    return exact, ties, worst, True


@torch.no_grad()
def cached_vs_full(model, prompt, split):
    full = model(prompt, use_cache=False).logits
    first = model(prompt[:, :split], use_cache=True)
    rest = model(prompt[:, split:], use_cache=True, **{CACHE_OUTPUT_NAME: first[CACHE_OUTPUT_NAME]}).logits
    step = model(prompt[:, -1:], use_cache=True,
                 **{CACHE_OUTPUT_NAME: model(prompt[:, :-1], use_cache=True)[CACHE_OUTPUT_NAME]}).logits
    return max(max_rel(torch.cat([first.logits, rest], 1), full), max_rel(step[:, -1], full[:, -1]))


@torch.no_grad()
def padding_check(model, a, b, n_new, pad_id):
    T = a.shape[1]
    batch = torch.full((2, T), pad_id, device=a.device)
    mask = torch.zeros(2, T, dtype=torch.long, device=a.device)
    batch[0], mask[0] = a[0], 1
    batch[1, T - b.shape[1]:], mask[1, T - b.shape[1]:] = b[0], 1
    logits = model(batch, attention_mask=mask, use_cache=False).logits
    err = max(max_rel(logits[0], model(a, use_cache=False).logits[0]),
              max_rel(logits[1, T - b.shape[1]:], model(b, use_cache=False).logits[0]))
    kw = dict(max_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=pad_id)
    out = model.generate(batch, attention_mask=mask, **kw)
    same = (torch.equal(out[0], model.generate(a, **kw)[0])
            and torch.equal(out[1, T - b.shape[1]:], model.generate(b, **kw)[0]))
    return err, same


@torch.no_grad()
def modes_check(model, prompt, ref):
    """‖Δ‖/‖ref‖ of chunk and recurrent mode logits vs the float64 logits `ref`."""
    errs = {}
    for mode in ("chunk", "recurrent"):
        model.set_attn_mode(mode)
        errs[mode] = norm_rel(model(prompt, use_cache=False).logits, ref)
    model.set_attn_mode("auto")
    return errs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["linear_transformer", "retnet", "gla"])
    p.add_argument("--size", default="370m")
    p.add_argument("--prompt-len", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=6)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--train-len", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tie-tol", type=float, default=1e-3, help="top-2 logit gap below which a greedy mismatch is a tie")
    p.add_argument("--tol", type=float, default=1e-3, help="fp32 relative logit tolerance (‖Δ‖/‖ref‖; cached and "
                   "padded: max|Δ| / max|logit|)")
    p.add_argument("--bf16-ratio", type=float, default=1.5,
                   help="bf16: chunk error vs fp64 at most this times the recurrent error (+0.01)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script (tiny size)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("needs a CUDA (or ROCm) GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else str(device)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {dev_name}, "
          f"ops backend: {resolve_backend(None, device)}, cache field: {CACHE_OUTPUT_NAME}", flush=True)

    rows, ok_all = [], True
    for arch in args.archs:
        t0 = time.time()
        cfg = AutoConfig.from_pretrained(linattn_models.configs_path(arch, args.size))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\n== {arch} {args.size}: {n_params / 1e6:.1f}M params, hidden {cfg.hidden_size}, "
              f"{cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}", flush=True)
        losses = train(model, args, device, cfg.vocab_size)
        print("  bf16 AdamW losses: " + " ".join(f"{v:.4f}" for v in losses), flush=True)
        train_ok = all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]

        model.eval()
        g = torch.Generator(device="cpu").manual_seed(1)
        prompt = torch.randint(3, cfg.vocab_size, (1, args.prompt_len), generator=g).to(device)
        short = torch.randint(3, cfg.vocab_size, (1, args.prompt_len * 3 // 4), generator=g).to(device)
        exact, ties, margin, greedy_ok = greedy_check(model, prompt, args.new_tokens, args.tie_tol)
        print(f"  greedy: {exact}/{args.new_tokens} exact, {ties} near ties (worst gap {margin:.2e})", flush=True)
        cache_err = cached_vs_full(model, prompt, args.prompt_len - 100)
        pad_err, pad_same = padding_check(model, prompt, short, args.new_tokens, cfg.pad_token_id)
        ref = fp64_logits(model, prompt)
        mode_err = modes_check(model, prompt, ref)
        print(f"  fp32: cached-vs-full {cache_err:.2e}, padded-vs-alone {pad_err:.2e} (tokens same: {pad_same}), "
              f"vs fp64: chunk {mode_err['chunk']:.2e} recurrent {mode_err['recurrent']:.2e}", flush=True)
        model.to(torch.bfloat16)
        bf_mode_err = modes_check(model, prompt, ref)
        bf_cache_err = cached_vs_full(model, prompt, args.prompt_len - 100)
        print(f"  bf16: vs fp64: chunk {bf_mode_err['chunk']:.2e} recurrent {bf_mode_err['recurrent']:.2e}; "
              f"cached-vs-full {bf_cache_err:.2e}", flush=True)
        ok = (train_ok and greedy_ok and pad_same and cache_err < args.tol and pad_err < args.tol
              and max(mode_err.values()) < args.tol
              and bf_mode_err["chunk"] <= args.bf16_ratio * bf_mode_err["recurrent"] + 1e-2)
        ok_all &= ok
        rows.append(dict(arch=arch, params_m=round(n_params / 1e6, 1), loss_first=losses[0], loss_last=losses[-1],
                         greedy=f"{exact}+{ties}t/{args.new_tokens}", cached_vs_full=cache_err,
                         padded_vs_alone=pad_err, pad_tokens_same=pad_same, chunk_vs_fp64=mode_err["chunk"],
                         recurrent_vs_fp64=mode_err["recurrent"], bf16_chunk_vs_fp64=bf_mode_err["chunk"],
                         bf16_recurrent_vs_fp64=bf_mode_err["recurrent"], bf16_cached_vs_full=bf_cache_err,
                         seconds=round(time.time() - t0, 1), ok=ok))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\nprompt {args.prompt_len} tokens; *_vs_fp64: ‖Δlogits‖/‖logits64‖; cached/padded: max|Δlogit| / "
          f"max|logit|; greedy = exact+ties/total")
    head = ["arch", "params_m", "loss_first", "loss_last", "greedy", "cached_vs_full", "padded_vs_alone",
            "pad_tokens_same", "chunk_vs_fp64", "recurrent_vs_fp64", "bf16_chunk_vs_fp64", "bf16_recurrent_vs_fp64",
            "bf16_cached_vs_full", "seconds", "ok"]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = [head] + [[fmt(r[h]) for h in head] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(transformers=transformers.__version__, torch=torch.__version__,
                           device=dev_name, rows=rows), f, indent=2)
    print("ALL OK" if ok_all else "SOME CHECKS FAILED")
    sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
