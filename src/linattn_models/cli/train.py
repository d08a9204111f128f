"""``linattn-train`` / ``python scripts/train.py``: train a linear-attention LM with the HF Trainer.

With no arguments it runs the built-in default job: a small GLA model trained on the Python standard
library's own source (gathered at run time, nothing downloaded), sized to finish in a few minutes on a
2-core CPU. It prints the held-out loss next to the unigram baseline, writes checkpoints (each with the
tokenizer), a loss-curve PNG and ``results.json`` to ``runs/default``, and prints a generated sample.

An --output-dir that holds another run is refused unless --overwrite (its checkpoints are moved to
previous-checkpoints/, never deleted) or --resume is given; the built-in default job replaces its own
previous run. One process per output dir (train.lock); --resume skips checkpoints cut short by a kill.

Multi-GPU / multi-node: run the same script under ``accelerate launch`` (see configs/accelerate/).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("linear_transformer", "retnet", "gla")
SIZES = ("tiny", "125m", "370m", "1.3b")

# The built-in default job (no --data/--config/--arch/--size): GLA, the tiny config at hidden 128 x 4 layers,
# trained on the standard library source for a 270 s training budget (or 2000 steps, whichever comes first;
# the cosine schedule follows the clock), so that it finishes in about 5 minutes on any 2-core CPU, busy or not.
DEFAULT_ARCH = "gla"
DEFAULT_SIZE = "tiny"
DEFAULT_JOB_SET = ["hidden_size=128", "num_hidden_layers=4"]
DEFAULT_JOB_MAX_TIME = 270.0
DEFAULT_JOB_MAX_STEPS = 2000


def _repo_config_dirs() -> list[Path]:
    pkg = Path(__file__).resolve().parents[1]  # src/linattn_models
    return [pkg / "configs", pkg.parents[1] / "configs", Path.cwd() / "configs"]


def resolve_config_path(arch: str, size: str) -> Path:
    for d in _repo_config_dirs():
        for name in (f"{size}.json", f"{size.lower()}.json"):
            p = d / arch / name
            if p.is_file():
                return p
    raise FileNotFoundError(
        f"no config for --arch {arch} --size {size} (looked in {[str(d) for d in _repo_config_dirs()]}); "
        "pass --config path/to/config.json")


def busy_cpus(interval: float = 0.5) -> float:
    """How many CPUs other processes keep busy right now: from /proc/stat over `interval` seconds (Linux),
    else the 1-minute load average."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + (v[4] if len(v) > 4 else 0), sum(v)  # idle + iowait, total (jiffies, all CPUs)
    try:
        i0, t0 = snap()
        time.sleep(interval)
        i1, t1 = snap()
        ncpu = os.cpu_count() or 1
        return max(0.0, (1.0 - (i1 - i0) / max(1, t1 - t0)) * ncpu)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0


def auto_cpu_threads() -> int:
    """All cores, less the ones other processes keep busy now, at least 1 (oversubscribed OpenMP threads
    make training several times slower)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n, int(n - busy_cpus() + 0.75)))


def _parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="linattn-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = ap.add_argument_group("model")
    m.add_argument("--arch", choices=ARCHS, default=DEFAULT_ARCH)
    m.add_argument("--size", choices=SIZES, default=DEFAULT_SIZE)
    m.add_argument("--config", help="a config.json (or checkpoint dir) instead of --arch/--size")
    m.add_argument("--init-from", help="start from the weights of this checkpoint dir (fine-tuning)")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (JSON value), e.g. --set num_hidden_layers=2; repeatable")
    d = ap.add_argument_group("data")
    d.add_argument("--data", nargs="+", help="local training files/dirs (.txt/.md/.py: text builder; "
                   ".json/.jsonl/.csv/.parquet: field --text-field). Default: the Python standard library source")
    d.add_argument("--eval-data", nargs="+", help="local eval files (default: hold out --eval-fraction of --data)")
    d.add_argument("--eval-fraction", type=float, default=0.02)
    d.add_argument("--text-field", default="text")
    d.add_argument("--sample-by", choices=("document", "paragraph", "line"), default="document",
                   help="how text files are split into examples")
    d.add_argument("--tokenizer", help="local tokenizer dir (default: the bundled byte-level BPE)")
    d.add_argument("--block-size", type=int, default=256, help="tokens per packed training sequence")
    d.add_argument("--max-train-docs", type=int, help="use only the first N training documents")
    d.add_argument("--max-eval-blocks", type=int, default=48,
                   help="evaluate on at most N packed blocks (0 = all)")
    d.add_argument("--num-proc", type=int, help="processes for tokenization")
    t = ap.add_argument_group("training")
    t.add_argument("--output-dir", default="runs/default",
                   help="where the model, checkpoints and results go. A directory that holds another run is "
                   "refused unless --overwrite or --resume is given (the built-in default job replaces its own "
                   "previous run in runs/default); one training process per directory at a time")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output-dir that holds another run: its checkpoints are not "
                   "deleted but moved to <output-dir>/previous-checkpoints/<run id>/; its final model files are "
                   "replaced at the end")
    t.add_argument("--max-steps", type=int, default=None,
                   help=f"optimizer steps (-1: use --epochs); default 400 ({DEFAULT_JOB_MAX_STEPS} for the built-in "
                   "default job, which its time budget ends first)")
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--batch-size", type=int, default=8, help="per-device batch size (sequences)")
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine schedule floor as a fraction of --lr")
    t.add_argument("--warmup-steps", type=int, default=30)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--max-grad-norm", type=float, default=1.0)
    t.add_argument("--eval-steps", type=int, default=50)
    t.add_argument("--save-steps", type=int, default=200)
    t.add_argument("--save-total-limit", type=int, default=2,
                   help="keep the last N checkpoints of this run (0 = all); other runs' checkpoints are never deleted")
    t.add_argument("--logging-steps", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume from the last complete checkpoint in --output-dir (or from CKPT); checkpoints "
                   "cut short by a kill are skipped")
    t.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="auto: bf16 on a GPU that supports it, else fp32")
    t.add_argument("--activation-checkpointing", action="store_true")
    t.add_argument("--max-time", type=float, default=None,
                   help="training budget in seconds: stop after it (then evaluate, save, plot as usual); the "
                   "cosine schedule follows max(step/max_steps, elapsed/max_time). 0 = none (default, except "
                   f"the built-in default job: {DEFAULT_JOB_MAX_TIME:.0f})")
    t.add_argument("--workers", type=int, default=0, help="dataloader workers")
    t.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = auto: all cores, fewer when the machine is already busy, "
                   "since oversubscribed threads slow training several times)")
    t.add_argument("--report-to", default="none", help="Trainer report_to (none, tensorboard, wandb, ...)")
    g = ap.add_argument_group("sample at the end")
    g.add_argument("--prompt", default="def", help="prompt for the sample printed at the end")
    g.add_argument("--sample-tokens", type=int, default=120)
    g.add_argument("--no-plot", action="store_true")
    return ap


# (flag, value check, what is expected): checked before anything is loaded
_RANGES = [
    ("--block-size", lambda v: v >= 2, ">= 2 (tokens per packed training sequence; each token is predicted "
     "from the ones before it)"),
    ("--max-steps", lambda v: v is None or v >= 1 or v == -1, ">= 1, or -1 to train for --epochs"),
    ("--epochs", lambda v: v > 0, "> 0"),
    ("--batch-size", lambda v: v >= 1, ">= 1"),
    ("--grad-accum", lambda v: v >= 1, ">= 1"),
    ("--eval-steps", lambda v: v >= 1, ">= 1"),
    ("--save-steps", lambda v: v >= 1, ">= 1"),
    ("--logging-steps", lambda v: v >= 1, ">= 1"),
    ("--save-total-limit", lambda v: v >= 0, ">= 0 (0 keeps all of this run's checkpoints)"),
    ("--eval-fraction", lambda v: 0 < v < 1, "between 0 and 1 (the fraction of --data documents held out)"),
    ("--max-eval-blocks", lambda v: v >= 0, ">= 0 (0 = all)"),
    ("--max-train-docs", lambda v: v is None or v >= 1, ">= 1"),
    ("--num-proc", lambda v: v is None or v >= 1, ">= 1"),
    ("--lr", lambda v: v > 0, "> 0"),
    ("--min-lr-ratio", lambda v: 0 <= v <= 1, "between 0 and 1"),
    ("--warmup-steps", lambda v: v >= 0, ">= 0"),
    ("--max-time", lambda v: v is None or v >= 0, ">= 0 seconds (0 = no time budget)"),
    ("--workers", lambda v: v >= 0, ">= 0"),
    ("--threads", lambda v: v >= 0, ">= 0 (0 = auto)"),
    ("--sample-tokens", lambda v: v >= 0, ">= 0 (0 = no sample)"),
]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                    "spiece.model")


def validate_args(args) -> tuple[list[str] | None, list[str] | None]:
    """Check the arguments before any heavy work; raises UsageError naming the flag and what was expected.
    Returns the --data and --eval-data files (directories expanded, each checked to be text)."""
    from linattn_models.cli import UsageError
    from linattn_models.cli.data import data_files

    for flag, ok, expected in _RANGES:
        v = getattr(args, flag[2:].replace("-", "_"))
        if not ok(v):
            raise UsageError(f"{flag} must be {expected}, got {v}")
    for kv in args.overrides:
        if "=" not in kv:
            raise UsageError(f"--set expects KEY=VALUE, got {kv!r}")
    if args.overwrite and args.resume:
        raise UsageError("--overwrite and --resume exclude each other: --overwrite starts a new run in "
                         "--output-dir, --resume continues the one there")
    out = Path(args.output_dir)
    for q in (out, *out.parents):
        if q.exists():
            if not q.is_dir():
                raise UsageError(f"--output-dir {out}: {'it' if q == out else q} is a file, expected a directory "
                                 "(created if missing)")
            break
    if args.config:
        p = Path(args.config)
        if not p.exists():
            raise UsageError(f"--config {p}: no such file or directory (expected a config.json file or a "
                             "checkpoint directory)")
        if p.is_dir() and not (p / "config.json").is_file():
            raise UsageError(f"--config {p}: no config.json in this directory (expected a config.json file or a "
                             "checkpoint directory)")
    if args.init_from:
        p = Path(args.init_from)
        what = "expected a checkpoint directory with config.json and the weights"
        if not p.exists():
            raise UsageError(f"--init-from {p}: no such directory ({what})")
        if not p.is_dir():
            raise UsageError(f"--init-from {p} is a file ({what})")
        if not (p / "config.json").is_file():
            raise UsageError(f"--init-from {p}: no config.json in this directory ({what})")
    if args.tokenizer:
        p = Path(args.tokenizer)
        what = "expected a local tokenizer directory, e.g. a checkpoint directory with tokenizer.json"
        if not p.exists():
            raise UsageError(f"--tokenizer {p}: no such directory ({what})")
        if not p.is_dir():
            raise UsageError(f"--tokenizer {p} is a file ({what})")
        if not any((p / n).is_file() for n in _TOKENIZER_FILES):
            raise UsageError(f"--tokenizer {p}: no tokenizer files in this directory ({what})")
    if args.resume not in (None, "auto") and not Path(args.resume).is_dir():
        raise UsageError(f"--resume {args.resume}: no such checkpoint directory (expected a checkpoint-N "
                         "directory, or --resume alone for the last complete one in --output-dir)")
    train_files = data_files(args.data, "--data") if args.data else None
    eval_files = data_files(args.eval_data, "--eval-data") if args.eval_data else None
    return train_files, eval_files


# --------------------------------------------------------------------------------------------------------


def unigram_baseline(train_ds, eval_ds, vocab_size: int) -> tuple[float, int]:
    """Cross-entropy (nats/token) of the eval tokens under the unigram distribution of the train tokens
    (add-one smoothed): what a model that ignores context would score. Returns (entropy, train tokens)."""
    import numpy as np

    counts = np.zeros(vocab_size, dtype=np.float64)
    n_train = 0
    for batch in train_ds.iter(batch_size=2048):
        a = np.asarray(batch["input_ids"], dtype=np.int64).ravel()
        counts += np.bincount(a, minlength=vocab_size)[:vocab_size]
        n_train += a.size
    logp = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    total, n = 0.0, 0
    for batch in eval_ds.iter(batch_size=2048):
        a = np.asarray(batch["input_ids"], dtype=np.int64)[:, 1:].ravel()  # the positions the model predicts
        total += -logp[a].sum()
        n += a.size
    return total / max(n, 1), n_train


def plot_losses(log_history, path: Path, baseline: float | None, title: str) -> None:
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


class TrainClock:
    """Wall-clock of the training loop (starts at on_train_begin), shared by the budget callback and the
    time-aware schedule."""

    def __init__(self, budget: float = 0.0):
        self.budget = budget or 0.0
        self.t0: float | None = None

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else time.time() - self.t0

    def fraction(self) -> float:
        return self.elapsed() / self.budget if self.budget > 0 else 0.0


def _make_trainer_class():
    from transformers import Trainer

    class LMTrainer(Trainer):
        """Trainer that adds eval perplexity and training throughput (tokens/s) to the logs, and (with a time
        budget) a warmup + cosine schedule whose progress is max(step / max_steps, elapsed / budget)."""

        tokens_per_step: int = 0
        clock: TrainClock | None = None
        min_lr_ratio: float = 0.1
        _mark: tuple | None = None     # (time, step, paused seconds) at the first logged step
        _pause: float = 0.0            # seconds spent in evaluation and checkpointing
        _save_mark: tuple | None = None  # (time, _pause) at the end of a step that saves a checkpoint
        steady_tokens_per_s: float | None = None

        def evaluate(self, *a, **kw):
            t = time.time()
            try:
                return super().evaluate(*a, **kw)
            finally:
                self._pause += time.time() - t

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.clock is None or self.clock.budget <= 0 or self.lr_scheduler is not None:
                return super().create_scheduler(num_training_steps, optimizer)
            from torch.optim.lr_scheduler import LambdaLR

            warmup = self.args.get_warmup_steps(num_training_steps)
            clock, floor = self.clock, self.min_lr_ratio

            def factor(step):
                if step < warmup:
                    return (step + 1) / (warmup + 1)
                progress = min(1.0, max(step / max(1, num_training_steps), clock.fraction()))
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            self.lr_scheduler = LambdaLR(optimizer if optimizer is not None else self.optimizer, factor)
            self._created_lr_scheduler = True
            return self.lr_scheduler

        def log(self, logs, start_time=None):
            if "eval_loss" in logs:
                logs["eval_perplexity"] = round(math.exp(min(logs["eval_loss"], 50.0)), 3)
            if "loss" in logs and self.tokens_per_step:
                # throughput of the training steps since the first logged step (so the first step's
                # kernel compilation and warm-up are left out), evaluation and checkpoint time excluded
                now, step = time.time(), self.state.global_step
                if self._mark is None:
                    self._mark = (now, step, self._pause)
                else:
                    t1, s1, p1 = self._mark
                    dt = now - t1 - (self._pause - p1)
                    if dt > 0 and step > s1:
                        logs["tokens_per_s"] = round((step - s1) * self.tokens_per_step / dt, 1)
                        self.steady_tokens_per_s = logs["tokens_per_s"]
            return super().log(logs, start_time)

    return LMTrainer


def _clock_callback(trainer_ref, clock: TrainClock):
    """Starts the clocks at on_train_begin; stops training once the time budget is spent."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.t0 = time.time()
            trainer_ref._mark, trainer_ref._pause = None, 0.0

        def on_step_end(self, args, state, control, **kw):
            if clock.budget > 0 and clock.elapsed() > clock.budget:
                if not control.should_training_stop and state.is_world_process_zero:
                    print(f"\ntime budget of {clock.budget:.0f}s spent at step {state.global_step}: stopping",
                          flush=True)
                control.should_training_stop = True
                control.should_evaluate = False  # the final evaluation runs after train()
                control.should_save = True
            return control

    return Clock()


def _checkpoint_callback(trainer_ref, out_dir: Path, run_id: str, save_total_limit: int):
    """Marks each checkpoint incomplete before the Trainer writes it and complete once it is written (a
    checkpoint cut short by a kill is never resumed from), keeps the last ``save_total_limit`` of this run's
    checkpoints (never another run's), and counts checkpoint time as a pause in the tokens/s figure.
    Registered after the clock callback, whose time budget may ask for a save at on_step_end."""
    from transformers import TrainerCallback

    from linattn_models.cli import rundir

    class Checkpoints(TrainerCallback):
        def _before_save(self, state, control):
            if control.should_save:
                trainer_ref._save_mark = (time.time(), trainer_ref._pause)
                if state.is_world_process_zero:
                    rundir.begin_checkpoint(out_dir / f"checkpoint-{state.global_step}", run_id, state.global_step)

        def on_step_end(self, args, state, control, **kw):
            self._before_save(state, control)

        def on_epoch_end(self, args, state, control, **kw):
            self._before_save(state, control)

        def on_save(self, args, state, control, **kw):
            trainer_ref.accelerator.wait_for_everyone()  # every process has written its part
            if state.is_world_process_zero:
                rundir.finish_checkpoint(out_dir / f"checkpoint-{state.global_step}", run_id, state.global_step)
                rundir.rotate_checkpoints(out_dir, run_id, save_total_limit, state.global_step)
            if trainer_ref._save_mark is not None:  # the time since the step ended, less evaluation
                t, p = trainer_ref._save_mark
                trainer_ref._pause += max(0.0, time.time() - t - (trainer_ref._pause - p))
                trainer_ref._save_mark = None

    return Checkpoints()


def _checkpointing_kwargs(training_args_cls, enable: bool) -> dict:
    """transformers 5.24 calls it activation_checkpointing; older 5.x gradient_checkpointing."""
    if not enable:
        return {}
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_args_cls)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": True}


def config_fields(config) -> tuple[set[str], list[str]]:
    """The names ``--set`` accepts for this config (its fields, aliases and constructor arguments), and
    the user-facing ones to show (those in its config.json, and aliases)."""
    import inspect

    cls = type(config)
    aliases = set(getattr(cls, "attribute_map", None) or {})
    shown = {k for k in config.to_dict() if not k.startswith("_")} - {"transformers_version", "model_type"}
    valid = shown | aliases | set(getattr(cls, "__dataclass_fields__", {}))
    try:
        valid |= {n for n, p in inspect.signature(cls.__init__).parameters.items()
                  if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    except (TypeError, ValueError):
        pass
    return valid, sorted(shown | aliases)


def build_config(cfg_src: str, overrides: list[str]):
    """Load a config (JSON file or checkpoint dir) with ``KEY=VALUE`` overrides applied at construction,
    so that fields derived from others (layer_types, head dims, intermediate size) are derived again.
    A key that is not a field of the config raises UsageError naming it (and the fields there are)."""
    import difflib

    from transformers import AutoConfig

    from linattn_models.cli import UsageError

    base = AutoConfig.from_pretrained(cfg_src)
    if not overrides:
        return base
    with open(Path(cfg_src) / "config.json" if Path(cfg_src).is_dir() else cfg_src, encoding="utf-8") as f:
        d = json.load(f)
    upd = {}
    valid, shown = config_fields(base)
    for kv in overrides:
        k, sep, v = kv.partition("=")
        k = k.strip()
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got {kv!r}")
        if k not in valid:
            close = difflib.get_close_matches(k, shown, n=1)
            raise UsageError(f"--set {kv}: {base.model_type} has no config field {k!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; its fields: {', '.join(shown)}")
        upd[k] = _parse_value(v)
    # Fields whose class default is None are derived from others in __post_init__ (layer_types, head dims,
    # intermediate size): drop the stored values so that they are derived again from the new ones.
    fields = getattr(type(base), "__dataclass_fields__", {})
    for k in list(d):
        f = fields.get(k)
        if k not in upd and f is not None and f.default is None and k not in ("bos_token_id", "eos_token_id",
                                                                              "pad_token_id"):
            d.pop(k)
    d.update(upd)
    model_type = d.pop("model_type", base.model_type)
    return AutoConfig.for_model(model_type, **d)


def main(argv=None) -> dict:
    """Run the training script on ``argv`` (default ``sys.argv[1:]``); returns the results dict. Bad
    input exits (SystemExit, status 2) with one line ``linattn-train: error: ...`` on stderr, like argparse."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    from linattn_models.cli import UsageError

    with contextlib.ExitStack() as stack:  # holds the output dir's lock until main returns or raises
        try:
            return _run(args, argv, stack)
        except UsageError as e:
            ap.exit(2, f"{ap.prog}: error: {e}\n")


def _run(args, argv: list[str], stack: contextlib.ExitStack) -> dict:
    train_files, eval_files = validate_args(args)
    args.arch_given = any(a == "--arch" or a.startswith("--arch=") for a in argv)
    args.size_given = any(a == "--size" or a.startswith("--size=") for a in argv)
    t_start = time.time()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, TrainingArguments, default_data_collator, set_seed

    import linattn_models  # noqa: F401  (registers the model types)
    from linattn_models.cli import UsageError, rundir
    from linattn_models.cli.data import load_local_dataset, pack_dataset, stdlib_datasets
    from linattn_models.tokenizer import load_tokenizer

    transformers.logging.set_verbosity_warning()
    set_seed(args.seed)
    out_dir = Path(args.output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    world = int(os.environ.get("WORLD_SIZE", "1"))

    def say(*a):
        if is_main:
            print(*a, flush=True)

    def warn(msg):
        if is_main:
            print(f"linattn-train: warning: {msg}", file=sys.stderr, flush=True)

    # ---- tokenizer ------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(args.tokenizer)

    # ---- model config ---------------------------------------------------------------------------------
    default_job = not (args.data or args.config or args.init_from or args.arch_given or args.size_given)
    overrides = list(args.overrides)
    max_time = args.max_time
    if default_job:
        overrides = DEFAULT_JOB_SET + overrides
        if max_time is None:
            max_time = DEFAULT_JOB_MAX_TIME
        if args.max_steps is None:
            args.max_steps = DEFAULT_JOB_MAX_STEPS
        say(f"built-in default job: --arch {DEFAULT_ARCH} --size {DEFAULT_SIZE} "
            + " ".join(f"--set {o}" for o in overrides) + f" --max-steps {args.max_steps} --max-time {max_time:.0f}"
            " on the Python standard library source")
    max_time = max_time or 0.0
    if args.max_steps is None:
        args.max_steps = 400
    if args.init_from:
        cfg_src = args.init_from
    elif args.config:
        cfg_src = args.config
    else:
        cfg_src = str(resolve_config_path(args.arch, args.size))
    config = build_config(cfg_src, overrides)
    if getattr(config, "vocab_size", None) != len(tokenizer):
        if args.init_from:
            raise UsageError(f"--init-from {args.init_from} has vocab_size {config.vocab_size} but the tokenizer "
                             f"has {len(tokenizer)} tokens; pass the checkpoint's tokenizer with --tokenizer")
        config.vocab_size = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name))

    # ---- output dir: one writer (a lock), no other run's files replaced, resume from a complete checkpoint
    # (decided here, before the data is loaded; carried out just before training starts)
    run_id, resume, apply_output_dir = None, None, (lambda: None)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(rundir.OutputDirLock(out_dir, warn))
        run_id, resume, apply_output_dir = rundir.prepare_output_dir(
            out_dir, overwrite=args.overwrite, resume=args.resume, default_job=default_job, say=say, warn=warn,
            argv=argv)
    elif args.resume:  # the other processes of a distributed run resume from the same checkpoint
        resume = (rundir.last_complete_checkpoint(out_dir, lambda m: None) if args.resume == "auto"
                  else Path(args.resume))
    if resume is not None:
        say(f"resuming from {resume}")

    # ---- data -----------------------------------------------------------------------------------------
    data_t0 = time.time()
    if args.data:
        raw_train = load_local_dataset(train_files, args.text_field, args.sample_by, "--data")
        if args.eval_data:
            raw_eval = load_local_dataset(eval_files, args.text_field, args.sample_by, "--eval-data")
        else:
            if len(raw_train) < 2:
                raise UsageError(f"--data has {len(raw_train)} document(s), need at least 2 to hold out an eval "
                                 "split: pass --eval-data, or --sample-by line/paragraph")
            split = raw_train.train_test_split(test_size=args.eval_fraction, seed=args.seed)
            raw_train, raw_eval = split["train"], split["test"]
        data_desc = f"local files {args.data}"
    else:
        dd = stdlib_datasets()
        raw_train, raw_eval = dd["train"].select_columns(["text"]), dd["validation"].select_columns(["text"])
        data_desc = "the Python standard library source (built-in default, held-out files for eval)"
    if args.max_train_docs:
        raw_train = raw_train.select(range(min(args.max_train_docs, len(raw_train))))
    train_ds = pack_dataset(raw_train, tokenizer, args.block_size, args.num_proc, "train")
    eval_ds = pack_dataset(raw_eval, tokenizer, args.block_size, args.num_proc, "eval")
    if len(eval_ds) == 0 or len(train_ds) == 0:
        raise UsageError(f"--block-size {args.block_size}: not enough text for one block of that many tokens "
                         f"(train blocks {len(train_ds)}, eval blocks {len(eval_ds)}); lower --block-size")
    if args.max_eval_blocks and len(eval_ds) > args.max_eval_blocks:
        # an evenly spread subset, the same one at every evaluation
        step = len(eval_ds) / args.max_eval_blocks
        eval_ds = eval_ds.select([int(i * step) for i in range(args.max_eval_blocks)])
    baseline, n_train_tokens = unigram_baseline(train_ds, eval_ds, len(tokenizer))
    say(f"data: {data_desc}\n  train: {len(raw_train)} docs -> {len(train_ds)} blocks x {args.block_size} "
        f"= {n_train_tokens / 1e6:.2f} M tokens\n  eval:  {len(raw_eval)} docs -> {len(eval_ds)} blocks used "
        f"({time.time() - data_t0:.1f}s)\n  unigram baseline on the eval tokens: {baseline:.3f} nats/token "
        f"(perplexity {math.exp(baseline):.1f})")

    # ---- model ----------------------------------------------------------------------------------------
    if args.init_from:
        model = AutoModelForCausalLM.from_pretrained(args.init_from, config=config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {config.model_type} from {cfg_src}, {n_params / 1e6:.2f} M parameters "
        f"(hidden {getattr(config, 'hidden_size', '?')}, layers {getattr(config, 'num_hidden_layers', '?')}, "
        f"vocab {config.vocab_size})")

    # ---- trainer --------------------------------------------------------------------------------------
    cuda = torch.cuda.is_available()
    cpu_busy = 0.0
    if not cuda:
        cpu_busy = busy_cpus()
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(args.threads or max(1, min(n, int(n - cpu_busy + 0.75))))
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    targs = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": args.min_lr_ratio},
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        adam_beta2=0.95,
        max_grad_norm=args.max_grad_norm,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=None,  # the Checkpoints callback rotates, this run's checkpoints only
        logging_steps=args.logging_steps,
        logging_first_step=True,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        seed=args.seed,
        dataloader_num_workers=args.workers,
        prediction_loss_only=True,
        report_to=args.report_to,
        disable_tqdm=False,
        **_checkpointing_kwargs(TrainingArguments, args.activation_checkpointing),
    )
    trainer = _make_trainer_class()(
        model=model,
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,  # saved next to every checkpoint
        data_collator=default_data_collator,
    )
    trainer.tokens_per_step = args.batch_size * args.grad_accum * targs.world_size * args.block_size
    trainer.clock = TrainClock(max_time)
    trainer.min_lr_ratio = args.min_lr_ratio
    trainer.add_callback(_clock_callback(trainer, trainer.clock))
    trainer.add_callback(_checkpoint_callback(trainer, out_dir, run_id, args.save_total_limit))
    say(f"training: {targs.max_steps if targs.max_steps > 0 else '-'} steps"
        f"{f' or {max_time:.0f}s' if max_time else ''}, global batch "
        f"{trainer.tokens_per_step // args.block_size} x {args.block_size} tokens, {precision}, "
        f"{'cuda x%d' % targs.world_size if cuda else 'cpu (%d threads; %.1f of %d CPUs busy at start)' % (torch.get_num_threads(), cpu_busy, os.cpu_count() or 1)}")
    if max_time:
        say(f"  (training ends after {max_time:.0f}s or {targs.max_steps} steps, whichever comes first: "
            "the progress bar's total is the step limit)")
    apply_output_dir()
    train_t0 = time.time()
    train_out = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    train_time = time.time() - train_t0

    last_eval = [h for h in trainer.state.log_history if "eval_loss" in h]
    if last_eval and last_eval[-1].get("step") == trainer.state.global_step:
        eval_loss = last_eval[-1]["eval_loss"]  # already evaluated at the last step
    else:
        eval_loss = trainer.evaluate()["eval_loss"]
    trainer.save_model(str(out_dir))  # final model + tokenizer in the output dir
    trainer.save_state()

    results = {
        "arch": config.model_type, "config": cfg_src, "params": n_params, "steps": trainer.state.global_step,
        "train_tokens_seen": trainer.state.global_step * trainer.tokens_per_step,
        "train_time_s": round(train_time, 1),
        "train_tokens_per_s": round(trainer.state.global_step * trainer.tokens_per_step / max(train_time, 1e-9), 1),
        "steady_tokens_per_s": trainer.steady_tokens_per_s,
        "final_train_loss": round(train_out.training_loss, 4),
        "eval_loss": round(eval_loss, 4), "eval_perplexity": round(math.exp(min(eval_loss, 50)), 3),
        "unigram_baseline": round(baseline, 4), "unigram_perplexity": round(math.exp(baseline), 3),
        "eval_tokens": len(eval_ds) * (args.block_size - 1), "precision": precision, "world_size": targs.world_size,
    }
    if not is_main:
        return results

    if not args.no_plot:
        png = out_dir / "loss_curve.png"
        try:
            plot_losses(trainer.state.log_history, png, baseline,
                        f"{config.model_type}, {n_params / 1e6:.1f}M params, {results['steps']} steps")
            results["loss_curve"] = str(png)
        except ImportError as e:  # matplotlib missing (a minimal image): the numbers are in results.json
            print(f"no loss-curve PNG ({e}); the losses are in {out_dir}/trainer_state.json")

    # sample from the trained model (in memory for one process; reloaded from disk otherwise)
    if args.sample_tokens > 0:
        if world == 1:
            gen_model = trainer.model
        else:
            gen_model = AutoModelForCausalLM.from_pretrained(str(out_dir)).to(
                "cuda" if cuda else "cpu")
        results["prompt"] = args.prompt
        results["sample"] = generate_sample(gen_model, tokenizer, args.prompt, args.sample_tokens, args.seed)
    results["total_time_s"] = round(time.time() - t_start, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")

    print("\n" + "=" * 78)
    print(f"done in {results['total_time_s']:.0f}s (training {train_time:.0f}s, {results['steps']} steps, "
          f"{results['train_tokens_seen'] / 1e6:.2f} M tokens; {results['train_tokens_per_s']:.0f} tokens/s overall, "
          f"{results['steady_tokens_per_s'] or 0:.0f} tokens/s in the training steps after the first log)")
    print(f"held-out eval loss {eval_loss:.3f} nats/token (perplexity {results['eval_perplexity']:.1f})  vs  "
          f"unigram baseline {baseline:.3f} (perplexity {results['unigram_perplexity']:.1f})")
    print(f"model + tokenizer saved to {out_dir}/ ; loss curve: {results.get('loss_curve', '-')}")
    if "sample" in results:
        print(f"sample (prompt {args.prompt!r}, temperature 0.8, top-k 40):\n" + "-" * 78)
        print(results["sample"])
        print("-" * 78)
    print(f"generate more: linattn-generate {out_dir} --prompt 'import os' --stream")
    return results


def cli() -> None:
    """Console entry point (returns None, so the exit status is 0 on success)."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
