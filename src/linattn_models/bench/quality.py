"""The quality benchmarks' models and training loops: an MQAR learning-rate sweep per architecture and width,
and a convergence race on Python source at one token budget. scripts/quality.py picks the settings.

Every model here is built the same way (`build_model`): ours from our config classes at the asked width (the
class defaults for everything else, head dim 64), the softmax baseline as transformers' LlamaForCausalLM (SDPA)
of the same width, depth, heads and MLP width, so the comparisons differ only in the token mixer.
"""
from __future__ import annotations

import dataclasses
import math
import time
import zlib
from pathlib import Path

import torch

from . import mqar

HEAD_DIM = 64  # heads = d_model // 64 (at least one): the same for every architecture and the baseline
# (name, architecture: a key of CONFIGS or "llama", extra config fields). Data, not code: an entry whose
# fields its config class does not have is skipped and reported (the hybrid needs `attn_layers`, which the
# configs gain in a parallel change; it shows up here once they do).
ARCHS = [
    ("linear_transformer", "linear_transformer", {}),
    ("retnet", "retnet", {}),
    ("gla", "gla", {}),
    ("deltanet", "deltanet", {}),
    ("gated_deltanet", "gated_deltanet", {}),
    ("gated_deltanet-hybrid", "gated_deltanet", {"attn_layers": [1]}),
    ("llama", "llama", {}),
]


def config_class(arch):
    from linattn_models.models import CONFIGS
    return CONFIGS[arch]


def select_archs(names=None):
    """(entries to run, {name: why skipped}). `names`: a subset of ARCHS' names, None for all."""
    known = {e[0] for e in ARCHS}
    unknown = sorted(set(names or ()) - known)
    if unknown:
        raise ValueError(f"unknown architectures {unknown}; known: {', '.join(e[0] for e in ARCHS)}")
    run, skipped = [], {}
    for name, arch, extra in ARCHS:
        if names is not None and name not in names:
            continue
        if arch != "llama":
            fields = {f.name for f in dataclasses.fields(config_class(arch))}
            missing = sorted(set(extra) - fields)
            if missing:  # a dataclass field test: PreTrainedConfig would silently store an unknown kwarg
                skipped[name] = f"{config_class(arch).__name__} has no field {', '.join(missing)}"
                continue
        run.append((name, arch, extra))
    return run, skipped


def intermediate_size(d_model):
    return 256 * ((int(d_model * 8 / 3) + 255) // 256)  # our configs' derived MLP width, given to Llama too


def build_model(entry, d_model, layers, vocab=mqar.VOCAB, max_len=4096, device="cpu", seed=0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    import linattn_models.models  # noqa: F401  (registers our model types with the Auto classes)
    _, arch, extra = entry
    heads = max(1, d_model // HEAD_DIM)
    common = dict(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=layers, tie_word_embeddings=True,
                  pad_token_id=1, bos_token_id=0, eos_token_id=0)
    if arch == "llama":
        cfg = LlamaConfig(**common, intermediate_size=intermediate_size(d_model), num_attention_heads=heads,
                          num_key_value_heads=heads, max_position_embeddings=max_len, rms_norm_eps=1e-6)
        kw = dict(attn_implementation="sdpa")
    else:
        cfg = config_class(arch)(**common, num_heads=heads, **extra)
        kw = {}
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, **kw)
    return model


def param_counts(model):
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()  # tied with the head: counted once
    return total, total - emb


def autocast(device):
    # bf16 autocast on GPU (fp32 master weights); plain fp32 on CPU, where bf16 matmuls are slow
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def make_optimizer(model, lr, steps, warmup_frac=0.1, weight_decay=0.1):
    """AdamW, linear warmup then cosine decay to 0 (Zoology's recipe; weight decay 0.1)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warm = max(1, int(warmup_frac * steps))
    def factor(s):
        return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched


def lm_loss(model, x, labels):
    return model(input_ids=x, labels=labels).loss


def recall_logits(model, x, labels):
    """(logits, targets) at the labelled positions only. HF's loss runs the LM head over all T positions, T x
    vocab outputs, where MQAR labels 2-12% of them: at d_model 64 on CPU the head was most of a step."""
    h = model.base_model(input_ids=x, use_cache=False).last_hidden_state[:, :-1]
    mask = mqar.shift_mask(labels)  # output t predicts label t + 1 (the same shift as HF's loss)
    return model.get_output_embeddings()(h[mask]), labels[:, 1:][mask]


def recall_loss(model, x, labels):
    logits, target = recall_logits(model, x, labels)
    return torch.nn.functional.cross_entropy(logits.float(), target)


def train_step(model, opt, sched, x, labels, device, loss_fn=lm_loss):
    with autocast(device):
        loss = loss_fn(model, x, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


# --------------------------------------------------------------------------------------------------------- MQAR

def mqar_eval_sets(shapes, num_seqs, seed, vocab):
    """{(seq_len, pairs): (x, labels)}: the held-out sequences, from seeds that training never uses."""
    return {s: mqar.generate(num_seqs, s[0], s[1], seed=[seed, i], vocab=vocab) for i, s in enumerate(shapes)}


@torch.no_grad()
def mqar_accuracy(model, sets, batch, device):
    model.eval()
    out = {}
    for (T, n), (x, labels) in sets.items():
        hits = total = 0
        for i in range(0, len(x), batch):
            xb, lb = x[i:i + batch].to(device), labels[i:i + batch].to(device)
            with autocast(device):
                logits, target = recall_logits(model, xb, lb)
            hits += int((logits.argmax(-1) == target).sum())
            total += len(target)
        out[f"{T}x{n}"] = hits / total
    model.train()
    return out


def mqar_run(entry, d_model, lr, p, valid, test, device, log):
    """Train one model on a stream of fresh MQAR batches (the shapes in turn, seeds [train_seed, step]: never an
    eval seed) and score it on the validation (LR choice) and test (reported) sets."""
    model = build_model(entry, d_model, p["layers"], vocab=p["vocab"], max_len=max(s[0] for s in p["shapes"]),
                        device=device)
    opt, sched = make_optimizer(model, lr, p["steps"])
    total, _ = param_counts(model)
    losses, t0, tokens, diverged = [], time.perf_counter(), 0, False
    for step in range(p["steps"]):
        T, n = p["shapes"][step % len(p["shapes"])]
        x, labels = mqar.generate(p["batch"], T, n, seed=[p["train_seed"], step], vocab=p["vocab"])
        loss = train_step(model, opt, sched, x.to(device), labels.to(device), device, recall_loss)
        tokens += x.numel()
        if step % 10 == 0 or step == p["steps"] - 1:
            losses.append(float(loss))
            if not math.isfinite(losses[-1]):
                diverged = True  # the sweep's other rates carry on; this one scores what it has
                break
    sync(device)
    secs = time.perf_counter() - t0
    row = dict(arch=entry[0], d_model=d_model, lr=lr, params=total, steps=p["steps"], train_tokens=tokens,
               train_s=secs, tokens_per_s=tokens / secs, final_train_loss=losses[-1], diverged=diverged,
               valid_acc=mqar_accuracy(model, valid, p["eval_batch"], device),
               test_acc=mqar_accuracy(model, test, p["eval_batch"], device))
    log(f"  mqar {entry[0]:22s} d={d_model:<4d} lr={lr:<7g} loss {row['final_train_loss']:.3f} "
        f"test acc {' '.join(f'{k}:{v:.3f}' for k, v in row['test_acc'].items())} ({secs:.1f}s)")
    return row


def best_of_sweep(runs):
    """Per (arch, d_model): the run whose mean validation accuracy is highest (test accuracy is reported)."""
    best = {}
    for r in runs:
        key = (r["arch"], r["d_model"])
        score = (sum(r["valid_acc"].values()) / len(r["valid_acc"]), "error" not in r)  # ties: a run that ran
        if key not in best or score > best[key][0]:
            best[key] = (score, r)
    return [r for _, r in best.values()]


def run_mqar(entries, p, device, log, on_run=lambda row: None):
    shapes = [tuple(s) for s in p["shapes"]]
    for T, n in shapes:
        mqar.check_shape(T, n, p["vocab"])
    valid = mqar_eval_sets(shapes, p["eval_seqs"], p["valid_seed"], p["vocab"])
    test = mqar_eval_sets(shapes, p["eval_seqs"], p["test_seed"], p["vocab"])
    runs = []
    for entry in entries:
        for d in p["d_models"]:
            for lr in p["lrs"]:
                try:
                    runs.append(mqar_run(entry, d, lr, p, valid, test, device, log))
                except Exception as e:  # noqa: BLE001  e.g. a rate that diverged into the CPU value checks
                    # a failed run recalls nothing: scored 0 so the sweep picks another rate; the error is kept
                    zero = {f"{T}x{n}": 0.0 for T, n in shapes}
                    runs.append(dict(arch=entry[0], d_model=d, lr=lr, error=f"{type(e).__name__}: {str(e)[:300]}",
                                     valid_acc=zero, test_acc=dict(zero), params=0, tokens_per_s=0.0))
                    log(f"  mqar {entry[0]} d={d} lr={lr:g} failed: {runs[-1]['error']}")
                on_run(runs[-1])
                if device == "cuda":
                    torch.cuda.empty_cache()
    return runs, best_of_sweep(runs)


# -------------------------------------------------------------------------------------------------- convergence

def corpus_files(kind):
    """[(relative path, path)] of the corpus: `stdlib` (the training script's default corpus) or `site-packages`
    (every installed package's .py files, gathered now; tests and huge generated files skipped as for stdlib)."""
    import site
    import sysconfig

    from linattn_models.cli import data
    if kind == "stdlib":
        roots = [data.stdlib_dir()]
    elif kind == "site-packages":
        dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
        roots = sorted({Path(p) for p in dirs if Path(p).is_dir()})
    else:
        raise ValueError(f"unknown corpus {kind!r}: stdlib or site-packages")
    out = {}
    for root in roots:  # keyed by the path inside its root: for stdlib the training script's split exactly
        for f in data.stdlib_files(root):
            out.setdefault(f.relative_to(root).as_posix(), f)
    return sorted(out.items())


def _tokenize(files, tokenizer, batch=64):
    """Yield (relative path, token ids + EOS) for the readable files, in order, tokenized `batch` at a time."""
    from linattn_models.cli import data
    for i in range(0, len(files), batch):
        chunk = [(rel, t) for rel, f in files[i:i + batch] if (t := data.read_text(f)) and t.strip()]
        for (rel, _), x in zip(chunk, tokenizer([t for _, t in chunk], add_special_tokens=False)["input_ids"]):
            yield rel, x + [tokenizer.eos_token_id]


def corpus(kind, tokenizer, block, train_tokens, eval_blocks):
    """(train blocks [N, block], eval blocks [M, block], info). Files are held out by the training script's hash
    of their path (data.is_eval_file): the same files on every run. Eval: the first block of each held-out file
    at least a block long, in path order, up to `eval_blocks` (spread over files, not one long file). Train:
    files in a hash order (spread over the library, not alphabetical), concatenated until the budget is covered."""
    from linattn_models.cli import data
    files = corpus_files(kind)
    held = [f for f in files if data.is_eval_file(f[0])]
    train = sorted((f for f in files if not data.is_eval_file(f[0])),
                   key=lambda f: zlib.crc32(b"order" + f[0].encode()))
    ev, ev_used = [], []
    for rel, x in _tokenize(held, tokenizer):
        if len(x) > block:
            ev.append(x[:block])
            ev_used.append(rel)
            if len(ev) == eval_blocks:
                break
    tr, n_train_files = [], 0
    for _, x in _tokenize(train, tokenizer):
        tr += x
        n_train_files += 1
        if len(tr) >= train_tokens + block:
            break
    if not ev or len(tr) < block:
        raise ValueError(f"corpus {kind}: not enough text for one block of {block} tokens")
    tr, ev_blocks = torch.tensor(tr, dtype=torch.long), torch.tensor(ev, dtype=torch.long)
    counts = torch.bincount(tr, minlength=len(tokenizer)).double()  # unigram baseline: a context-free model
    logp = ((counts + 1) / (counts.sum() + len(counts))).log()
    info = dict(corpus=kind, files=len(files), held_out_files=len(held), eval_blocks=len(ev), eval_files=ev_used,
                train_files_used=n_train_files, train_tokens_available=len(tr), block=block,
                unigram_baseline=float(-logp[ev_blocks[:, 1:]].mean()))
    return tr[:len(tr) // block * block].view(-1, block), ev_blocks, info


@torch.no_grad()
def eval_loss(model, blocks, batch, device):
    model.eval()
    total = 0.0
    for i in range(0, len(blocks), batch):
        x = blocks[i:i + batch].to(device)
        with autocast(device):
            total += float(model(input_ids=x, labels=x).loss) * len(x)  # full blocks: equal token counts
    model.train()
    return total / len(blocks)


def convergence_run(entry, p, train_blocks, eval_blocks, device, log):
    """Train on the same blocks in the same order (seeded shuffle) for the same token budget; held-out loss every
    `eval_every` steps; tokens/s counts the training steps only (evaluation excluded)."""
    model = build_model(entry, p["d_model"], p["layers"], vocab=p["vocab"], max_len=p["block"], device=device)
    opt, sched = make_optimizer(model, p["lr"], p["steps"])
    total, non_emb = param_counts(model)
    order = torch.randperm(len(train_blocks), generator=torch.Generator().manual_seed(p["seed"]))
    curve, train_s, step_tokens = [], 0.0, p["batch"] * p["block"]
    curve.append(dict(step=0, tokens=0, eval_loss=eval_loss(model, eval_blocks, p["batch"], device)))
    for step in range(p["steps"]):
        idx = order[(torch.arange(p["batch"]) + step * p["batch"]) % len(order)]  # cycles when the data runs out
        x = train_blocks[idx].to(device)
        sync(device)
        t = time.perf_counter()
        loss = train_step(model, opt, sched, x, x, device)
        sync(device)
        train_s += time.perf_counter() - t
        if (step + 1) % p["eval_every"] == 0 or step == p["steps"] - 1:
            curve.append(dict(step=step + 1, tokens=(step + 1) * step_tokens, train_loss=float(loss),
                              eval_loss=eval_loss(model, eval_blocks, p["batch"], device)))
    row = dict(arch=entry[0], params=total, non_embedding_params=non_emb, steps=p["steps"],
               train_tokens=p["steps"] * step_tokens, epochs=p["steps"] * p["batch"] / len(train_blocks),
               train_s=train_s, tokens_per_s=p["steps"] * step_tokens / train_s,
               final_eval_loss=curve[-1]["eval_loss"], curve=curve)
    log(f"  convergence {entry[0]:22s} {total / 1e6:.2f} M params: held-out loss {curve[0]['eval_loss']:.3f} -> "
        f"{row['final_eval_loss']:.3f}, {row['tokens_per_s']:.0f} tokens/s")
    return row


def run_convergence(entries, p, device, log, on_run=lambda row: None):
    from linattn_models.tokenizer import load_tokenizer
    tok = load_tokenizer()
    t0 = time.perf_counter()
    train_blocks, eval_blocks, info = corpus(p["corpus"], tok, p["block"], p["steps"] * p["batch"] * p["block"],
                                             p["eval_blocks"])
    info["data_s"] = time.perf_counter() - t0
    p["vocab"] = len(tok)
    log(f"  corpus {info['corpus']}: {len(train_blocks)} train blocks of {p['block']} from {info['train_files_used']} "
        f"files, {info['eval_blocks']} held-out blocks (one per held-out file); unigram baseline "
        f"{info['unigram_baseline']:.3f} ({info['data_s']:.1f}s)")
    runs = []
    for entry in entries:
        try:
            runs.append(convergence_run(entry, p, train_blocks, eval_blocks, device, log))
        except Exception as e:  # noqa: BLE001  one model's failure must not hide the others'
            runs.append(dict(arch=entry[0], error=f"{type(e).__name__}: {str(e)[:300]}"))
            log(f"  convergence {entry[0]} failed: {runs[-1]['error']}")
        on_run(runs[-1])
        if device == "cuda":
            torch.cuda.empty_cache()
    return runs, info
