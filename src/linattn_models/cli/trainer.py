"""The Trainer of a ``linattn-train`` run: TrainingArguments from the flags, a Trainer subclass that logs
perplexity and tokens/s and follows the time budget in its schedule, and the callbacks for the budget and
the checkpoints (completion markers, rotation of this run's checkpoints only)."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path


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


def set_cpu_threads(threads: int) -> float:
    """Set torch's CPU threads to ``threads``, or (0) to all cores less the ones other processes keep busy
    now, at least 1 (oversubscribed OpenMP threads make training several times slower). Returns the busy
    CPUs measured (printed with the thread count)."""
    import torch

    cpu_busy = busy_cpus()
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads or max(1, min(n, int(n - cpu_busy + 0.75))))
    return cpu_busy


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


class Throughput:
    """Training tokens/s since the first logged step (so the first step's kernel compilation and warm-up
    are left out), with the time spent in evaluation and checkpointing left out."""

    def __init__(self, tokens_per_step: int = 0):
        self.tokens_per_step = tokens_per_step
        self.steady_tokens_per_s: float | None = None
        self.mark: tuple | None = None       # (time, step, paused seconds) at the first logged step
        self.paused = 0.0                    # seconds spent in evaluation and checkpointing
        self.save_mark: tuple | None = None  # (time, paused) at the end of a step that saves a checkpoint

    def restart(self) -> None:
        self.mark, self.paused = None, 0.0

    def save_begins(self) -> None:
        self.save_mark = (time.time(), self.paused)

    def save_ends(self) -> None:
        """Count the time since the step ended, less evaluation, as paused."""
        if self.save_mark is not None:
            t, p = self.save_mark
            self.paused += max(0.0, time.time() - t - (self.paused - p))
            self.save_mark = None

    def add_to_log(self, logs: dict, step: int) -> None:
        """Add ``tokens_per_s`` to a training-loss log (from the second one on)."""
        if "loss" not in logs or not self.tokens_per_step:
            return
        now = time.time()
        if self.mark is None:
            self.mark = (now, step, self.paused)
            return
        t1, s1, p1 = self.mark
        dt = now - t1 - (self.paused - p1)
        if dt > 0 and step > s1:
            logs["tokens_per_s"] = round((step - s1) * self.tokens_per_step / dt, 1)
            self.steady_tokens_per_s = logs["tokens_per_s"]


def _make_trainer_class():
    """The Trainer subclass (made on first use: transformers is imported only then). It overrides public,
    documented methods only (evaluate, create_scheduler, log): callbacks cannot time an evaluation from its
    start, replace the schedule, or add a field to a log before it is recorded and printed. With
    --context-parallel it also overrides get_cp_size, get_train_dataloader and compute_loss (see below)."""
    from transformers import Trainer

    class LMTrainer(Trainer):
        """Trainer that adds eval perplexity and training throughput (tokens/s) to the logs, and (with a time
        budget) a warmup + cosine schedule whose progress is max(step / max_steps, elapsed / budget)."""

        clock: TrainClock | None = None
        meter: Throughput | None = None
        min_lr_ratio: float = 0.1
        cp_size: int = 1      # --context-parallel: ranks per sequence
        cp_group = None       # this rank's group of cp_size consecutive ranks (torch.distributed)

        # Context parallelism (--context-parallel N). The gradients: the Trainer's own DDP over the whole world,
        # unchanged. Each rank's loss is the sum over its piece's tokens divided by the token count of every
        # distinct batch of the step (num_items_in_batch, divided by N below: the N ranks of a group count the
        # same batch), times WORLD_SIZE (the Trainer's average_tokens_across_devices scaling). DDP averages over
        # WORLD_SIZE, so each parameter receives sum over all ranks of grad(piece sums) / count: over a group
        # that sum is the gradient of the whole sequences' sum (split_sequence's collectives carry the
        # cross-piece terms back to the rank that owns each piece), i.e. exactly the data-parallel gradient of
        # the mean loss over the D = WORLD_SIZE/N groups' batches. No second all-reduce, no change to the
        # optimizer, clipping or checkpoints, and the logged loss (the world mean of the ranks' losses) is the
        # whole sequences' mean loss.

        def get_cp_size(self):
            return self.cp_size if self.cp_size > 1 else super().get_cp_size()

        def get_train_dataloader(self):
            """With context parallelism the batches are sharded over the data-parallel groups, not the ranks:
            the N ranks of a group get the same batch (accelerate's sharding with D processes, this one being
            number rank // N)."""
            if self.cp_size == 1:
                return super().get_train_dataloader()
            from accelerate.data_loader import prepare_data_loader

            acc, n = self.accelerator, self.cp_size

            def prepare(loader):
                shard = prepare_data_loader(
                    loader, acc.device, num_processes=acc.num_processes // n, process_index=acc.process_index // n,
                    split_batches=acc.split_batches, put_on_device=acc.device_placement,
                    rng_types=acc.rng_types.copy(), dispatch_batches=acc.dispatch_batches,
                    even_batches=acc.even_batches, use_seedable_sampler=acc.use_seedable_sampler,
                    data_seed=acc.dataloader_config.data_seed, non_blocking=acc.non_blocking,
                    use_stateful_dataloader=acc.use_stateful_dataloader)
                acc._dataloaders.append(shard)  # as Accelerator.prepare does (its state is saved in checkpoints)
                return shard

            acc.prepare = prepare  # the base method's one call of it, for this loader only
            try:
                return super().get_train_dataloader()
            finally:
                del acc.prepare

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.cp_size == 1 or not model.training:  # evaluation: whole blocks, sharded over all ranks
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            from linattn_models.ops import split_sequence

            with split_sequence(self.cp_group):
                return super().compute_loss(model, self.sequence_piece(inputs), return_outputs, num_items_in_batch)

        def sequence_piece(self, inputs):
            """This rank's contiguous 1/N of every block: its input ids, its labels, and its shifted labels
            (the label of the piece's last token is the next piece's first token; -100 after the block's end)."""
            import torch.distributed as dist
            import torch.nn.functional as F

            extra = sorted(set(inputs) - {"input_ids", "labels"})
            if extra:
                raise ValueError(f"--context-parallel: the batches hold {', '.join(extra)}; a split sequence takes "
                                 "input_ids and labels only (no attention mask, no position ids)")
            ids, labels = inputs["input_ids"], inputs["labels"]
            T = ids.shape[1]
            if T % self.cp_size:
                raise ValueError(f"--context-parallel {self.cp_size}: a batch of {T} tokens per row does not divide")
            n = T // self.cp_size
            a = dist.get_rank(self.cp_group) * n
            shift = F.pad(labels[:, 1:], (0, 1), value=-100)
            return {"input_ids": ids[:, a:a + n], "labels": labels[:, a:a + n], "shift_labels": shift[:, a:a + n]}

        def evaluate(self, *a, **kw):
            t = time.time()
            try:
                return super().evaluate(*a, **kw)
            finally:
                if self.meter is not None:
                    self.meter.paused += time.time() - t

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
            # the flag the base method sets too: a later train() call builds the schedule again
            self._created_lr_scheduler = True
            return self.lr_scheduler

        def log(self, logs, start_time=None):
            if "eval_loss" in logs:
                logs["eval_perplexity"] = round(math.exp(min(logs["eval_loss"], 50.0)), 3)
            if self.meter is not None:
                self.meter.add_to_log(logs, self.state.global_step)
            return super().log(logs, start_time)

    return LMTrainer


def _clock_callback(clock: TrainClock, meter: Throughput):
    """Starts the clocks at on_train_begin; stops training once the time budget is spent."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.t0 = time.time()
            meter.restart()

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


def _checkpoint_callback(trainer_ref, meter: Throughput, out_dir: Path, run_id: str, save_total_limit: int):
    """Marks each checkpoint incomplete before the Trainer writes it and complete once it is written (a
    checkpoint cut short by a kill is never resumed from), keeps the last ``save_total_limit`` of this run's
    checkpoints (never another run's), and counts checkpoint time as a pause in the tokens/s figure.
    Registered after the clock callback, whose time budget may ask for a save at on_step_end."""
    from transformers import TrainerCallback

    from linattn_models.cli import rundir

    class Checkpoints(TrainerCallback):
        def _before_save(self, state, control):
            if control.should_save:
                meter.save_begins()
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
            meter.save_ends()

    return Checkpoints()


def _checkpointing_kwargs(training_args_cls, enable: bool) -> dict:
    """transformers 5.24 calls it activation_checkpointing; older 5.x gradient_checkpointing."""
    if not enable:
        return {}
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_args_cls)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": True}


def training_arguments(args, out_dir: Path, precision: str, accel: bool):
    """TrainingArguments from the flags: cosine schedule to --min-lr-ratio, evaluation and checkpoints
    every N steps (rotated by the Checkpoints callback, not the Trainer)."""
    from transformers import TrainingArguments

    return TrainingArguments(
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
        use_cpu=not accel,
        seed=args.seed,
        dataloader_num_workers=args.workers,
        prediction_loss_only=True,
        report_to=args.report_to,
        disable_tqdm=False,
        **_checkpointing_kwargs(TrainingArguments, args.activation_checkpointing),
        # --context-parallel's loss scaling rests on it (LMTrainer's comment); the default, said explicitly
        **({"average_tokens_across_devices": True} if getattr(args, "context_parallel", 1) > 1 else {}),
    )


def context_parallel_group(n: int):
    """This rank's group of n consecutive ranks (every rank creates every group, as torch.distributed asks)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError(f"--context-parallel {n}: torch.distributed is not initialized (launch with torchrun or "
                           "accelerate launch)")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = None
    for start in range(0, world, n):
        group = dist.new_group(list(range(start, start + n)))
        if start <= rank < start + n:
            mine = group
    return mine


def build_trainer(args, model, tokenizer, train_ds, eval_ds, *, max_time: float, out_dir: Path, run_id, say):
    """The trainer step: CPU threads, precision, TrainingArguments, the Trainer and its callbacks; prints
    what training will do. Returns (trainer, precision)."""
    import torch
    from transformers import default_data_collator

    from linattn_models.ops import bf16_supported, default_device

    device = default_device()  # the Trainer (accelerate) picks the same accelerator when use_cpu is False
    accel = device != "cpu"
    cpu_busy = 0.0 if accel else set_cpu_threads(args.threads)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    targs = training_arguments(args, out_dir, precision, accel)
    trainer = _make_trainer_class()(
        model=model,
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,  # saved next to every checkpoint
        data_collator=default_data_collator,
    )
    cp = getattr(args, "context_parallel", 1)
    if cp > 1:  # the N ranks of a group train on one batch
        trainer.cp_size, trainer.cp_group = cp, context_parallel_group(cp)
    trainer.meter = Throughput(args.batch_size * args.grad_accum * targs.world_size // cp * args.block_size)
    trainer.clock = TrainClock(max_time)
    trainer.min_lr_ratio = args.min_lr_ratio
    trainer.add_callback(_clock_callback(trainer.clock, trainer.meter))
    trainer.add_callback(_checkpoint_callback(trainer, trainer.meter, out_dir, run_id, args.save_total_limit))
    say(f"training: {targs.max_steps if targs.max_steps > 0 else '-'} steps"
        f"{f' or {max_time:.0f}s' if max_time else ''}, global batch "
        f"{trainer.meter.tokens_per_step // args.block_size} x {args.block_size} tokens, {precision}, "
        f"{f'context parallel {cp} (each rank {args.block_size // cp} tokens of every block), ' if cp > 1 else ''}"
        f"{'%s x%d' % (device, targs.world_size) if accel else 'cpu (%d threads; %.1f of %d CPUs busy at start)' % (torch.get_num_threads(), cpu_busy, os.cpu_count() or 1)}")
    if max_time:
        say(f"  (training ends after {max_time:.0f}s or {targs.max_steps} steps, whichever comes first: "
            "the progress bar's total is the step limit)")
    return trainer, precision
