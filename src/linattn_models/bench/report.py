"""What scripts/quality.py writes: quality.json (settings, machine, every run), quality.md (the tables, also
printed), mqar_accuracy.png (accuracy vs d_model, one panel per sequence length) and convergence.png (held-out
loss vs tokens, one line per architecture)."""
from __future__ import annotations

import datetime
import importlib.metadata as md
import json
import os
import platform
import sys

import torch


def machine(device):
    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None
    card = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or platform.machine()})"
    return dict(card=card, device=device, cpu_cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, transformers=version("transformers"), triton=version("triton"),
                cuda=torch.version.cuda, python=platform.python_version(), argv=sys.argv[1:],
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write_json(path, result):
    # written after every run, so a run cut off by a time limit keeps what it measured; through a temporary file,
    # so that a process killed while writing leaves the previous version (scripts/quality.py --jobs reads it)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, path)


def mqar_table(best):
    if not best:
        return ""
    shapes = list(best[0]["test_acc"])
    heads = " | ".join(f"acc T={s.replace('x', ', pairs=')}" for s in shapes)
    lines = [f"| arch | d_model | params | best lr | {heads} | train tokens/s |", "| --- " * (5 + len(shapes)) + "|"]
    for r in sorted(best, key=lambda r: (r["arch"], r["d_model"])):
        note = f" (every rate failed: {r['error'][:60]})" if "error" in r else ""
        lines.append(f"| {r['arch']}{note} | {r['d_model']} | {r['params'] / 1e6:.2f} M | {r['lr']:g} | "
                     + " | ".join(f"{r['test_acc'][s]:.3f}" for s in shapes) + f" | {r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def _count(n):
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def convergence_table(runs, info):
    if not runs:
        return ""
    lines = [f"| arch | params (non-embedding) | tokens | final held-out loss (unigram {info['unigram_baseline']:.3f}) "
             "| train tokens/s |", "| --- | --- | --- | --- | --- |"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['arch']} | failed: {r['error'][:80]} | | | |")
            continue
        lines.append(f"| {r['arch']} | {r['params'] / 1e6:.2f} M ({r['non_embedding_params'] / 1e6:.2f} M) | "
                     f"{_count(r['train_tokens'])} | {r['final_eval_loss']:.3f} | {r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def markdown(result):
    m = result["machine"]
    out = [f"# Quality benchmarks ({result['settings']['mode']} mode)", "",
           f"{m['card']}, torch {m['torch']}, transformers {m['transformers']}, {m['date']}; "
           f"{result['seconds']:.0f} s in all.", ""]
    if result.get("skipped"):
        out += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items()), ""]
    if result.get("running"):
        out += ["Still running when this was written: " + ", ".join(result["running"]), ""]
    if "mqar" in result:
        p = result["settings"]["mqar"]
        out += ["## MQAR: held-out test accuracy, best learning rate (chosen on a validation set) of "
                f"{', '.join(f'{lr:g}' for lr in p['lrs'])}",
                f"{p['layers']} layers, {p['steps']} steps of batch {p['batch']}, {p['eval_seqs']} held-out "
                "sequences per shape", "", mqar_table(result["mqar"]["best"]), ""]
    if result.get("convergence", {}).get("data"):  # no data: no process got as far as the corpus
        p, info = result["settings"]["convergence"], result["convergence"]["data"]
        out += [f"## Convergence on {info['corpus']} Python source (held-out files)",
                f"d_model {p['d_model']}, {p['layers']} layers, {p['steps']} steps of {p['batch']} x {p['block']} "
                f"tokens, lr {p['lr']:g}; {info['eval_blocks']} held-out blocks, the first of each of "
                f"{info['eval_blocks']} held-out files",
                "", convergence_table(result["convergence"]["runs"], info), ""]
    jobs = result["settings"].get("jobs", 1)
    if jobs > 1:
        out += [f"tokens/s: measured with {jobs} processes sharing the device (`--jobs {jobs}`), so not clean "
                "speed numbers.", ""]
    return "\n".join(out)


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # no display on the benchmark machines
    import matplotlib.pyplot as plt
    return plt


def plot_mqar(best, path):
    plt = _plt()
    shapes = list(best[0]["test_acc"])
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.5), squeeze=False, sharey=True)
    archs = sorted({r["arch"] for r in best})
    for ax, s in zip(axes[0], shapes):
        for a in archs:
            rs = sorted((r for r in best if r["arch"] == a), key=lambda r: r["d_model"])
            ax.plot([r["d_model"] for r in rs], [r["test_acc"][s] for r in rs], marker="o", label=a)
        T, n = s.split("x")
        ax.set(title=f"T={T}, {n} pairs", xlabel="d_model", xscale="log", ylim=(-0.02, 1.02))
        widths = sorted({r["d_model"] for r in best})
        ax.set_xticks(widths, [str(d) for d in widths])
        ax.minorticks_off()  # the log axis' unlabelled minor ticks only clutter three widths
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("MQAR accuracy (best learning rate per model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_convergence(runs, info, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in (r for r in runs if "error" not in r):
        ax.plot([c["tokens"] for c in r["curve"]], [c["eval_loss"] for c in r["curve"]], marker=".", label=r["arch"])
    ax.axhline(info["unigram_baseline"], color="gray", ls="--", lw=1, label="unigram baseline")
    ax.set(xlabel="training tokens", ylabel="held-out loss (nats/token)",
           title=f"Convergence on {info['corpus']} source (held-out files)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
