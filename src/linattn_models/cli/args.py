"""``linattn-train``'s command line: the parser, the checks made before anything is loaded, and the
settings of the built-in default job."""
from __future__ import annotations

import argparse
from pathlib import Path

from linattn_models.models import CONFIGS

ARCHS = tuple(CONFIGS)  # every registered architecture
# configs/<arch>/<size>.json; the -hybrid sizes (every 4th layer softmax attention) ship for gla and gated_deltanet
SIZES = ("tiny", "125m", "370m", "1.3b", "tiny-hybrid", "125m-hybrid", "370m-hybrid", "1.3b-hybrid")

# The built-in default job (no --data/--config/--arch/--size): GLA, the tiny config at hidden 128 x 4 layers,
# trained on the standard library source for a 270 s training budget (or 2000 steps, whichever comes first;
# the cosine schedule follows the clock), so that it finishes in about 5 minutes on any 2-core CPU, busy or not.
DEFAULT_ARCH = "gla"
DEFAULT_SIZE = "tiny"
DEFAULT_JOB_SET = ["hidden_size=128", "num_hidden_layers=4"]
DEFAULT_JOB_MAX_TIME = 270.0
DEFAULT_JOB_MAX_STEPS = 2000
DEFAULT_MAX_STEPS = 400  # any other job


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``linattn-train``; ``description`` (the command's docstring) heads its --help."""
    ap = argparse.ArgumentParser(
        prog="linattn-train", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_group(ap.add_argument_group("model"))
    _data_group(ap.add_argument_group("data"))
    t = ap.add_argument_group("training")
    _training_group(t)
    _run_group(t)
    g = ap.add_argument_group("sample at the end")
    g.add_argument("--prompt", default="def", help="prompt for the sample printed at the end")
    g.add_argument("--sample-tokens", type=int, default=120)
    g.add_argument("--no-plot", action="store_true")
    return ap


def _model_group(m) -> None:
    m.add_argument("--arch", choices=ARCHS, default=DEFAULT_ARCH)
    m.add_argument("--size", choices=SIZES, default=DEFAULT_SIZE)
    m.add_argument("--config", help="a config.json (or checkpoint dir) instead of --arch/--size")
    m.add_argument("--init-from", help="start from the weights of this checkpoint dir (fine-tuning)")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (JSON value), e.g. --set num_hidden_layers=2; repeatable")


def _data_group(d) -> None:
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


def _training_group(t) -> None:
    """The output dir and the optimization flags."""
    t.add_argument("--output-dir", default="runs/default",
                   help="where the model, checkpoints and results go. A directory that holds another run is "
                   "refused unless --overwrite or --resume is given (the built-in default job replaces its own "
                   "previous run in runs/default); one training process per directory at a time")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output-dir that holds another run: its checkpoints are not "
                   "deleted but moved to <output-dir>/previous-checkpoints/<run id>/; its final model files are "
                   "replaced at the end")
    t.add_argument("--max-steps", type=int, default=None,
                   help=f"optimizer steps (-1: use --epochs); default {DEFAULT_MAX_STEPS} ({DEFAULT_JOB_MAX_STEPS} "
                   "for the built-in default job, which its time budget ends first)")
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--batch-size", type=int, default=8, help="per-device batch size (sequences)")
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine schedule floor as a fraction of --lr")
    t.add_argument("--warmup-steps", type=int, default=30)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--max-grad-norm", type=float, default=1.0)


def _run_group(t) -> None:
    """Evaluation, checkpoints, logging, resume, precision, time budget and hardware flags."""
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
    t.add_argument("--context-parallel", type=int, default=1, metavar="N",
                   help="split every training sequence across N consecutive ranks of a distributed launch "
                   "(torchrun / accelerate launch): the world is WORLD_SIZE/N data-parallel groups of N ranks, each "
                   "rank of a group training on its contiguous 1/N of the group's blocks. --block-size must divide "
                   "by N; this package's models only, not with --activation-checkpointing. Default 1 (no split)")
    t.add_argument("--workers", type=int, default=0, help="dataloader workers")
    t.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = auto: all cores, fewer when the machine is already busy, "
                   "since oversubscribed threads slow training several times)")
    t.add_argument("--report-to", default="none", help="Trainer report_to (none, tensorboard, wandb, ...)")


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
    ("--context-parallel", lambda v: v >= 1, ">= 1 (1 = no split)"),
    ("--threads", lambda v: v >= 0, ">= 0 (0 = auto)"),
    ("--sample-tokens", lambda v: v >= 0, ">= 0 (0 = no sample)"),
]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                    "spiece.model")


def validate_args(args) -> tuple[list[str] | None, list[str] | None]:
    """Check the arguments before any heavy work; raises UsageError naming the flag and what was expected.
    Returns the --data and --eval-data files (directories expanded, each checked to be text)."""
    from linattn_models.cli.data import data_files

    _check_values(args)
    _check_output_dir(Path(args.output_dir))
    _check_model_paths(args)
    train_files = data_files(args.data, "--data") if args.data else None
    eval_files = data_files(args.eval_data, "--eval-data") if args.eval_data else None
    return train_files, eval_files


def _check_values(args) -> None:
    """The numeric ranges, the --set syntax, and --overwrite against --resume."""
    from linattn_models.cli import UsageError

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
    _check_report_to(args.report_to)
    check_context_parallel(args)


def check_context_parallel(args, world_size: int | None = None) -> None:
    """--context-parallel N against the launch (WORLD_SIZE, default from the environment) and the other flags:
    what ops.split_sequence cannot serve is refused here, before anything is loaded."""
    import os

    from linattn_models.cli import UsageError

    n = args.context_parallel
    if n == 1:
        return
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if world == 1:
        raise UsageError(f"--context-parallel {n} needs a distributed launch of a multiple of {n} processes, e.g. "
                         f"torchrun --nproc_per_node {n} scripts/train.py --context-parallel {n} ... (this is one "
                         "process: WORLD_SIZE is unset or 1)")
    if world % n:
        raise UsageError(f"--context-parallel {n}: the launch has WORLD_SIZE={world} processes, not a multiple of "
                         f"{n} (the world is divided into data-parallel groups of {n} consecutive ranks)")
    if args.block_size % n:
        raise UsageError(f"--context-parallel {n}: --block-size {args.block_size} does not divide by {n} (each rank "
                         f"trains on a contiguous 1/{n} of every block)")
    if args.activation_checkpointing:
        # the recomputed forward runs in the backward, outside ops.split_sequence: it would not be split
        raise UsageError(f"--context-parallel {n} and --activation-checkpointing exclude each other (the "
                         "recomputed forward would run outside the sequence split)")


def _check_report_to(report_to: str) -> None:
    """Refuse a --report-to integration that is not installed now, before data loading (the Trainer itself only
    fails when it builds its callbacks, minutes later). Availability is transformers' own is_<name>_available."""
    from transformers.integrations import integration_utils

    from linattn_models.cli import UsageError

    for name in (n.strip() for n in report_to.split(",")):
        if name in ("", "none", "all"):
            continue
        available = getattr(integration_utils, f"is_{name}_available", None)
        if available is not None and not available():
            raise UsageError(f"--report-to {name}: the {name} package is not installed (pip install {name}"
                             + (", or pip install -e '.[tensorboard]'" if name == "tensorboard" else "") + ")")


def check_context_parallel_model(args, config) -> None:
    """--context-parallel splits only this package's models (linattn_*: they read ops.split_sequence); any other
    causal LM would take its piece for a whole sequence and train on wrong attention and positions."""
    from linattn_models.cli import UsageError

    model_type = getattr(config, "model_type", "")
    if args.context_parallel > 1 and not model_type.startswith("linattn_"):
        raise UsageError(f"--context-parallel {args.context_parallel}: the model type {model_type!r} does not "
                         "split its sequence (only this package's linattn_* models do); drop --context-parallel")


def _check_output_dir(out: Path) -> None:
    """--output-dir, or the nearest of its parents that exists, must be a directory."""
    from linattn_models.cli import UsageError

    for q in (out, *out.parents):
        if q.exists():
            if not q.is_dir():
                raise UsageError(f"--output-dir {out}: {'it' if q == out else q} is a file, expected a directory "
                                 "(created if missing)")
            break


def _check_model_paths(args) -> None:
    """--config, --init-from, --tokenizer and --resume CKPT name what they should."""
    from linattn_models.cli import UsageError

    if not (args.config or args.init_from):
        import linattn_models
        try:
            linattn_models.configs_path(args.arch, args.size)
        except FileNotFoundError:
            raise UsageError(f"--size {args.size}: no shipped config for --arch {args.arch} (the -hybrid sizes ship "
                             f"for gla and gated_deltanet; others: --set attn_layers=4)") from None
    if args.config:
        p = Path(args.config)
        if not p.exists():
            raise UsageError(f"--config {p}: no such file or directory (expected a config.json file or a "
                             "checkpoint directory)")
        if p.is_dir() and not (p / "config.json").is_file():
            raise UsageError(f"--config {p}: no config.json in this directory (expected a config.json file or a "
                             "checkpoint directory)")
    if args.init_from:
        _check_dir("--init-from", Path(args.init_from), "expected a checkpoint directory with config.json and "
                   "the weights", lambda p: (p / "config.json").is_file(), "no config.json in this directory")
    if args.tokenizer:
        _check_dir("--tokenizer", Path(args.tokenizer), "expected a local tokenizer directory, e.g. a checkpoint "
                   "directory with tokenizer.json", lambda p: any((p / n).is_file() for n in _TOKENIZER_FILES),
                   "no tokenizer files in this directory")
    if args.resume not in (None, "auto") and not Path(args.resume).is_dir():
        raise UsageError(f"--resume {args.resume}: no such checkpoint directory (expected a checkpoint-N "
                         "directory, or --resume alone for the last complete one in --output-dir)")


def _check_dir(flag: str, p: Path, what: str, has_files, missing: str) -> None:
    from linattn_models.cli import UsageError

    if not p.exists():
        raise UsageError(f"{flag} {p}: no such directory ({what})")
    if not p.is_dir():
        raise UsageError(f"{flag} {p} is a file ({what})")
    if not has_files(p):
        raise UsageError(f"{flag} {p}: {missing} ({what})")


def flag_given(argv: list[str], flag: str) -> bool:
    """Whether ``flag`` is on the command line (as ``--flag V`` or ``--flag=V``), default or not."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def apply_default_job(args, argv: list[str], say) -> tuple[bool, list[str], float]:
    """With no --data/--config/--init-from/--arch/--size, this is the built-in default job: its --set
    overrides, step limit and time budget apply (and are printed). Fills in --max-steps; returns
    (default job?, the --set overrides, the time budget in seconds, 0 = none)."""
    default_job = not (args.data or args.config or args.init_from or flag_given(argv, "--arch")
                       or flag_given(argv, "--size"))
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
    if args.max_steps is None:
        args.max_steps = DEFAULT_MAX_STEPS
    return default_job, overrides, max_time or 0.0
