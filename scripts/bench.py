#!/usr/bin/env python3
"""The benchmark runner: named cases from one registry (CASES, at the end), a short table per case on stdout,
and everything measured, with card, versions and date, as JSON under --out.

    PYTHONPATH=src python3 scripts/bench.py --list
    PYTHONPATH=src python3 scripts/bench.py --cases linear_attention,retention --out bench-results
    PYTHONPATH=/tmp/site:src python3 scripts/bench.py --cases gla --set 'T=[2048,4096]' --profile   # fla carried
    python3 scripts/bench.py --tiny --cases linear_attention      # CPU smoke run (Triton interpreter, tiny shapes)

Kinds of case:
  ops     fwd and fwd+bwd ms of our op and its peers (fla's chunk op, torch SDPA flash causal) on the same inputs
          in the same process; do_bench medians; the forward's memory floor (q, k, v (, g) read and o written
          once at the copy bandwidth measured in this run). A case with several `configs` is a sweep: each
          config goes to the op's `kernel_config=` (keys of ops/triton/config.py) and its row says its time over
          the first config's and its largest output difference from it (a wrong config shows there).
  models  training tokens/s and peak memory (AdamW, bf16 autocast, fp32 master weights, median step); the
          `compile` case: torch.compile(model, fullgraph=True) against eager, step ms, first compiled step (the
          compile) and the two first steps' loss difference (docs/compile.md); then greedy generate with the
          forward compiled against plain eager decode (graph step off): ms/token both ways, the first compiled
          generate's seconds, and whether the tokens are the same.
  decode  greedy `generate`: per-token latency (median interval between decode steps) with the CUDA-graph decode
          step on and off, the decode step alone, and the checks that graphs change no token (greedy and beam).
--set NAME=VALUE (JSON, else a string) overrides a parameter of the selected cases, --tiny runs each case's
small CPU variant, --profile adds torch.profiler kernel time vs wall time and host time per call (cProfile).
Exit status 1 when a case raised or a check failed (the other cases still run).
"""
import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

T_START = time.perf_counter()  # the first-call child counts its imports from here
ROOT = Path(__file__).resolve().parents[1]
if "--tiny" in sys.argv:
    # Before torch/triton are imported: Triton reads TRITON_INTERPRET once, when a kernel is defined; hiding the
    # GPUs keeps a --tiny run on a GPU machine on the CPU too (as tests/conftest.py does for --device cpu).
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no network; nothing here downloads
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout without install

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OPS = {"linear_attention": "linear_attention", "retention": "retention", "simple_gla": "simple_gla",
       "gated_linear_attention": "gated_linear_attention"}  # family (the op's name) -> op
CASE_OF = {"gated_linear_attention": "gla"}  # case names: the family's, GLA's shortened
CPU_REPS = 3  # the CPU timer (no do_bench there): median of this many calls after one warm-up


def sync():
    if CUDA:
        torch.cuda.synchronize()


def log(*a):  # progress goes to stderr, so stdout is the tables
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------- ops

def op_inputs(family, B, T, H, D, dtype, seed=0):
    """q, k, v [B, T, H, D] (, g) in dtype: log gates logsigmoid(randn + 3), GLA's / 16 as its layer does."""
    from linattn_models.check import random_op_inputs
    gen = torch.Generator(device=DEV).manual_seed(seed)
    q, k, v, g, _ = random_op_inputs(family, B, T, H, D, D, N=1, gate_offset=3.0, generator=gen, device=DEV,
                                     strength=1 / 16 if family == "gated_linear_attention" else 1.0, dtype=torch.float32)
    return tuple(None if t is None else t.to(dtype) for t in (q, k, v, g))


def impl_fn(impl, family, kernel_config=None, mode="chunk"):
    """fn(q, k, v, g) -> o for impl ours | fla | sdpa."""
    if impl == "ours":
        from linattn_models import ops
        f = getattr(ops, OPS[family])
        kw = dict(backend="triton", mode=mode, kernel_config=kernel_config)
        if family in ("linear_attention", "retention"):
            return lambda q, k, v, g: f(q, k, v, **kw)[0]
        return lambda q, k, v, g: f(q, k, v, g, **kw)[0]
    if impl == "fla":
        if family == "linear_attention":
            from fla.ops.linear_attn import chunk_linear_attn
            return lambda q, k, v, g: chunk_linear_attn(q, k, v, normalize=False)[0]
        if family == "retention":
            from fla.ops.retention import chunk_retention
            return lambda q, k, v, g: chunk_retention(q, k, v)[0]
        if family == "simple_gla":
            from fla.ops.simple_gla import chunk_simple_gla
            return lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g)[0]
        from fla.ops.gla import chunk_gla
        return lambda q, k, v, g: chunk_gla(q, k, v, g=g)[0]
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = [SDPBackend.FLASH_ATTENTION] if CUDA else [SDPBackend.MATH]  # flash is CUDA-only

    def sdpa(q, k, v, g):
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True).transpose(1, 2)
    return sdpa


def step_of(fn, x, backward):
    """A no-argument call: the forward under no_grad, or forward+backward with fresh leaves' grads."""
    if not backward:
        return torch.no_grad()(lambda: fn(*x))
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in x]
    do = torch.randn_like(x[2])

    def step():
        for t in leaves:
            if t is not None:
                t.grad = None
        fn(*leaves).backward(do)
    return step


def outputs(fn, x, backward):
    """o, and with backward the input gradients under a fixed random cotangent, in float32 (sweep diffs)."""
    if not backward:
        with torch.no_grad():
            return [fn(*x).float()]
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in x]
    o = fn(*leaves)
    o.backward(torch.randn(o.shape, generator=torch.Generator(device=DEV).manual_seed(1), device=DEV, dtype=o.dtype))
    return [o.detach().float()] + [t.grad.float() for t in leaves if t is not None]


def median_ms(step):
    """triton.testing.do_bench median on a GPU (what the numbers in BENCHMARKS.md are); a wall-clock median on CPU."""
    if CUDA:
        from triton.testing import do_bench
        return do_bench(step, warmup=25, rep=100, return_mode="median")
    step()
    times = []
    for _ in range(CPU_REPS):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


_BANDWIDTH = []


def copy_bandwidth():
    """Bytes read + written per second by a device copy (1 GiB on a GPU), measured once per run."""
    if not _BANDWIDTH:
        x = torch.empty(1 << (30 if CUDA else 24), dtype=torch.uint8, device=DEV)
        y = torch.empty_like(x)
        _BANDWIDTH.append(2 * x.numel() / (median_ms(lambda: y.copy_(x)) * 1e-3))
    return _BANDWIDTH[0]


def floor_ms(x):
    """The forward's memory floor: q, k, v (, g) read once, o (v's shape and dtype) written once."""
    nbytes = sum(t.numel() * t.element_size() for t in x if t is not None) + x[2].numel() * x[2].element_size()
    return nbytes / copy_bandwidth() * 1e3


def profile(step, iters=10 if CUDA else 2, top=8):
    """Where a call's time goes: wall ms per call back to back (one sync at the end: the host's cost per call
    when the GPU waits on it), GPU kernel ms and launches per call (torch.profiler; kernels << wall means
    host-bound), the top kernels, and the top host functions by own time (cProfile)."""
    import cProfile
    import pstats
    from torch.profiler import ProfilerActivity, profile as torch_profile
    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    out = {"wall_ms": (time.perf_counter() - t0) / iters * 1e3}
    if CUDA:
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for _ in range(iters):
                step()
            sync()
        kernels = sorted((e for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA),
                         key=lambda e: -e.device_time_total)
        out["kernels_ms"] = sum(e.device_time_total for e in kernels) / iters / 1e3
        out["launches"] = sum(e.count for e in kernels) // iters
        out["top_kernels"] = [[e.key[:70], e.count // iters, round(e.device_time_total / iters / 1e3, 4)]
                              for e in kernels[:top]]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iters):
        step()
    sync()
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (calls, prim, tottime, cumtime, callers)}
    host = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    out["top_host"] = [[f"{Path(f).name}:{ln}:{name}", round(s[2] / iters * 1e3, 4)] for (f, ln, name), s in host]
    return out


def fla_status():
    """None if fla imports, else why not (it is importable only when its wheels are carried: docs/gpu.md)."""
    try:
        import fla.ops  # noqa: F401
        return None
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"[:200]


def ops_case(p, ctx):
    """Ours for every shape and config first, then the peers (fla's first calls autotune for minutes: a run cut
    short by its time limit still has our numbers)."""
    dtype = DTYPES[p["dtype"]]
    peers = [i for i in p["peers"] if i != "fla" or ctx["fla_error"] is None]
    shapes = [(p["B"], p["H"], T, D) for D in p["D"] for T in p["T"]] + [tuple(s) for s in p["extra_shapes"]]
    rows, firsts, checks = [], [], []
    for family in p["families"]:
        for B, H, T, D in shapes:
            x = op_inputs(family, B, T, H, D, dtype)
            first = None
            for i, cfg in enumerate(p["configs"]):
                row = dict(op=family, B=B, H=H, T=T, D=D, floor=floor_ms(x))
                if len(p["configs"]) > 1:
                    row["config"] = json.dumps(cfg, separators=(",", ":")).replace('"', "")
                fn = impl_fn("ours", family, cfg or None)
                outs = outputs(fn, x, p["backward"])
                row["ours_fwd"] = median_ms(step_of(fn, x, False))
                row["x_floor"] = row["ours_fwd"] / row["floor"]
                if p["backward"]:
                    row["ours_fwdbwd"] = median_ms(step_of(fn, x, True))
                key = "ours_fwdbwd" if p["backward"] else "ours_fwd"
                if first is None:
                    first = (outs, row[key])
                else:  # a sweep: time over the first config's, and how far o (and grads) are from the first's
                    row["x_first"] = row[key] / first[1]
                    row["diff"] = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(outs, first[0]))
                    checks.append(dict(check=f"{family} T={T} D={D} {row['config']}: outputs vs the first config",
                                       ok=row["diff"] <= p["max_diff"], detail=f"max rel diff {row['diff']:.1e}"))
                if p["profile"]:
                    row["profile"] = profile(step_of(fn, x, p["backward"]))
                log(f"  {family} B={B} H={H} T={T} D={D} {row.get('config', '')}: ours {row[key]:.3f} ms")
                rows.append(row)
                if i == 0:
                    firsts.append(row)
            del x
            if CUDA:
                torch.cuda.empty_cache()
    for row in firsts if peers else []:  # the peers once per shape, beside the first config's row
        x = op_inputs(row["op"], row["B"], row["T"], row["H"], row["D"], dtype)
        for impl in peers:
            if impl == "fla" and row["op"] in p["no_fla"]:
                continue
            key = f"{impl}_fwdbwd" if p["backward"] else f"{impl}_fwd"
            try:
                fn = impl_fn(impl, row["op"])
                row[f"{impl}_fwd"] = median_ms(step_of(fn, x, False))
                if p["backward"]:
                    row[f"{impl}_fwdbwd"] = median_ms(step_of(fn, x, True))
                row[f"x_{impl}"] = row["ours_fwdbwd" if p["backward"] else "ours_fwd"] / row[key]
                if p["profile"]:
                    row[f"profile_{impl}"] = profile(step_of(fn, x, p["backward"]))
            except Exception as e:  # noqa: BLE001  a peer that fails (memory, shape) is reported, not fatal
                row[f"{impl}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            log(f"  {impl} {row['op']} T={row['T']} D={row['D']}: {row.get(key, row.get(f'{impl}_error'))}")
            if CUDA:
                torch.cuda.empty_cache()
    return rows, checks


def first_call_case(p, ctx):
    """Seconds of each op's first fwd+bwd in a fresh process with an empty Triton cache (compile + any tuning),
    import time apart. Users feel it once per shape class; it is never folded into the timings above."""
    rows = []
    for family in p["families"]:
        for impl in p["impls"]:
            if impl == "fla" and (ctx["fla_error"] is not None or family in p["no_fla"]):
                continue
            spec = json.dumps(dict(impl=impl, family=family, shape=p["shape"], dtype=p["dtype"]))
            with tempfile.TemporaryDirectory() as cache:
                cmd = [sys.executable, __file__, "--first-call-child", spec] + (["--tiny"] if ctx["tiny"] else [])
                row = dict(op=family, impl=impl)
                try:
                    r = subprocess.run(cmd, env=dict(os.environ, TRITON_CACHE_DIR=cache), capture_output=True,
                                       text=True, timeout=p["timeout_s"])
                    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
                    row.update(json.loads(lines[-1]) if r.returncode == 0 and lines else
                               {"error": r.stderr[-500:]})
                except subprocess.TimeoutExpired:
                    row["error"] = f"timed out after {p['timeout_s']} s"
            log(f"  first call {impl} {family}: {row}")
            rows.append(row)
    return rows, []


def first_call_child(spec):
    """Runs in the fresh process: one fwd+bwd, printing import / fwd / bwd seconds as a JSON line."""
    s = json.loads(spec)
    fn = impl_fn(s["impl"], s["family"])
    t_import = time.perf_counter() - T_START
    B, H, T, D = s["shape"]
    x = [None if t is None else t.requires_grad_(True) for t in op_inputs(s["family"], B, T, H, D,
                                                                         DTYPES[s["dtype"]])]
    sync()
    t0 = time.perf_counter()
    o = fn(*x)
    sync()
    t1 = time.perf_counter()
    o.backward(torch.randn_like(o))
    sync()
    t2 = time.perf_counter()
    print(json.dumps(dict(import_s=t_import, fwd_s=t1 - t0, bwd_s=t2 - t1, total_s=t2 - t0)))


# -------------------------------------------------------------------------------------------------------- models

def build_model(name, size, dtype=None):
    """A randomly initialised causal LM: ours_<arch> (configs/<arch>/<size>.json), ours_<arch>:<variant>
    (configs/<arch>/<size>-<variant>.json, e.g. ours_gated_deltanet:hybrid), fla_<arch> (fla's model of the same
    width, depth, heads and vocab as ours), llama (SDPA, same width and depth, head dim 64)."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    import linattn_models
    def ours(arch):
        arch, _, variant = arch.partition(":")
        return AutoConfig.from_pretrained(linattn_models.configs_path(arch, f"{size}-{variant}" if variant else size))

    if name.startswith("ours_"):
        cfg = ours(name[5:])
    elif name.startswith("fla_"):
        import fla  # noqa: F401  (registers fla's model types)
        from fla.models import (DeltaNetConfig, GatedDeltaNetConfig, GLAConfig, LinearAttentionConfig,
                                RetNetConfig)
        ref = ours(name[4:])
        common = dict(hidden_size=ref.hidden_size, num_hidden_layers=ref.num_hidden_layers, vocab_size=ref.vocab_size,
                      num_heads=ref.num_heads)
        cls = {"retnet": RetNetConfig, "gla": GLAConfig, "linear_transformer": LinearAttentionConfig,
               "deltanet": DeltaNetConfig, "gated_deltanet": GatedDeltaNetConfig}[name[4:]]
        if name == "fla_gated_deltanet":  # fla's default head_dim 256 would make it wider than ours
            common.update(head_dim=ref.head_k_dim, expand_v=ref.head_v_dim / ref.head_k_dim)
        cfg = cls(**common)
    elif name == "llama":
        ref = ours("retnet")
        h = ref.hidden_size
        cfg = LlamaConfig(hidden_size=h, intermediate_size=2816 * h // 1024, num_hidden_layers=ref.num_hidden_layers,
                          num_attention_heads=max(1, h // 64), num_key_value_heads=max(1, h // 64),
                          vocab_size=ref.vocab_size, max_position_embeddings=32768, tie_word_embeddings=True,
                          attn_implementation="sdpa")
    else:
        raise ValueError(f"unknown model {name!r}: ours_<arch>, fla_<arch> or llama")
    torch.manual_seed(0)
    with torch.device(DEV):
        model = AutoModelForCausalLM.from_config(cfg, **({"dtype": dtype} if dtype else {}))
    return model, cfg


def train_case(p, ctx):
    rows = []
    for name in p["models"]:
        row = dict(model=name)
        try:
            model, cfg = build_model(name, p["size"])
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=CUDA)
            if CUDA:
                torch.cuda.reset_peak_memory_stats()

            def step():
                x = torch.randint(0, cfg.vocab_size, (p["B"], p["T"]), device=DEV)
                with torch.autocast(DEV, dtype=torch.bfloat16):
                    loss = model(input_ids=x, labels=x).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss.item()
            times, losses = [], []
            for i in range(p["warmup"] + p["steps"]):
                sync()
                t = time.perf_counter()
                losses.append(step())
                sync()
                if i >= p["warmup"]:
                    times.append(time.perf_counter() - t)
            s = statistics.median(times)
            row.update(params_m=sum(t.numel() for t in model.parameters()) / 1e6, tok_s=p["B"] * p["T"] / s,
                       step_ms=s * 1e3, peak_gb=torch.cuda.max_memory_allocated() / 1e9 if CUDA else None,
                       loss_first=losses[0], loss_last=losses[-1])
            if p["profile"]:
                row["profile"] = profile(step, iters=2, top=12)  # (a step is long: 2 are enough)
        except Exception as e:  # noqa: BLE001  one model's failure (fla absent, memory) must not hide the others
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"  train {json.dumps({k: v for k, v in row.items() if k != 'profile'})}")
        rows.append(row)
        model = opt = None
        if CUDA:
            torch.cuda.empty_cache()
    return rows, []


def compile_case(p, ctx):
    """Per model: eager and torch.compile'd training step (median ms, same shapes), the first compiled step's
    seconds (tracing + compiling + one step), the loss difference of the two first steps (same weights, same
    batch: two models built from one seed). Then decoding (compile_decode): greedy generate with the forward
    compiled against plain eager decode."""
    rows = []
    for name in p["models"]:
        row = dict(model=name)
        try:
            for compiled in (False, True):
                model, cfg = build_model(name, p["size"])
                model.train()
                run = torch.compile(model, fullgraph=p["fullgraph"], backend=p["backend"],
                                    dynamic=p["dynamic"]) if compiled else model
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=CUDA)
                gen = torch.Generator().manual_seed(0)

                def step():
                    x = torch.randint(0, cfg.vocab_size, (p["B"], p["T"]), generator=gen).to(DEV)
                    with torch.autocast(DEV, dtype=torch.bfloat16):
                        loss = run(input_ids=x, labels=x).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    return loss.item()
                times = []
                for i in range(p["warmup"] + p["steps"]):
                    sync()
                    t = time.perf_counter()
                    loss = step()
                    sync()
                    if i == 0:
                        row["compile_s" if compiled else "eager_first_s"] = time.perf_counter() - t
                        row["loss_first_compiled" if compiled else "loss_first"] = loss
                    if i >= p["warmup"]:
                        times.append(time.perf_counter() - t)
                row["compiled_ms" if compiled else "eager_ms"] = statistics.median(times) * 1e3
                model = run = opt = None
                if CUDA:
                    torch.cuda.empty_cache()
            row["speedup"] = row["eager_ms"] / row["compiled_ms"]
            row["loss_diff"] = abs(row["loss_first"] - row["loss_first_compiled"])
        except Exception as e:  # noqa: BLE001  one model's failure must not hide the others
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        if p["decode_new"]:
            try:
                compile_decode(name, p, row)
            except Exception as e:  # noqa: BLE001  a decode failure keeps the training numbers (and the others)
                row["decode_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            if CUDA:
                gc.collect()  # the compiled forward kept in the model's __dict__ is a cycle through the model
                torch.cuda.empty_cache()
        log(f"  compile {json.dumps(row)}")
        rows.append(row)
        torch._dynamo.reset()
    return rows, []


@torch.no_grad()
def compile_decode(name, p, row):
    """Greedy generate (use_cache) of one model in eval mode, bf16 weights on CUDA (fp32 on CPU) as in the decode
    case: batch decode_B after a decode_prompt-token prompt, decode_new new tokens. Eager is plain eager decode,
    the CUDA-graph decode step off (enable_decode_graph(False)); compiled is the same model with
    model.forward = torch.compile(model.forward, fullgraph=True, dynamic=True, backend=...) and the graph step off
    too (compile ignores it anyway). Adds decode_eager_ms / decode_compiled_ms (ms per token, ms_per_token: the
    median interval between decode steps), decode_speedup, decode_compile_s (the first compiled generate: prefill
    and one-token step traced and compiled, plus the decode itself) and decode_tokens ("equal" or where the
    compiled greedy tokens first differ from the eager ones)."""
    model, cfg = build_model(name, p["size"], dtype=torch.bfloat16 if CUDA else torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None  # fixed length: no early stop
    model.generation_config.pad_token_id = cfg.pad_token_id or 0
    graphs = False if name.startswith("ours_") else None  # ours: the graph step off; others decode as they do
    gen = torch.Generator().manual_seed(p["decode_prompt"] * 10 + p["decode_B"])
    x = torch.randint(3, cfg.vocab_size, (p["decode_B"], p["decode_prompt"]), generator=gen).to(DEV)
    kw = dict(max_new_tokens=p["decode_new"], use_cache=True)
    eager = generate(model, x, graphs, **kw)[:, x.shape[1]:]
    row["decode_eager_ms"] = ms_per_token(model, x, graphs, p["decode_new"], p["decode_repeats"])
    torch._dynamo.reset()  # a first compile of the forward, not a cache hit left by the training step's
    model.forward = torch.compile(model.forward, fullgraph=True, dynamic=True, backend=p["backend"])
    sync()
    t = time.perf_counter()
    compiled = generate(model, x, graphs, **kw)[:, x.shape[1]:]
    sync()
    row["decode_compile_s"] = time.perf_counter() - t
    row["decode_compiled_ms"] = ms_per_token(model, x, graphs, p["decode_new"], p["decode_repeats"])
    row["decode_speedup"] = row["decode_eager_ms"] / row["decode_compiled_ms"]
    if torch.equal(eager, compiled):
        row["decode_tokens"] = "equal"
    else:
        diff = (eager != compiled).nonzero()
        row["decode_tokens"] = f"DIFFER at step {int(diff[:, 1].min())}"
    log(f"  compile decode {json.dumps({k: v for k, v in row.items() if k.startswith('decode')})}")


# -------------------------------------------------------------------------------------------------------- decode

def step_clock():
    """A StoppingCriteria that reads the clock (after a device sync) each time generate asks whether to stop:
    once per decode step. The median interval is the per-token latency without the prefill's jitter (a
    difference of two generate totals carried it, at a 16K prompt). Made here: transformers loads only when used."""
    from transformers import StoppingCriteria

    class StepClock(StoppingCriteria):
        def __init__(self):
            self.t = []

        def __call__(self, input_ids, scores, **kwargs):
            sync()
            self.t.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    return StepClock()


def generate(model, x, graphs, **kw):
    if graphs is not None:  # ours only; fla's models and Llama decode as they do
        model.enable_decode_graph(graphs)
    return model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, **kw)


def ms_per_token(model, x, graphs, new_tokens, repeats):
    """Per-token decode latency of greedy generate: the median interval between decode steps (step_clock) over
    `repeats` calls of `new_tokens` each. The decode case and the compile case's decode columns both use it."""
    intervals = []
    for _ in range(repeats):
        clock = step_clock()
        generate(model, x, graphs, max_new_tokens=new_tokens, stopping_criteria=[clock])
        intervals += [b - a for a, b in zip(clock.t, clock.t[1:])]
    return statistics.median(intervals) * 1e3


@torch.no_grad()
def step_ms(model, x, graphs, iters):
    """ms per model(tok, cache) decode step in a loop, argmax fed back: the step without generate's own work."""
    from linattn_models.models.common import CACHE_OUTPUT_NAME
    model.enable_decode_graph(graphs)
    out = model(x, use_cache=True, logits_to_keep=1)
    cache, tok = out[CACHE_OUTPUT_NAME], out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(3):  # warm-up; captures the graph
        tok = model(tok, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        tok = model(tok, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
    sync()
    return (time.perf_counter() - t) / iters * 1e3


def tokens_check(model, x, p):
    """Greedy tokens with graphs on == off; a mismatch passes only where eager's top-2 logits are within tie_tol
    (bf16 near-ties of a random model)."""
    kw = dict(max_new_tokens=p["new_tokens"], return_dict_in_generate=True, output_logits=True)
    on, off = generate(model, x, True, **kw), generate(model, x, False, **kw)
    a, b = on.sequences[:, x.shape[1]:], off.sequences[:, x.shape[1]:]
    logit_diff = max((u.float() - v.float()).abs().max().item() for u, v in zip(on.logits, off.logits))
    if torch.equal(a, b):
        return "equal", True, f"max logit diff {logit_diff:.3g}"
    diff = (a != b).nonzero()
    step = int(diff[:, 1].min())
    row = int(diff[diff[:, 1] == step][0, 0])
    top2 = off.logits[step][row].float().topk(2).values
    gap = (top2[0] - top2[1]).item()
    return ("tie" if gap <= p["tie_tol"] else "DIFFER"), gap <= p["tie_tol"], \
        f"first mismatch step {step} row {row}, eager top-2 gap {gap:.3f}, max logit diff {logit_diff:.3g}"


def decode_case(p, ctx):
    rows, checks = [], []
    for name in p["models"]:
        ours = name.startswith("ours_")
        try:
            model, cfg = build_model(name, p["size"], dtype=torch.bfloat16 if CUDA else torch.float32)
        except Exception as e:  # noqa: BLE001
            rows.append(dict(model=name, error=f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        model.eval()
        model.generation_config.eos_token_id = None  # fixed length: no early stop
        model.generation_config.pad_token_id = cfg.pad_token_id or 0
        with torch.no_grad():
            for P in p["prompts"]:
                for B in p["batches"]:
                    g = torch.Generator().manual_seed(P * 10 + B)
                    x = torch.randint(3, cfg.vocab_size, (B, P), generator=g).to(DEV)
                    row = dict(model=name, P=P, B=B)
                    t = []
                    for _ in range(p["repeats"]):
                        sync()
                        t0 = time.perf_counter()
                        generate(model, x, False if ours else None, max_new_tokens=1)
                        sync()
                        t.append(time.perf_counter() - t0)
                    row["prefill_s"] = statistics.median(t)
                    if ours:
                        row["tokens"], ok, detail = tokens_check(model, x, p)
                        checks.append(dict(check=f"{name} P={P} B={B}: greedy tokens graph == eager", ok=ok,
                                           detail=detail))
                        for mode, graphs in (("graph", True), ("eager", False)):
                            row[f"{mode}_ms"] = ms_per_token(model, x, graphs, p["new_tokens"], p["repeats"])
                            row[f"{mode}_tok_s"] = B * 1e3 / row[f"{mode}_ms"]
                            row[f"{mode}_step_ms"] = step_ms(model, x, graphs, p["step_iters"])
                            captured = getattr(model.__dict__.get("_decode_graphs"), "graphs", None)
                            if graphs and captured:  # CUDA only; read now (turning graphs off drops them)
                                row["capture_s"] = max(c.capture_seconds for c in captured.values())
                        row["speedup"] = row["eager_ms"] / row["graph_ms"]
                    else:
                        row["eager_ms"] = ms_per_token(model, x, None, p["new_tokens"], p["repeats"])
                        row["eager_tok_s"] = B * 1e3 / row["eager_ms"]
                    base = next(r for r in rows + [row] if r.get("model") == name and r.get("B") == B)
                    mode = "graph" if ours else "eager"
                    row["x_first_P"] = row[f"{mode}_ms"] / base[f"{mode}_ms"]  # should not grow with the context
                    log(f"  decode {json.dumps(row)}")
                    rows.append(row)
            if ours and p["beam_new_tokens"]:
                x = torch.randint(3, cfg.vocab_size, (2, p["prompts"][0]), generator=torch.Generator().manual_seed(9))
                beams = [generate(model, x.to(DEV), graphs, max_new_tokens=p["beam_new_tokens"], num_beams=2)
                         for graphs in (True, False)]
                checks.append(dict(check=f"{name}: beam search (num_beams=2, B=2) graph == eager",
                                   ok=torch.equal(*beams), detail=""))
        del model
        if CUDA:
            torch.cuda.empty_cache()
    return rows, checks


# ---------------------------------------------------------------------------------------------- registry, output

Case = namedtuple("Case", "kind fn doc params tiny")
ALL_OPS = list(OPS)
OPS_PARAMS = dict(families=ALL_OPS, B=4, H=16, T=[2048, 4096, 8192], D=[128],
                  extra_shapes=[[4, 16, 4096, 64], [4, 16, 4096, 256]], dtype="bf16", backward=True,
                  peers=["fla", "sdpa"], no_fla=[], configs=[{}], max_diff=5e-2, profile=False)
# max_diff: a sweep's bound on max|x - x_first| / max|x_first| over o (and grads): a wrong config is off by O(1),
# two right ones differ by their bf16 rounding (~1e-2 of the largest value at most)
OPS_TINY = dict(B=1, H=2, T=[64], D=[16], extra_shapes=[], dtype="fp32")
TWO_KERNEL = {"onepass_min_programs": 1 << 30, "onepass_min_programs_scalar": 1 << 30}
ONE_PASS = {"onepass_min_programs": 0, "onepass_min_programs_scalar": 0}
ARCHS = ["linear_transformer", "retnet", "gla", "deltanet", "gated_deltanet"]
DECODE = dict(size="370m", prompts=[512, 2048, 16384], batches=[1, 8], new_tokens=64, repeats=3, step_iters=32,
              beam_new_tokens=16, tie_tol=0.125)
DECODE_TINY = dict(size="tiny", prompts=[16, 48], batches=[1, 2], new_tokens=4, repeats=1, step_iters=2,
                   beam_new_tokens=3)


def ops(doc, tiny=None, **kw):
    return Case("ops", ops_case, doc, {**OPS_PARAMS, **kw}, {**OPS_TINY, **(tiny or {})})


CASES = {
    **{CASE_OF.get(f, f): ops(f"{f}: ours vs fla vs SDPA, T 2K/4K/8K at D=128, D 64/256 at 4K", families=[f])
       for f in ("linear_attention", "retention", "gated_linear_attention")},
    # fla's chunk_simple_gla tuned for minutes on its first backward (docs/gpu.md): add it with --set no_fla=[]
    "simple_gla": ops("simple_gla: ours vs SDPA (fla left out: its first call tunes for minutes)",
                      families=["simple_gla"], no_fla=["simple_gla"]),
    "onepass": ops("sweep: the one-pass forward vs the two-kernel form (first config), fewer programs below",
                   families=["linear_attention", "retention", "simple_gla"], T=[2048, 4096, 8192, 16384],
                   extra_shapes=[[4, 16, 4096, 64], [4, 16, 4096, 256], [2, 16, 8192, 128], [1, 16, 16384, 128],
                                 [1, 8, 32768, 128], [8, 16, 4096, 128]],
                   backward=False, peers=[], configs=[TWO_KERNEL, ONE_PASS, {**ONE_PASS, "BV_onepass": 32},
                                                      {**ONE_PASS, "warps_onepass": 8}],
                   tiny=dict(families=["linear_attention"], configs=[TWO_KERNEL, ONE_PASS])),
    "gla_paths": ops("sweep: GLA's sub-chunk matmul path vs elementwise (diag_limit 0), A-kernel tile BK_A; "
                     "kernels per config", families=["gated_linear_attention"], extra_shapes=[], peers=[], profile=True,
                     configs=[{}, {"diag_limit": 0.0}, {"BK_A": 16}, {"BK_A": 64}],
                     tiny=dict(configs=[{}, {"diag_limit": 0.0}], profile=False)),
    "first_call": Case("ops", first_call_case, "first fwd+bwd per op in a fresh process, empty Triton cache",
                       dict(families=ALL_OPS, impls=["ours", "fla"], no_fla=["simple_gla"], shape=[4, 16, 4096, 128],
                            dtype="bf16", timeout_s=240),
                       dict(families=["linear_attention"], shape=[1, 2, 64, 16], dtype="fp32")),
    "train": Case("models", train_case, "training tokens/s and peak memory at 370M, B=4 T=4096; ours, fla RetNet, "
                  "Llama (fla_gla: add it with --set; its first step tuned for minutes)",
                  dict(models=[f"ours_{a}" for a in ARCHS] + ["fla_retnet", "llama"], size="370m", B=4, T=4096,
                       steps=5, warmup=2, profile=False),
                  dict(models=["ours_gla", "llama"], size="tiny", B=2, T=64, steps=2, warmup=1)),
    "compile": Case("models", compile_case, "torch.compile(fullgraph) vs eager training step at 370M, B=4 T=4096, "
                    "and the first compiled step (compile time), per architecture; greedy generate (B=8, 512-token "
                    "prompt, 64 new) with the forward compiled vs eager: ms/token, compile s, same tokens",
                    dict(models=[f"ours_{a}" for a in ARCHS], size="370m", B=4,
                         T=4096, steps=5, warmup=2, backend="inductor", fullgraph=True, dynamic=False,
                         decode_B=8, decode_prompt=512, decode_new=64, decode_repeats=3),
                    dict(models=["ours_gla"], size="tiny", B=2, T=48, steps=1, warmup=1, backend="eager",
                         decode_B=1, decode_prompt=8, decode_new=3, decode_repeats=1)),
    "decode": Case("decode", decode_case, "ours at 370M bf16: CUDA-graph vs eager decode, graph == eager tokens",
                   dict(models=[f"ours_{a}" for a in ARCHS], **DECODE), dict(models=["ours_gla"], **DECODE_TINY)),
    "decode_peers": Case("decode", decode_case, "fla RetNet / GLA and Llama (SDPA) through generate, same shapes",
                         dict(models=["fla_retnet", "fla_gla", "llama"], **DECODE),
                         dict(models=["llama"], **DECODE_TINY)),
}

DEFAULT_CASES = ["linear_attention", "retention", "simple_gla", "gla"]  # the standard comparison

# columns of the tables: (header, row key, format); a column shows when some row has the key
COLUMNS = {
    "ops": [("op", "op", "s"), ("B", "B", "d"), ("H", "H", "d"), ("T", "T", "d"), ("D", "D", "d"),
            ("config", "config", "s"), ("impl", "impl", "s"), ("ours fwd", "ours_fwd", ".3f"),
            ("fla fwd", "fla_fwd", ".3f"), ("sdpa fwd", "sdpa_fwd", ".3f"), ("floor", "floor", ".3f"),
            ("fwd/floor", "x_floor", ".2f"), ("ours f+b", "ours_fwdbwd", ".3f"), ("fla f+b", "fla_fwdbwd", ".3f"),
            ("sdpa f+b", "sdpa_fwdbwd", ".3f"), ("/fla", "x_fla", ".2f"), ("/sdpa", "x_sdpa", ".2f"),
            ("/first", "x_first", ".2f"), ("diff", "diff", ".1e"), ("import s", "import_s", ".1f"),
            ("fwd s", "fwd_s", ".1f"), ("bwd s", "bwd_s", ".1f"), ("first call s", "total_s", ".1f")],
    "models": [("model", "model", "s"), ("params M", "params_m", ".0f"), ("tok/s", "tok_s", ".0f"),
               ("step ms", "step_ms", ".1f"), ("peak GB", "peak_gb", ".1f"), ("loss first", "loss_first", ".3f"),
               ("loss last", "loss_last", ".3f"), ("eager ms", "eager_ms", ".1f"),
               ("compiled ms", "compiled_ms", ".1f"), ("speedup", "speedup", ".2f"), ("compile s", "compile_s", ".1f"),
               ("loss diff", "loss_diff", ".1e"), ("decode eager ms/tok", "decode_eager_ms", ".3f"),
               ("decode compiled ms/tok", "decode_compiled_ms", ".3f"), ("decode speedup", "decode_speedup", ".2f"),
               ("decode compile s", "decode_compile_s", ".1f"), ("decode tokens", "decode_tokens", "s")],
    "decode": [("model", "model", "s"), ("P", "P", "d"), ("B", "B", "d"), ("tokens", "tokens", "s"),
               ("graph ms/tok", "graph_ms", ".3f"), ("graph tok/s", "graph_tok_s", ".0f"),
               ("graph step ms", "graph_step_ms", ".3f"), ("eager ms/tok", "eager_ms", ".3f"),
               ("eager tok/s", "eager_tok_s", ".0f"), ("eager step ms", "eager_step_ms", ".3f"),
               ("speedup", "speedup", ".1f"), ("/first P", "x_first_P", ".2f"), ("capture s", "capture_s", ".2f"),
               ("prefill s", "prefill_s", ".3f")],
}
# --profile: wall ms per call back to back (host-bound when it exceeds the kernels' ms), per implementation
PROFILE_COLUMNS = [(h if i == "ours" else f"{i} {h}", f"{i}_{k}", f) for i in ("ours", "fla", "sdpa") for h, k, f in
                   (("wall ms", "wall_ms", ".3f"), ("kernels ms", "kernels_ms", ".3f"), ("launches", "launches", "d"))]


def profiles(row):
    """(impl, profile) of a row: ours' under "profile", a peer's under "profile_<impl>"."""
    return [(k[8:] or "ours", v) for k, v in row.items() if k.startswith("profile")]


def table(kind, rows):
    flat = [{**r, **{f"{i}_{k}": v for i, prof in profiles(r) for k, v in prof.items()}} for r in rows]
    cols = [c for c in COLUMNS[kind] + PROFILE_COLUMNS if any(r.get(c[1]) is not None for r in flat)]
    cells = [[h for h, _, _ in cols]] + [["-" if r.get(k) is None else format(r[k], f) for _, k, f in cols]
                                         for r in flat]
    width = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, width)) for line in cells]
    for r in rows:
        errors = {k: v for k, v in r.items() if k.endswith("error")}
        if errors:
            lines.append(f"  {r.get('model', r.get('op'))} T={r.get('T', '-')}: {errors}")
        for impl, prof in profiles(r):
            for name, n, ms in prof.get("top_kernels", []):
                lines.append(f"    {impl} {r.get('model', r.get('op'))} T={r.get('T', '-')} {r.get('config', '')}: "
                             f"{ms:8.3f} ms x{n:<3d} {name}")
    return "\n".join(lines)


def versions(tiny):
    import importlib.metadata as md
    import triton

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None
    card = torch.cuda.get_device_name() if CUDA else f"cpu ({platform.processor() or platform.machine()})"
    sms = torch.cuda.get_device_properties(0).multi_processor_count if CUDA else None
    return dict(card=card, sms=sms, torch=torch.__version__, triton=triton.__version__,
                transformers=version("transformers"), fla=version("fla-core"), cuda=torch.version.cuda,
                python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), tiny=tiny,
                timer="triton.testing.do_bench median" if CUDA else f"wall-clock median of {CPU_REPS}",
                argv=sys.argv[1:])


def parse_sets(items):
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=None, help=f"comma-separated case names (default: {','.join(DEFAULT_CASES)})")
    ap.add_argument("--list", action="store_true", help="list the cases with their parameters and exit")
    ap.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for bench_<date>.json/.txt")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a case parameter")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: Triton interpreter, tiny shapes")
    ap.add_argument("--profile", action="store_true", help="add torch.profiler kernels vs wall and host time")
    ap.add_argument("--first-call-child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.first_call_child:
        return first_call_child(a.first_call_child)
    if a.list:
        for name, c in CASES.items():
            print(f"{name:17s} {c.kind:7s} {c.doc}\n{'':25s} {json.dumps(c.params)}")
        return 0
    names = a.cases.split(",") if a.cases else DEFAULT_CASES
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; --list shows them")
    sets = parse_sets(a.set)
    stray = [k for k in sets if not any(k in CASES[n].params for n in names)]
    if stray:
        ap.error(f"--set {stray}: no selected case has that parameter")
    selected = {}
    for n in names:
        c = CASES[n]
        params = {**c.params, **(c.tiny if a.tiny else {}), **{k: v for k, v in sets.items() if k in c.params}}
        if a.profile and "profile" in params:
            params["profile"] = True
        selected[n] = params
    meta = versions(a.tiny)
    wants_fla = any("fla" in str(p.get(k, "")) for p in selected.values() for k in ("peers", "impls", "models"))
    meta["fla_error"] = fla_status() if wants_fla else "not needed by these cases"
    header = (f"{meta['card']}, torch {meta['torch']}, triton {meta['triton']}, transformers {meta['transformers']}, "
              f"fla {meta['fla'] if meta['fla_error'] is None else '-'}, {meta['date']}; ms: {meta['timer']}"
              + ("; --tiny: CPU interpreter, timings meaningless" if a.tiny else ""))
    os.makedirs(a.out, exist_ok=True)
    stem = Path(a.out) / f"bench_{datetime.datetime.now().strftime('%Y-%m-%d_%H%M%S')}"
    result, text, failed = {"meta": meta, "cases": {}}, [header], False
    print(header, flush=True)
    ctx = dict(tiny=a.tiny, fla_error=meta["fla_error"])
    for name, params in selected.items():
        c = CASES[name]
        log(f"== {name}: {json.dumps(params)}")
        t0 = time.perf_counter()
        entry = result["cases"][name] = dict(kind=c.kind, params=params, rows=[], checks=[])
        try:
            entry["rows"], entry["checks"] = c.fn(params, ctx)
        except Exception:  # noqa: BLE001  report it and run the other cases
            import traceback
            entry["error"] = traceback.format_exc()[-3000:]
            log(entry["error"])
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        bad = [ch for ch in entry["checks"] if not ch["ok"]]
        failed |= bool(bad) or "error" in entry
        block = [f"\n{name} ({c.kind}, {entry['seconds']} s): {c.doc}", table(c.kind, entry["rows"])]
        if entry["checks"]:
            block.append(f"checks: {len(entry['checks']) - len(bad)}/{len(entry['checks'])} passed"
                         + "".join(f"\n  FAILED {ch['check']} {ch['detail']}" for ch in bad))
        if "error" in entry:
            block.append(f"ERROR: {entry['error'].strip().splitlines()[-1]}")
        print("\n".join(block), flush=True)
        text += block
        if _BANDWIDTH:
            meta["copy_bandwidth_TBps"] = _BANDWIDTH[0] / 1e12
        # written after every case: a run stopped by its time limit keeps what it measured
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        stem.with_suffix(".txt").write_text("\n".join(text) + "\n")
    print(f"\nwrote {stem}.json and .txt", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
