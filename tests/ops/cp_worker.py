"""One rank of the context-parallel test (tests/ops/test_context_parallel.py launches WORLD_SIZE of these).

Every rank builds the same random inputs of the whole sequence, runs the op on the whole sequence in float64 on
the torch backend (the reference), then its own piece through ops.context_parallel with the dtype and backend
asked for, and compares its piece's outputs, the final state and every gradient (of its piece's inputs, and of
the initial state on rank 0) with the reference's. Exit status 0 only if all match; mismatches are printed.
"""
import argparse
import os
import sys
import zlib

import torch
import torch.distributed as dist
import torch.nn.functional as F

from linattn_models import ops

B, H, K, V = 2, 2, 8, 6
PIECES = {2: [23, 27], 3: [17, 20, 13], 4: [9, 16, 1, 24]}  # uneven on purpose (one piece of a single token)


def inputs(name, T, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K) / K ** 0.5, "v": r(B, T, H, V)}
    if name in ("simple_gla", "gated_delta_rule"):
        x["g"] = F.logsigmoid(r(B, T, H) + 2)
    if name == "gated_linear_attention":
        x["g"] = F.logsigmoid(r(B, T, H, K) + 2)
    if name in ("delta_rule", "gated_delta_rule"):
        x["beta"] = torch.sigmoid(r(B, T, H))
    return x


def positional(name, x):
    return [x[n] for n in ("g", "beta") if n in x]


def run(name, op, x, h0, kw, cp, group=None):
    o, final = (ops.context_parallel(op, x["q"], x["k"], x["v"], *positional(name, x), initial_state=h0,
                                     output_final_state=True, group=group, **kw) if cp else
                op(x["q"], x["k"], x["v"], *positional(name, x), initial_state=h0, output_final_state=True, **kw))
    return o, final


def check(name, dtype, backend, mode, device, rank, world):
    normalize = name == "linear_attention_normalized"
    op = ops.linear_attention if normalize else getattr(ops, name)
    T = sum(PIECES[world])
    start = sum(PIECES[world][:rank])
    end = start + PIECES[world][rank]
    full = inputs(name, T, seed=zlib.crc32(name.encode()))  # the same on every rank (hash() is salted per process)
    extra = {"use_qk_l2norm": True} if "delta" in name else {}
    if normalize:
        extra = {"normalize": True}
        full["q"], full["k"] = F.elu(full["q"]) + 1, F.elu(full["k"]) + 1  # a positive feature map
    g = torch.Generator().manual_seed(7)
    wo = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    ws = torch.randn(B, H, K, V, generator=g, dtype=torch.float64)
    h0 = None if normalize else torch.randn(B, H, K, V, generator=g, dtype=torch.float64)

    ref_x = {n: t.clone().requires_grad_() for n, t in full.items()}
    ref_h0 = None if h0 is None else h0.clone().requires_grad_()
    o_ref, s_ref = run(name, op, ref_x, ref_h0, dict(extra, backend="torch"), cp=False)
    loss = (o_ref * wo).sum() + (0 if normalize else (s_ref * ws).sum())
    loss.backward()

    piece = {n: t[:, start:end].to(device, dtype).clone().requires_grad_() for n, t in full.items()}
    my_h0 = None if (h0 is None or rank) else h0.to(device, torch.float64 if dtype == torch.float64 else
                                                    torch.float32).clone().requires_grad_()
    o, s = run(name, op, piece, my_h0, dict(extra, backend=backend, mode=mode), cp=True)
    loss = (o.double() * wo[:, start:end].to(device)).sum()
    if rank == world - 1 and not normalize:  # the final state enters the loss once, on one rank
        loss = loss + (s.double() * ws.to(device)).sum()
    loss.backward()

    tol = 1e-9 if dtype == torch.float64 else 2e-4
    errs = {"o": (o, o_ref[:, start:end]), "final_state": (s, s_ref)}
    errs.update({f"d{n}": (piece[n].grad, ref_x[n].grad[:, start:end]) for n in full})
    if my_h0 is not None:
        errs["dh0"] = (my_h0.grad, ref_h0.grad)
    bad = []
    for n, (got, want) in errs.items():
        if got is None:
            bad.append(f"{n}: no gradient")
            continue
        err = ((got.double().cpu() - want).norm() / want.norm().clamp_min(1e-30)).item()
        if not err <= tol:
            bad.append(f"{n}: rel err {err:.2e} > {tol:.0e}")
    label = f"rank {rank}/{world} {name} {str(dtype)[6:]} {backend} {mode}"
    print(("FAIL " if bad else "ok   ") + label + ("  " + "; ".join(bad) if bad else ""), flush=True)
    return not bad


MODELS = {  # hybrids with short convs, rotary positions (RetNet's own and the attention layers'), a window, GQA
    "gated_deltanet-hybrid": ("GatedDeltaNetConfig", dict(attn_layers=[1], attn_num_heads=4, attn_num_kv_heads=2,
                                                          attn_window=9)),
    "retnet-hybrid": ("RetNetConfig", dict(attn_layers=[0])),
    "gla": ("GLAConfig", dict(use_short_conv=True)),
}


def check_model(name, rank, world):
    """A tiny model (float64, torch backend) on the whole sequence vs this rank's piece under split_sequence:
    the piece's logits, and every parameter gradient summed over the ranks."""
    import linattn_models
    from transformers import AutoModelForCausalLM
    cls, extra = MODELS[name]
    cfg = getattr(linattn_models, cls)(hidden_size=32, num_hidden_layers=3, num_heads=2, vocab_size=50,
                                       intermediate_size=64, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).double()
    T = sum(PIECES[world])
    start = sum(PIECES[world][:rank])
    end = start + PIECES[world][rank]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (2, T), generator=g)
    w = torch.randn(2, T, 50, generator=g, dtype=torch.float64)
    full = model(ids).logits
    (full * w).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with ops.split_sequence():
        piece = model(ids[:, start:end]).logits
    (piece * w[:, start:end]).sum().backward()
    bad = []
    err = ((piece - full[:, start:end]).norm() / full.norm()).item()
    if not err <= 1e-10:
        bad.append(f"logits: rel err {err:.2e}")
    for n, p in model.named_parameters():
        dist.all_reduce(p.grad)
        err = ((p.grad - ref[n]).norm() / ref[n].norm().clamp_min(1e-30)).item()
        if not err <= 1e-9:
            bad.append(f"grad {n}: rel err {err:.2e}")
    print(("FAIL " if bad else "ok   ") + f"rank {rank}/{world} model {name}" + ("  " + "; ".join(bad[:6]) if bad
                                                                                   else ""), flush=True)
    return not bad


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ops", default="", help="comma-separated op names (linear_attention_normalized too)")
    p.add_argument("--cases", default="", help="comma-separated dtype:backend:mode, e.g. float64:torch:chunk")
    p.add_argument("--models", default="", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    dist.init_process_group("nccl" if a.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{rank}") if a.device == "cuda" else torch.device("cpu")
    ok = True
    for case in filter(None, a.cases.split(",")):
        dtype, backend, mode = case.split(":")
        for name in a.ops.split(","):
            ok &= check(name, getattr(torch, dtype), backend, mode, device, rank, world)
    for name in filter(None, a.models.split(",")):
        ok &= check_model(name, rank, world)
    dist.destroy_process_group()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
