"""The end of a ``linattn-train`` run: the results dict, the loss-curve PNG, a generated sample,
``results.json`` and the summary printed last."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path


def plot_losses(log_history, path: Path, baseline: float | None, title: str) -> None:
    """The train and eval losses of ``log_history`` against the step, with the baseline, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    ev = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if tr:
        ax.plot(*zip(*tr), label="train loss", lw=1.2)
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval loss (held out)", lw=1.5)
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label=f"unigram baseline {baseline:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def generate_sample(model, tokenizer, prompt: str, max_new_tokens: int, seed: int = 0) -> str:
    """A seeded sample (temperature 0.8, top-k 40) continuing ``prompt``; leaves the model's mode as it was."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").to(device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8, top_k=40,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if was_training:
        model.train()
    return tokenizer.decode(out[0], skip_special_tokens=True)


def results_dict(trainer, train_out, *, config, cfg_src: str, n_params: int, train_time: float,
                 eval_loss: float, baseline: float, eval_tokens: int, precision: str) -> dict:
    """The run's figures, as written to results.json (every process computes them; the main one writes)."""
    state, tokens_per_step = trainer.state, trainer.meter.tokens_per_step
    return {
        "arch": config.model_type, "config": cfg_src, "params": n_params, "steps": state.global_step,
        "train_tokens_seen": state.global_step * tokens_per_step,
        "train_time_s": round(train_time, 1),
        "train_tokens_per_s": round(state.global_step * tokens_per_step / max(train_time, 1e-9), 1),
        "steady_tokens_per_s": trainer.meter.steady_tokens_per_s,
        "final_train_loss": round(train_out.training_loss, 4),
        "eval_loss": round(eval_loss, 4), "eval_perplexity": round(math.exp(min(eval_loss, 50)), 3),
        "unigram_baseline": round(baseline, 4), "unigram_perplexity": round(math.exp(baseline), 3),
        "eval_tokens": eval_tokens, "precision": precision, "world_size": trainer.args.world_size,
    }


def write_report(results: dict, args, trainer, tokenizer, *, baseline: float, eval_loss: float,
                 train_time: float, t_start: float, world: int) -> dict:
    """The report step (main process only): loss-curve PNG, sample, results.json, summary. Adds the
    curve's path, the sample and the total time to ``results`` and returns it."""
    out_dir = Path(args.output_dir)
    if not args.no_plot:
        png = out_dir / "loss_curve.png"
        try:
            plot_losses(trainer.state.log_history, png, baseline,
                        f"{results['arch']}, {results['params'] / 1e6:.1f}M params, {results['steps']} steps")
            results["loss_curve"] = str(png)
        except ImportError as e:  # matplotlib missing (a minimal image): the numbers are in results.json
            print(f"no loss-curve PNG ({e}); the losses are in {out_dir}/trainer_state.json")

    # sample from the trained model (in memory for one process; reloaded from disk otherwise)
    if args.sample_tokens > 0:
        if world == 1:
            gen_model = trainer.model
        else:
            from transformers import AutoModelForCausalLM

            from linattn_models.ops import default_device
            gen_model = AutoModelForCausalLM.from_pretrained(str(out_dir)).to(default_device())
        results["prompt"] = args.prompt
        results["sample"] = generate_sample(gen_model, tokenizer, args.prompt, args.sample_tokens, args.seed)
    results["total_time_s"] = round(time.time() - t_start, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print_summary(results, out_dir, prompt=args.prompt, eval_loss=eval_loss, baseline=baseline,
                  train_time=train_time)
    return results


def print_summary(results: dict, out_dir: Path, *, prompt: str, eval_loss: float, baseline: float,
                  train_time: float) -> None:
    """The lines printed last: times and throughput, eval loss against the baseline, where things are."""
    print("\n" + "=" * 78)
    print(f"done in {results['total_time_s']:.0f}s (training {train_time:.0f}s, {results['steps']} steps, "
          f"{results['train_tokens_seen'] / 1e6:.2f} M tokens; {results['train_tokens_per_s']:.0f} tokens/s overall, "
          f"{results['steady_tokens_per_s'] or 0:.0f} tokens/s in the training steps after the first log)")
    print(f"held-out eval loss {eval_loss:.3f} nats/token (perplexity {results['eval_perplexity']:.1f})  vs  "
          f"unigram baseline {baseline:.3f} (perplexity {results['unigram_perplexity']:.1f})")
    print(f"model + tokenizer saved to {out_dir}/ ; loss curve: {results.get('loss_curve', '-')}")
    if "sample" in results:
        print(f"sample (prompt {prompt!r}, temperature 0.8, top-k 40):\n" + "-" * 78)
        print(results["sample"])
        print("-" * 78)
    print(f"generate more: linattn-generate {out_dir} --prompt 'import os' --stream")
