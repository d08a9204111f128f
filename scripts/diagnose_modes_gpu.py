#!/usr/bin/env python
"""Why do chunk and recurrent logits of the bf16 RetNet/GLA models differ on the GPU? (issue #4)

check_models_gpu.py compares the two modes with each other. This script compares each against a float64 run of
the same model (torch backend) and localises the error:

  1. model level, per arch, untrained and after --steps bf16 AdamW steps (as check_models_gpu.py): logits of
     {fp32, bf16} x {chunk, recurrent} (Triton kernels) vs the fp64 logits; max|Δ| / max|ref| and ‖Δ‖/‖ref‖;
  2. sensitivity: relative noise ε on one layer's attention output (fp32 model) -> relative change of the logits,
     divided by ε (how much the model amplifies an op's error);
  3. op level, on the actual bf16 activations of every layer (captured in chunk mode): ours chunk / ours
     recurrent / fla chunk / fla fused_recurrent vs the fp64 reference of the op on the same inputs.

If ours and fla have the same op error on the real activations and the model amplifies it, the mode gap is the
model's conditioning in bf16, not a kernel bug.

    PYTHONPATH=src python scripts/diagnose_modes_gpu.py --archs retnet gla linear_transformer
"""
import argparse
import copy
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

import linattn_models  # noqa: E402
from linattn_models import ops  # noqa: E402
from linattn_models.layers import gla as gla_layer, linear_attention as la_layer, retention as ret_layer  # noqa: E402
from linattn_models.ops.reference import run_torch  # noqa: E402
from check_models_gpu import fp64_logits, train  # noqa: E402

LAYER_MODULES = (gla_layer, la_layer, ret_layer)
ORIG_ATTEND = {m: m.attend for m in LAYER_MODULES}


def errs(x, ref):
    x, ref = x.double(), ref.double()
    d = x - ref
    return dict(max=(d.abs().max() / ref.abs().max()).item(), norm=(d.norm() / ref.norm()).item())


def fmt(e):
    return f"max {e['max']:.2e} norm {e['norm']:.2e}"


def patch(fn):
    for m in LAYER_MODULES:
        m.attend = fn


def unpatch():
    for m, f in ORIG_ATTEND.items():
        m.attend = f


@torch.no_grad()
def logits_of(model, prompt, mode):
    model.set_attn_mode(mode)
    out = model(prompt, use_cache=False).logits.double()
    model.set_attn_mode("auto")
    return out


@torch.no_grad()
def sensitivity(model, prompt, layer, eps):
    """‖Δlogits‖/‖logits‖ / ε when layer `layer`'s op output gets relative Gaussian noise of size ε."""
    base = logits_of(model, prompt, "chunk")
    calls = {"i": 0}

    def noisy(op, *a, **kw):
        o, s = ORIG_ATTEND[gla_layer](op, *a, **kw)
        if calls["i"] == layer:
            o = o + eps * o.norm() / o.numel() ** 0.5 * torch.randn_like(o)
        calls["i"] += 1
        return o, s

    patch(noisy)
    try:
        pert = logits_of(model, prompt, "chunk")
    finally:
        unpatch()
    return (pert - base).norm().item() / base.norm().item() / eps


@torch.no_grad()
def capture_inputs(model, prompt):
    got = []

    def keep(op, q, k, v, g=None, **kw):
        got.append((op, q.clone(), k.clone(), v.clone(), None if g is None else g.clone()))
        return ORIG_ATTEND[gla_layer](op, q, k, v, g, **kw)

    patch(keep)
    try:
        logits_of(model, prompt, "chunk")
    finally:
        unpatch()
    return got


def fla_ops(op):
    try:
        if op is ops.retention:
            from fla.ops.retention import chunk_retention, fused_recurrent_retention
            return (lambda q, k, v, g: chunk_retention(q, k, v)[0],
                    lambda q, k, v, g: fused_recurrent_retention(q, k, v)[0])
        if op is ops.gated_linear_attention:
            from fla.ops.gla import chunk_gla, fused_recurrent_gla
            return (lambda q, k, v, g: chunk_gla(q, k, v, g)[0],
                    lambda q, k, v, g: fused_recurrent_gla(q, k, v, gk=g)[0])
        if op is ops.linear_attention:
            from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn
            return (lambda q, k, v, g: chunk_linear_attn(q, k, v, normalize=False)[0],
                    lambda q, k, v, g: fused_recurrent_linear_attn(q, k, v, normalize=False)[0])
    except Exception as e:  # noqa: BLE001
        print(f"  fla unavailable: {e!r}"[:200])
    return None


@torch.no_grad()
def op_errors(captured, layers):
    rows = []
    for i in layers:
        op, q, k, v, g = captured[i]
        H = q.shape[2]
        if op is ops.retention:
            g64 = ops.retention_log_decays(H, q.device, torch.float64).view(1, 1, H).expand(q.shape[:3])
        else:
            g64 = None if g is None else g.double()
        ref, _ = run_torch(q.double(), k.double(), v.double(), g64, q.shape[-1] ** -0.5, None, False, None, "chunk")
        args = (q, k, v) if g is None else (q, k, v, g)
        row = {"layer": i, "|o|max": ref.abs().max().item(), "|q|max": q.abs().max().item(),
               "|k|max": k.abs().max().item(), "|v|max": v.abs().max().item()}
        # cancellation: ‖ |q|·|S| ‖ vs ‖o‖ -- approximated by the reference run on |q|, |k|, |v| (gates kept)
        absref, _ = run_torch(q.double().abs(), k.double().abs(), v.double().abs(), g64, q.shape[-1] ** -0.5, None,
                              False, None, "chunk")
        row["cancellation"] = (absref.norm() / ref.norm()).item()
        for mode in ("chunk", "recurrent"):
            row[f"ours_{mode}"] = errs(op(*args, mode=mode, backend="triton")[0], ref)
        f = fla_ops(op)
        if f is not None:
            for name, fn in zip(("fla_chunk", "fla_recurrent"), f):
                try:
                    row[name] = errs(fn(q, k, v, g), ref)
                except Exception as e:  # noqa: BLE001
                    row[name] = {"error": repr(e)[:200]}
        rows.append(row)
        print(f"  layer {i:2d}: |o|max {row['|o|max']:.3g} |q|max {row['|q|max']:.3g} |k|max {row['|k|max']:.3g} "
              f"cancellation {row['cancellation']:.3g} | "
              + " | ".join(f"{n} {fmt(row[n])}" for n in ("ours_chunk", "ours_recurrent", "fla_chunk", "fla_recurrent")
                           if n in row and "max" in row[n]), flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["retnet", "gla", "linear_transformer"])
    p.add_argument("--size", default="370m")
    p.add_argument("--prompt-len", type=int, default=2048)
    p.add_argument("--steps-list", type=int, nargs="+", default=[0, 6])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--train-len", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--op-layers", type=int, nargs="+", default=[0, 1, 11, 23])
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else device}", flush=True)
    results = []
    for arch in args.archs:
        for steps in args.steps_list:
            t0 = time.time()
            cfg = AutoConfig.from_pretrained(linattn_models.configs_path(arch, args.size))
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(cfg).to(device)
            args.steps = steps
            losses = train(model, args, device, cfg.vocab_size) if steps else []
            model.eval()
            g = torch.Generator(device="cpu").manual_seed(1)
            prompt = torch.randint(3, cfg.vocab_size, (1, args.prompt_len), generator=g).to(device)
            print(f"\n== {arch} after {steps} steps (losses {' '.join(f'{x:.3f}' for x in losses)})", flush=True)
            ref = fp64_logits(model, prompt)
            row = dict(arch=arch, steps=steps, losses=losses)
            for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                m = model if dt == torch.float32 else copy.deepcopy(model).to(dt)
                for mode in ("chunk", "recurrent"):
                    row[f"{name}_{mode}"] = errs(logits_of(m, prompt, mode), ref)
                    print(f"  logits {name} {mode:9s} vs fp64: {fmt(row[f'{name}_{mode}'])}", flush=True)
                if dt == torch.bfloat16:
                    row["ops"] = op_errors(capture_inputs(m, prompt), [i for i in args.op_layers
                                                                      if i < cfg.num_hidden_layers])
                del m
            row["amplification"] = {L: sensitivity(model, prompt, L, args.eps) for L in (0, cfg.num_hidden_layers // 2)}
            print(f"  amplification (‖Δlogits‖/‖logits‖ per relative ε={args.eps} on one layer's op output): "
                  + ", ".join(f"layer {L}: {a:.3g}" for L, a in row["amplification"].items()), flush=True)
            row["seconds"] = round(time.time() - t0, 1)
            results.append(row)
            del model, ref
            torch.cuda.empty_cache()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "diagnose_modes_gpu.json"), "w") as f:
            json.dump(results, f, indent=1)
    print("\nsummary: logits vs fp64, max|Δ|/max|ref|")
    print(f"{'arch':20s} {'steps':>5s} {'fp32 chunk':>10s} {'fp32 rec':>10s} {'bf16 chunk':>10s} {'bf16 rec':>10s} "
          f"{'ampl L0':>8s}")
    for r in results:
        a = list(r["amplification"].values())
        print(f"{r['arch']:20s} {r['steps']:5d} {r['fp32_chunk']['max']:10.2e} {r['fp32_recurrent']['max']:10.2e} "
              f"{r['bf16_chunk']['max']:10.2e} {r['bf16_recurrent']['max']:10.2e} {a[0]:8.3g}")


if __name__ == "__main__":
    main()
