#!/usr/bin/env python
"""GPU check of the CUDA-graph decode step (models/common/decode_graph.py) at ~370M, bf16, random init.

Per architecture (configs/<arch>/370m.json), prompt length P (512, 2048, 16384) and batch B (1, 8):
  - greedy `generate` of --new-tokens tokens with graphs on and off: the tokens must be identical; a mismatch
    is reported with the step, the row and the eager top-2 logit gap there (bf16 near-ties are reported, and
    pass when the gap is <= --tie-tol);
  - timing: per-token latency = the median interval between consecutive decode steps inside `generate`
    (a StoppingCriteria synchronises and reads the clock at every step; --repeats generate calls of N tokens),
    decode tokens/s = B / that latency; t_prefill = generate(1 new token), median of --repeats. (Session 4
    took (tN - t1) / (N - 1) instead: at a 16K prompt that difference of two totals carried the prefill's jitter);
  - step latency without generate's own per-token work: model(tok, cache) in a loop, graphs on and off;
  - latency@16K / latency@512 (the graph step should not depend on the context).
Then beam search (num_beams=2) with graphs on == off. Prints a table last; JSON to $OUT (if set). Exit 1 on failure.

    PYTHONPATH=src python scripts/check_decode_graph_gpu.py
    PYTHONPATH=src python scripts/check_decode_graph_gpu.py --archs gla --prompts 512,2048 --batches 1
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, StoppingCriteria  # noqa: E402

import linattn_models  # noqa: E402
from linattn_models.models.common import CACHE_OUTPUT_NAME  # noqa: E402


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def build(arch, size):
    cfg = AutoConfig.from_pretrained(linattn_models.configs_path(arch, size))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = None  # fixed length: no early stop
    model.generation_config.pad_token_id = cfg.pad_token_id
    return model.eval(), cfg


class StepClock(StoppingCriteria):
    """Reads the clock (after a device sync) each time generate checks whether to stop, i.e. once per step."""

    def __init__(self):
        self.t = []

    def __call__(self, input_ids, scores, **kwargs):
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        self.t.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def step_intervals(model, x, graphs, n):
    clock = StepClock()
    generate(model, x, graphs, max_new_tokens=n, stopping_criteria=[clock])
    return [b - a for a, b in zip(clock.t, clock.t[1:])]


def generate(model, x, graphs, **kw):
    model.enable_decode_graph(graphs)
    return model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, **kw)


def compare_tokens(model, x, n, tie_tol):
    """Greedy tokens with graphs on vs off; (ok, detail) with the first mismatch's top-2 gap."""
    kw = dict(max_new_tokens=n, return_dict_in_generate=True, output_logits=True)
    on, off = generate(model, x, True, **kw), generate(model, x, False, **kw)
    P = x.shape[1]
    a, b = on.sequences[:, P:], off.sequences[:, P:]
    max_logit_diff = max((la.float() - lb.float()).abs().max().item() for la, lb in zip(on.logits, off.logits))
    if torch.equal(a, b):
        return True, {"tokens_equal": True, "max_logit_diff_step_by_step": max_logit_diff}
    diff = (a != b).nonzero()
    step = int(diff[:, 1].min())
    row = int(diff[diff[:, 1] == step][0, 0])
    top2 = off.logits[step][row].float().topk(2).values
    gap = (top2[0] - top2[1]).item()
    return gap <= tie_tol, {"tokens_equal": False, "first_mismatch_step": step, "row": row,
                            "eager_top2_gap": gap, "max_logit_diff_step_by_step": max_logit_diff}


def step_latency(model, x, graphs, steps):
    """Seconds per model(tok, cache) decode step, no generate around it (argmax fed back)."""
    model.enable_decode_graph(graphs)
    with torch.no_grad():
        out = model(x, use_cache=True, logits_to_keep=1)
        cache, tok = out[CACHE_OUTPUT_NAME], out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(3):  # warm-up (captures the graph)
            tok = model(tok, cache=cache).logits[:, -1].argmax(-1, keepdim=True)

        def loop():
            t = tok
            for _ in range(steps):
                t = model(t, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
            return t
        seconds, _ = sync_time(loop)
    return seconds / steps


def run_case(model, vocab, P, B, args):
    g = torch.Generator().manual_seed(P * 10 + B)
    x = torch.randint(3, vocab, (B, P), generator=g).cuda()
    N = args.new_tokens
    ok, detail = compare_tokens(model, x, N, args.tie_tol)
    t1 = statistics.median(sync_time(lambda: generate(model, x, False, max_new_tokens=1))[0]
                           for _ in range(args.repeats))
    row = {"prompt": P, "batch": B, "ok": ok, **detail, "t_prefill_s": t1}
    for name, graphs in (("graph", True), ("eager", False)):
        per_tok = statistics.median(sum((step_intervals(model, x, graphs, N) for _ in range(args.repeats)), []))
        row[f"{name}_ms_per_token"] = per_tok * 1e3
        row[f"{name}_tokens_per_s"] = B / per_tok
        row[f"{name}_step_ms"] = step_latency(model, x, graphs, args.step_iters) * 1e3
        if graphs:  # (turning graphs off drops them)
            row["capture_s"] = max(g.capture_seconds for g in model._decode_graphs.graphs.values())
    row["speedup"] = row["eager_ms_per_token"] / row["graph_ms_per_token"]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="linear_transformer,retnet,gla")
    ap.add_argument("--size", default="370m")
    ap.add_argument("--prompts", default="512,2048,16384")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-iters", type=int, default=32)
    ap.add_argument("--beam-new-tokens", type=int, default=16)
    ap.add_argument("--tie-tol", type=float, default=0.125, help="bf16 top-2 gap counted as a near tie")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    prompts = [int(p) for p in args.prompts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"cache field: {CACHE_OUTPUT_NAME}", flush=True)
    start = time.perf_counter()
    rows, failed = [], False
    for arch in args.archs.split(","):
        model, cfg = build(arch, args.size)
        print(f"\n== {arch} {args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, bf16",
              flush=True)
        for P in prompts:
            for B in batches:
                r = {"arch": arch, **run_case(model, cfg.vocab_size, P, B, args)}
                rows.append(r)
                failed |= not r["ok"]
                print(f"  P={P:>6} B={B}: tokens {'equal' if r['tokens_equal'] else 'DIFFER ' + str(r)} | "
                      f"graph {r['graph_ms_per_token']:.2f} ms/tok ({r['graph_tokens_per_s']:.0f} tok/s, step "
                      f"{r['graph_step_ms']:.2f} ms) | eager {r['eager_ms_per_token']:.2f} ms/tok (step "
                      f"{r['eager_step_ms']:.2f} ms) | x{r['speedup']:.1f} | capture {r['capture_s']:.2f}s | "
                      f"{time.perf_counter() - start:.0f}s",
                      flush=True)
        x = torch.randint(3, cfg.vocab_size, (2, 512), generator=torch.Generator().manual_seed(9)).cuda()
        beams = [generate(model, x, graphs, max_new_tokens=args.beam_new_tokens, num_beams=2)
                 for graphs in (True, False)]
        beam_ok = torch.equal(beams[0], beams[1])
        failed |= not beam_ok
        rows.append({"arch": arch, "beam_search_equal": beam_ok})
        print(f"  beam search (num_beams=2, B=2, P=512): graph == eager: {beam_ok}", flush=True)
        del model
        torch.cuda.empty_cache()

    ratios = {}
    for r in rows:
        if "prompt" in r and r["prompt"] == max(prompts):
            base = next(b for b in rows if b.get("arch") == r["arch"] and b.get("prompt") == min(prompts)
                        and b.get("batch") == r["batch"])
            for name in ("graph", "eager"):
                ratios[(r["arch"], r["batch"], name)] = r[f"{name}_ms_per_token"] / base[f"{name}_ms_per_token"]
    print(f"\ndecode {args.new_tokens} tokens, greedy, bf16; ms/tok = median step interval inside generate, step = "
          f"model(tok, cache) alone; ratio = latency@{max(prompts)} / latency@{min(prompts)}")
    head = ("arch", "P", "B", "tokens", "graph_ms/tok", "graph_tok/s", "graph_step_ms", "eager_ms/tok",
            "eager_tok/s", "eager_step_ms", "speedup")
    print("  ".join(f"{h:>13}" for h in head))
    for r in rows:
        if "prompt" not in r:
            continue
        cells = (r["arch"], r["prompt"], r["batch"], "equal" if r["tokens_equal"] else
                 ("tie" if r["ok"] else "DIFFER"), f"{r['graph_ms_per_token']:.3f}", f"{r['graph_tokens_per_s']:.0f}",
                 f"{r['graph_step_ms']:.3f}", f"{r['eager_ms_per_token']:.3f}", f"{r['eager_tokens_per_s']:.0f}",
                 f"{r['eager_step_ms']:.3f}", f"{r['speedup']:.1f}")
        print("  ".join(f"{str(c):>13}" for c in cells))
    for (arch, B, name), v in sorted(ratios.items()):
        print(f"latency ratio {arch} B={B} {name}: {v:.2f}")
    for r in rows:
        if "beam_search_equal" in r:
            print(f"beam search {r['arch']}: {'equal' if r['beam_search_equal'] else 'DIFFER'}")
    print(f"total {time.perf_counter() - start:.0f}s; {'SOME CHECKS FAILED' if failed else 'all checks passed'}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "check_decode_graph_gpu.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "transformers": transformers.__version__, "args": vars(args), "rows": rows,
                       "latency_ratio": {f"{a}/B={b}/{n}": v for (a, b, n), v in ratios.items()}}, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
