"""``linattn-train`` / ``python scripts/train.py``: train a linear-attention LM with the HF Trainer.

With no arguments it runs the built-in default job: a small GLA model trained on the Python standard
library's own source (gathered at run time, nothing downloaded), sized to finish in a few minutes on a
2-core CPU. It prints the held-out loss next to the unigram baseline, writes checkpoints (each with the
tokenizer), a loss-curve PNG and ``results.json`` to ``runs/default``, and prints a generated sample.

An --output-dir that holds another run is refused unless --overwrite (its checkpoints are moved to
previous-checkpoints/, never deleted) or --resume is given; the built-in default job replaces its own
previous run. One process per output dir (train.lock); --resume skips checkpoints cut short by a kill.

Multi-GPU / multi-node: run the same script under ``accelerate launch`` (see configs/accelerate/) or torchrun;
``--context-parallel N`` splits every block across N ranks (README: Multi-GPU and multi-node).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The steps' parts live in the modules beside this one; the names once defined here stay importable from here.
from linattn_models.cli import rundir  # noqa: E402
from linattn_models.cli.args import (  # noqa: E402,F401
    ARCHS, DEFAULT_ARCH, DEFAULT_JOB_MAX_STEPS, DEFAULT_JOB_MAX_TIME, DEFAULT_JOB_SET, DEFAULT_SIZE, SIZES,
    apply_default_job, check_context_parallel_model, validate_args)
from linattn_models.cli.args import build_parser as _build_parser  # noqa: E402
from linattn_models.cli.data import training_blocks, unigram_baseline  # noqa: E402,F401
from linattn_models.cli.model import (  # noqa: E402,F401
    build_config, build_model, config_fields, load_config, resolve_config_path)
from linattn_models.cli.report import generate_sample, plot_losses, results_dict, write_report  # noqa: E402,F401
from linattn_models.cli.trainer import TrainClock, _make_trainer_class, build_trainer, busy_cpus  # noqa: E402,F401


def build_parser():
    """The command's parser; its --help starts with this module's docstring."""
    return _build_parser(__doc__)


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
    """The steps of a run, in order; the output dir is decided before the data is loaded and changed
    only just before training starts (so a run that fails while loading changes nothing)."""
    train_files, eval_files = validate_args(args)
    t_start = time.time()
    job = _Job.start(args)
    tokenizer = _load_tokenizer(args)
    default_job, overrides, max_time = apply_default_job(args, argv, job.say)
    config, cfg_src = load_config(args, overrides, tokenizer)
    check_context_parallel_model(args, config)
    run_id, resume, apply_output_dir = _claim_output_dir(job, default_job, argv, stack)
    train_ds, eval_ds, baseline = training_blocks(args, train_files, eval_files, tokenizer, job.say)
    model, n_params = build_model(args, config, cfg_src, job.say)
    trainer, precision = build_trainer(args, model, tokenizer, train_ds, eval_ds, max_time=max_time,
                                       out_dir=job.out_dir, run_id=run_id, say=job.say)
    apply_output_dir()
    train_out, train_time, eval_loss = _train(trainer, resume, job.out_dir)
    results = results_dict(trainer, train_out, config=config, cfg_src=cfg_src, n_params=n_params,
                           train_time=train_time, eval_loss=eval_loss, baseline=baseline,
                           eval_tokens=len(eval_ds) * (args.block_size - 1), precision=precision)
    if not job.is_main:
        return results
    return write_report(results, args, trainer, tokenizer, baseline=baseline, eval_loss=eval_loss,
                        train_time=train_time, t_start=t_start, world=job.world)


class _Job:
    """Where this process stands in the run (rank 0 prints and owns the output dir) and how it prints."""

    def __init__(self, args):
        self.args = args
        self.out_dir = Path(args.output_dir)
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.world = int(os.environ.get("WORLD_SIZE", "1"))

    @classmethod
    def start(cls, args) -> "_Job":
        """Quiet transformers' info logs and seed every RNG, before anything else is built."""
        import transformers
        from transformers import set_seed

        import linattn_models  # noqa: F401  (registers the model types)

        transformers.logging.set_verbosity_warning()
        set_seed(args.seed)
        return cls(args)

    def say(self, *a):
        if self.is_main:
            print(*a, flush=True)

    def warn(self, msg):
        if self.is_main:
            print(f"linattn-train: warning: {msg}", file=sys.stderr, flush=True)


def _load_tokenizer(args):
    """--tokenizer, or the bundled byte-level BPE."""
    from linattn_models.tokenizer import load_tokenizer

    return load_tokenizer(args.tokenizer)


def _claim_output_dir(job: _Job, default_job: bool, argv: list[str], stack: contextlib.ExitStack):
    """One writer per output dir (its lock, held by ``stack``), no other run's files replaced, resume from
    a complete checkpoint. Returns (run id, checkpoint to resume from, apply); ``apply()`` carries out the
    decision just before training starts."""
    args, out_dir = job.args, job.out_dir
    run_id, resume, apply_output_dir = None, None, (lambda: None)
    if job.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        stack.enter_context(rundir.OutputDirLock(out_dir, job.warn))
        run_id, resume, apply_output_dir = rundir.prepare_output_dir(
            out_dir, overwrite=args.overwrite, resume=args.resume, default_job=default_job, say=job.say,
            warn=job.warn, argv=argv)
    elif args.resume:  # the other processes of a distributed run resume from the same checkpoint
        resume = (rundir.last_complete_checkpoint(out_dir, lambda m: None) if args.resume == "auto"
                  else Path(args.resume))
    if resume is not None:
        job.say(f"resuming from {resume}")
    return run_id, resume, apply_output_dir


def _train(trainer, resume, out_dir: Path):
    """Train (from ``resume`` if set), evaluate at the last step unless that was just done, save the final
    model, tokenizer and trainer state in ``out_dir``. Returns (train output, training seconds, eval loss)."""
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
    return train_out, train_time, eval_loss


def cli() -> None:
    """Console entry point (returns None, so the exit status is 0 on success)."""
    main(sys.argv[1:])


if __name__ == "__main__":
    cli()
