#!/usr/bin/env python
"""GPU check of the fla -> ours checkpoint conversion (issue #8) against fla 0.6.0 itself. No downloads.

Per case: build a random fla model from its config class (fla.models.GLAConfig / RetNetConfig /
LinearAttentionConfig / DeltaNetConfig / GatedDeltaNetConfig; norm weights moved off 1 so a misplaced norm shows; learnable feature maps, q and k
separately, redrawn at scale 1/sqrt(fan-in), as fla's N(0, 0.02) init leaves them almost no effect on the
logits), save_pretrained, convert with linattn_models.convert_fla (fp32, and again with dtype="bf16"), load
ours with AutoModelForCausalLM, then on cuda in fp32 and in bf16:
  - logits on a random prompt (--batch x --prompt-len): max|Δ| / max|logit| of ours vs fla;
  - greedy decoding of --new-tokens tokens from the first row, ours with generate (cached) vs fla's argmax after
    each prefix of that sequence (one full forward): tokens equal, or the first mismatch with fla's top-2 logit gap there (a gap within 2x the
    logit tolerance is a near tie, explained by the logit error).
fp32 runs with TRITON_F32_DEFAULT=ieee (fp32 dots in fp32, not tf32, in fla's kernels too) and TF32 off.
Cases meant to be refused (expected "refused"; none at present) must raise ValueError. Prints a table;
exit status 1 on any failure; JSON to --json (default $OUT/check_convert_fla_gpu.json when $OUT is set).
One case's exception is reported and does not stop the others.

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl   # fla wheels (see docs/gpu.md)
    PYTHONPATH=/tmp/site:src python scripts/check_convert_fla_gpu.py                 # hidden 512, 6 layers
    PYTHONPATH=/tmp/site:src python scripts/check_convert_fla_gpu.py --size medium --cases gla,retnet
"""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # before triton is imported (by torch or fla)

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_models_gpu import max_rel  # noqa: E402

SIZES = {"small": (512, 6), "medium": (1024, 24), "large": (2048, 24)}  # hidden size, layers
# name -> (fla model type, fla config overrides, expected outcome)
CASES = {
    "gla": ("gla", {}, "ok"),
    "gla_conv_unfused": ("gla", {"use_short_conv": True, "fuse_norm": False}, "ok"),
    "retnet": ("retnet", {}, "ok"),
    # fla's default: feature_map='elementwise_product', tie_feature_map_qk=False (separate q and k maps)
    "linear_attn_default": ("linear_attn", {}, "ok"),
    "linear_attn_elu_norm": ("linear_attn", {"feature_map": "elu", "norm_feature_map": True}, "ok"),
    "linear_attn_hedgehog": ("linear_attn", {"feature_map": "hedgehog"}, "ok"),  # untied q/k maps
    # fla's defaults: DeltaNet ungated (o_norm only), Gated DeltaNet gated; head_dim 64 keeps small sizes whole
    "delta_net": ("delta_net", {}, "ok"),
    "delta_net_gate": ("delta_net", {"use_gate": True}, "ok"),
    "gated_deltanet": ("gated_deltanet", {"head_dim": 64, "num_heads": 8}, "ok"),
    "gated_deltanet_neg_eig": ("gated_deltanet", {"head_dim": 64, "num_heads": 8, "allow_neg_eigval": True}, "ok"),
}


def build_fla(fla_type, overrides, args):
    import fla.models as F

    config_cls, model_cls = {"gla": (F.GLAConfig, F.GLAForCausalLM), "retnet": (F.RetNetConfig, F.RetNetForCausalLM),
                             "linear_attn": (F.LinearAttentionConfig, F.LinearAttentionForCausalLM),
                             "delta_net": (F.DeltaNetConfig, F.DeltaNetForCausalLM),
                             "gated_deltanet": (F.GatedDeltaNetConfig, F.GatedDeltaNetForCausalLM)}[fla_type]
    if args.fla_attn_mode and args.fla_attn_mode != "none":  # kernel choice only (the conversion ignores it): fla's chunk kernels autotune for minutes
        overrides = dict(overrides, attn_mode=args.fla_attn_mode)
    config = config_cls(hidden_size=args.hidden, num_hidden_layers=args.layers, vocab_size=args.vocab, **overrides)
    torch.manual_seed(args.seed)
    model = model_cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # random norm weights: a norm mapped to the wrong place changes the logits
                p.add_(0.2 * torch.randn_like(p))
            elif ".feature_map_" in name:  # Linear(K, K) layers: weights N(0, 1/K), biases N(0, 0.25)
                p.normal_(std=p.shape[-1] ** -0.5 if p.ndim == 2 else 0.5)
    return model.eval()


@torch.no_grad()
def compare(fla_model, ours, prompt, args, tol):
    """Logits and greedy tokens of ours vs fla (the reference). Ours from generate (cached); fla's choices from
    one full forward over our tokens (fla's own generate depends on the transformers version's cache naming)."""
    ref = fla_model(input_ids=prompt, use_cache=False).logits.float()
    out = ours(input_ids=prompt, use_cache=False).logits.float()
    res = {"logits_rel": max_rel(out, ref), "max_logit": ref.abs().max().item(),
           "finite": bool(torch.isfinite(out).all())}
    n = args.new_tokens
    x = prompt[:1, :prompt.shape[1] - n]  # prompt + new tokens = the logits check's length (fla tunes per length)
    ours.generation_config.eos_token_id = None  # exactly n tokens
    mine = ours.generate(x, max_new_tokens=n, do_sample=False)[0, x.shape[1]:].tolist()
    # fla's greedy choice after each prefix of our sequence, from ONE full forward (teacher forcing): equal at
    # every position <=> the greedy sequences are equal. One call, because fla autotunes per new length.
    full = torch.cat([x, x.new_tensor([mine])], dim=1)
    logits = fla_model(input_ids=full, use_cache=False).logits[0, x.shape[1] - 1:-1].float()
    res["tokens_equal"] = f"{n}/{n}"
    for i in range(n):
        if logits[i].argmax().item() != mine[i]:
            top2 = logits[i].topk(2).values
            gap = (top2[0] - top2[1]).item() / logits[i].abs().max().item()
            res.update(tokens_equal=None, first_mismatch=i, top2_gap_rel=gap, near_tie=gap <= 2 * tol)
            break
    res["ok"] = res["finite"] and res["logits_rel"] <= tol and res.get("near_tie", True)
    return res, ref, out


def bf16_ok(res, ratio):
    """bf16: these random models are ill-conditioned in bf16 (fla's own bf16 logits differ from its fp32 ones by
    0.07-0.25 of the max logit, 2026-11-26 run), so ours passes when its bf16 error against fla's fp32 logits is
    at most `ratio` times fla's own (+0.01), and any greedy mismatch is a near tie."""
    return (res["finite"] and res["ours_bf16_vs_fp32"] <= ratio * res["fla_bf16_vs_fp32"] + 0.01
            and res.get("near_tie", True))


def run_case(name, args, tmp):
    from transformers import AutoModelForCausalLM

    from linattn_models import convert_fla

    fla_type, overrides, expect = CASES[name]
    fla_model = build_fla(fla_type, overrides, args)
    src = os.path.join(tmp, name, "fla")
    fla_model.save_pretrained(src)
    if expect == "refused":
        try:
            convert_fla(src, os.path.join(tmp, name, "ours"))
        except ValueError as e:
            return {"ok": True, "refused": str(e)}
        return {"ok": False, "error": "converted a config that should have been refused"}
    dst32 = convert_fla(src, os.path.join(tmp, name, "ours_fp32"))
    dst16 = convert_fla(src, os.path.join(tmp, name, "ours_bf16"), dtype="bf16")
    g = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(0, args.vocab, (args.batch, args.prompt_len), generator=g).cuda()
    result, fp32_logits = {}, None
    for dtype, dst, tol in ((torch.float32, dst32, args.tol_fp32), (torch.bfloat16, dst16, args.tol_bf16)):
        if str(dtype).split(".")[-1] not in args.dtypes.split(","):
            continue
        fla_model = fla_model.to("cuda", dtype)
        ours = AutoModelForCausalLM.from_pretrained(dst, dtype=dtype).cuda().eval()
        if next(ours.parameters()).dtype != dtype:
            raise RuntimeError(f"ours loaded as {next(ours.parameters()).dtype}, expected {dtype}")
        res, ref, out = compare(fla_model, ours, prompt, args, tol)
        if fp32_logits is None:
            fp32_logits = ref
        else:  # each model's own bf16 error, against fla's fp32 logits: ours should not be worse than fla's
            res["fla_bf16_vs_fp32"] = max_rel(ref, fp32_logits)
            res["ours_bf16_vs_fp32"] = max_rel(out, fp32_logits)
            res["ok"] = bf16_ok(res, args.bf16_ratio)
        result[str(dtype).split(".")[-1]] = res
        del ours, ref, out
        torch.cuda.empty_cache()
    result["ok"] = all(r["ok"] for r in result.values() if isinstance(r, dict))
    return result


def row(name, r):
    if "error" in r:
        return f"| {name} | FAIL | {r['error'].splitlines()[-1][:100]} | | |"
    if "refused" in r:
        return f"| {name} | ok (refused) | {r['refused'][:100]} | | |"
    cells = []
    for dt in ("float32", "bfloat16"):
        if dt not in r:
            cells.append("-")
            continue
        x = r[dt]
        gen = x["tokens_equal"] or (f"first mismatch @{x['first_mismatch']}, top-2 gap {x['top2_gap_rel']:.1e}"
                                    + (" (near tie)" if x["near_tie"] else ""))
        extra = (f" (bf16 vs fla fp32: fla {x['fla_bf16_vs_fp32']:.1e}, ours {x['ours_bf16_vs_fp32']:.1e})"
                 if "fla_bf16_vs_fp32" in x else "")
        cells.append(f"{x['logits_rel']:.1e} / {gen}{extra}")
    return f"| {name} | {'ok' if r['ok'] else 'FAIL'} | {cells[0]} | {cells[1]} | {r['seconds']:.0f} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="hidden size / layers preset")
    parser.add_argument("--hidden", type=int, help="override the preset's hidden size")
    parser.add_argument("--layers", type=int, help="override the preset's number of layers")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--tol-fp32", type=float, default=1e-3, help="max |Δ logit| / max |logit|, fp32")
    parser.add_argument("--tol-bf16", type=float, default=5e-2, help="bf16 near-tie scale for greedy mismatches "
                        "(bf16 logits are judged against fla's own bf16 error: --bf16-ratio)")
    parser.add_argument("--bf16-ratio", type=float, default=1.5,
                        help="bf16: ours vs fla-fp32 error at most this times fla-bf16 vs fla-fp32 (+0.01)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fla-attn-mode", default="fused_recurrent",
                        help="fla's kernel choice (same math; 'none' keeps each config's default, chunk kernels, "
                        "which autotune per sequence length for minutes on a fresh machine: two runs of 200 s and "
                        "420 s finished no case on 2026-11-26)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--json", default=os.path.join(os.environ["OUT"], "check_convert_fla_gpu.json")
                        if os.environ.get("OUT") else None)
    args = parser.parse_args()
    hidden, layers = SIZES[args.size]
    args.hidden, args.layers = args.hidden or hidden, args.layers or layers
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (fla's kernels are Triton GPU kernels)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import linattn_models  # noqa: F401  (registers our types, and placeholders under fla's free types)
    import fla  # after ours: fla's own registrations must replace the placeholders

    registered = {t: f"{CONFIG_MAPPING[t].__module__}.{CONFIG_MAPPING[t].__name__}" for t in ("gla", "retnet",
                                                                                             "linear_attn")}
    print(f"after `import linattn_models; import fla`: {registered}", flush=True)
    if not all(v.startswith("fla.") for v in registered.values()):
        print("FAIL: fla's model types are not fla's after importing both", flush=True)
        return 1

    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
           "fla": fla.__version__, "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
           "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
           "TRITON_F32_DEFAULT": os.environ.get("TRITON_F32_DEFAULT")}
    print(json.dumps(env), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.time()
            try:
                results[name] = run_case(name, args, tmp)
            except Exception:  # report it, go on with the other cases
                results[name] = {"ok": False, "error": traceback.format_exc()}
                print(results[name]["error"], file=sys.stderr, flush=True)
            results[name]["seconds"] = time.time() - t0
            print(name, json.dumps(results[name]), flush=True)

    print(f"\nfla {fla.__version__} -> ours, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
          f"prompt {args.batch}x{args.prompt_len}, {args.new_tokens} greedy tokens; logits: max|Δ|/max|logit| "
          f"(tolerance fp32 {args.tol_fp32:g}, bf16 {args.tol_bf16:g})")
    print("| case | result | fp32 logits / greedy | bf16 logits / greedy | s |\n| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(row(name, r))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
