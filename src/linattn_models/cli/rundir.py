"""The output directory of a training run: one writer at a time, no other run's files lost, and only
complete checkpoints resumed from.

- ``train.lock``: held by the training process (its pid and host inside; an OS file lock on top where the
  platform has one), released at exit. A lock whose pid is no longer alive is stale and taken over.
- ``linattn_run.json``: which run the directory holds (a run id, whether it is the built-in default job).
- ``checkpoint-N/linattn_checkpoint.json``: written with ``"complete": false`` before the Trainer writes
  checkpoint-N and rewritten (atomically) with ``"complete": true`` once all of it is written, so a checkpoint
  cut short by a kill is never taken for a complete one. It carries the run id, so that checkpoint rotation
  only ever deletes the checkpoints of this run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Callable

from linattn_models.cli import UsageError

LOCK_NAME = "train.lock"
RUN_MARKER = "linattn_run.json"
CKPT_MARKER = "linattn_checkpoint.json"
PREVIOUS_DIR = "previous-checkpoints"  # where --overwrite moves the checkpoints of the run it replaces
# Files that mean "a training run wrote here" (besides checkpoint-* dirs).
RUN_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "trainer_state.json", "results.json",
             RUN_MARKER)
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "results.json")
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


class RunDirError(UsageError):
    """A one-line, user-facing reason why training cannot use this output directory."""


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def checkpoints(out_dir) -> list[tuple[int, Path]]:
    """The ``checkpoint-N`` directories directly in ``out_dir``, by step."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_info(ckpt) -> dict | None:
    return _read_json(Path(ckpt) / CKPT_MARKER)


def is_complete(ckpt) -> bool:
    info = checkpoint_info(ckpt)
    m = _CKPT_RE.match(Path(ckpt).name)
    return bool(info and info.get("complete") is True and (m is None or info.get("step") == int(m.group(1))))


def begin_checkpoint(ckpt, run_id: str, step: int) -> None:
    """Before the Trainer writes ``ckpt``: mark it incomplete (also when an older complete one is rewritten)."""
    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(ckpt / CKPT_MARKER, {"run_id": run_id, "step": step, "complete": False})


def finish_checkpoint(ckpt, run_id: str, step: int) -> None:
    """After the Trainer wrote all of ``ckpt``: mark it complete (the last file written)."""
    _write_json_atomic(Path(ckpt) / CKPT_MARKER, {"run_id": run_id, "step": step, "complete": True,
                                                  "time": time.strftime("%Y-%m-%d %H:%M:%S")})


def last_complete_checkpoint(out_dir, warn: Callable[[str], None]) -> Path | None:
    """The complete checkpoint with the highest step in ``out_dir``; incomplete ones are skipped with a warning."""
    for step, p in reversed(checkpoints(out_dir)):
        if is_complete(p):
            return p
        why = "no completion marker" if checkpoint_info(p) is None else "marked incomplete"
        warn(f"skipping {p}: not a complete checkpoint ({why}: cut short while being written, or written by "
             "an older linattn-train; pass --resume PATH to use it anyway)")
    return None


def rotate_checkpoints(out_dir, run_id: str, limit: int | None, current_step: int) -> list[Path]:
    """Keep at most ``limit`` complete checkpoints of run ``run_id`` (never the one of ``current_step``) and
    drop its incomplete leftovers. Checkpoints of other runs, or without a marker, are never touched."""
    if not limit or limit <= 0:
        return []
    owned = [(s, p, is_complete(p)) for s, p in checkpoints(out_dir)
             if (checkpoint_info(p) or {}).get("run_id") == run_id]
    deleted = []
    for s, p, complete in owned:
        if not complete and s != current_step:
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p)
    done = [(s, p) for s, p, complete in owned if complete]
    excess = len(done) - limit
    for s, p in done:
        if excess <= 0:
            break
        if s != current_step:
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p)
            excess -= 1
    return deleted


# ---- the lock -------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


class OutputDirLock:
    """An exclusive lock on a training output directory: ``train.lock`` with the holder's pid and host.

    Refused (RunDirError naming the directory and the holder's pid) while its holder is alive; a lock
    left by a process that is gone is taken over with a warning. Where ``fcntl`` exists the file is also
    ``flock``-ed, so two processes that start at once cannot both take it."""

    def __init__(self, out_dir, warn: Callable[[str], None] = lambda m: None):
        self.dir = Path(out_dir)
        self.path = self.dir / LOCK_NAME
        self.warn = warn
        self.fd: int | None = None

    def _holder(self) -> dict:
        return _read_json(self.path) or {}

    def _refuse(self, holder: dict, hint: str = ""):
        pid = holder.get("pid", "?")
        host = holder.get("host") or "?"
        raise RunDirError(
            f"--output-dir {self.dir} is in use by another training run (pid {pid} on {host}, lock file "
            f"{self.path}): wait for it to end, or pick another --output-dir{hint}")

    def acquire(self) -> "OutputDirLock":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the pid check alone
            fcntl = None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    self._refuse(self._holder())
                try:  # the file we locked may have been removed (released) meanwhile: lock the new one
                    if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                        os.close(fd)
                        continue
                except FileNotFoundError:
                    os.close(fd)
                    continue
            holder = self._holder()
            pid = holder.get("pid")
            if isinstance(pid, int) and pid != os.getpid():
                same_host = holder.get("host") in (None, me["host"])
                if not same_host or _pid_alive(pid):
                    os.close(fd)
                    self._refuse(holder, f" (delete {self.path} if pid {pid} is not a training run)")
                self.warn(f"taking over the stale lock {self.path} of pid {pid} (no longer running)")
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return self
        raise RunDirError(f"--output-dir {self.dir}: could not take the lock {self.path} (it keeps changing)")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if (self._holder().get("pid")) == os.getpid():
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)  # releases the flock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---- what the directory holds, and what this run may do with it ------------------------------------------


def run_contents(out_dir) -> list[str]:
    """Names of the training outputs in ``out_dir`` (run files and checkpoint dirs), empty when none."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    names = [n for n in RUN_FILES if (out / n).exists()]
    return names + [p.name for _, p in checkpoints(out)]


def read_run(out_dir) -> dict | None:
    return _read_json(Path(out_dir) / RUN_MARKER)


def prepare_output_dir(out_dir, *, overwrite: bool, resume: str | None, default_job: bool,
                       say: Callable[[str], None], warn: Callable[[str], None],
                       argv: list[str] | None = None) -> tuple[str, Path | None, Callable[[], None]]:
    """Decide, under the lock and before any heavy work, whether this run may write to ``out_dir``.
    Returns (run id, checkpoint to resume from or None, apply); ``apply()``, called just before training
    starts, moves or deletes what the decision says and records the run in ``linattn_run.json`` (so a run
    that fails while loading its data changes nothing). Raises RunDirError when the directory holds another
    run and neither ``overwrite`` nor ``resume`` is set.

    - ``resume``: continue the run the directory holds, from its last complete checkpoint (or ``resume``
      itself when it is a path); with no complete checkpoint, start fresh unless a model is already there.
    - ``overwrite``: start a new run there; the old run's checkpoints are not deleted but moved to
      ``previous-checkpoints/<its run id>/``; its final model files are replaced at the end of training.
    - the built-in default job may replace a previous run of the built-in default job (and its
      checkpoints) without ``overwrite``; nothing else is replaced without asking.
    """
    out = Path(out_dir)
    contents = run_contents(out)
    run = read_run(out) or {}
    resume_from = None
    todo: list[Callable[[], None]] = []
    if resume:
        resume_from = _resume_checkpoint(out, resume, say, warn)
        run_id = (checkpoint_info(resume_from) or {}).get("run_id") if resume_from else None
        run_id = run_id or run.get("run_id") or new_run_id()
    elif not contents:
        run_id = new_run_id()
    elif overwrite:
        todo.append(_move_aside(out, run, say))
        run_id = new_run_id()
    elif default_job and _holds_default_run(out, run):
        todo.append(_replace_default_run(out, say))
        run_id = new_run_id()
    else:
        shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        raise RunDirError(
            f"--output-dir {out} already holds a training run ({shown}): pass --overwrite to replace it "
            f"(its checkpoints are kept, moved to {out / PREVIOUS_DIR}/), or --resume to continue it, or "
            "pick another --output-dir")

    def apply():
        for f in todo:
            f()
        out.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(out / RUN_MARKER, {
            "run_id": run_id, "default_job": bool(default_job), "pid": os.getpid(),
            "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "resumed_from": str(resume_from) if resume_from else None, "argv": list(argv or [])})

    return run_id, resume_from, apply


def _resume_checkpoint(out: Path, resume: str, say, warn) -> Path | None:
    """The checkpoint --resume continues from: the last complete one in ``out`` ("auto"), or the path
    given; None (start fresh) when ``out`` has none and no trained model either."""
    if resume != "auto":
        resume_from = Path(resume)
        if not is_complete(resume_from):
            warn(f"--resume {resume_from}: no completion marker (cut short while being written, or written "
                 "by an older linattn-train); trying it anyway")
        return resume_from
    resume_from = last_complete_checkpoint(out, warn)
    if resume_from is None:
        models = [n for n in MODEL_FILES if (out / n).exists()]
        if models:
            raise RunDirError(
                f"--resume: no complete checkpoint in --output-dir {out} to resume from, but it holds "
                f"a trained model ({', '.join(models)}); pass --overwrite instead to start a new run there")
        say(f"--resume: no complete checkpoint in {out}, starting fresh")
    return resume_from


def _move_aside(out: Path, run: dict, say) -> Callable[[], None]:
    """--overwrite: what moves the checkpoints there now to previous-checkpoints/<their run id>/."""
    old = checkpoints(out)
    dest = out / PREVIOUS_DIR / (run.get("run_id") or ("unknown-" + new_run_id()))

    def move_aside():
        if not old:
            say(f"--overwrite: replacing the run in {out}")
            return
        dest.mkdir(parents=True, exist_ok=True)
        for _, p in old:
            target = dest / p.name
            if target.exists():
                target = dest / f"{p.name}-{uuid.uuid4().hex[:6]}"
            os.replace(p, target)
        say(f"--overwrite: moved the {len(old)} checkpoint(s) of the run that was in {out} "
            f"({', '.join(p.name for _, p in old)}) to {dest}/ (never deleted: remove them when no longer "
            "needed); its final model files are replaced at the end of this run")

    return move_aside


def _holds_default_run(out: Path, run: dict) -> bool:
    """Whether ``out`` holds a run of the built-in default job, all of whose checkpoints are its own."""
    prev_id = run.get("run_id")
    return bool(run.get("default_job") and prev_id and all(
        (checkpoint_info(p) or {}).get("run_id") == prev_id for _, p in checkpoints(out)))


def _replace_default_run(out: Path, say) -> Callable[[], None]:
    """The built-in default job: what deletes its previous run's checkpoints."""
    old = checkpoints(out)

    def replace_default_run():
        for _, p in old:
            shutil.rmtree(p)
        say(f"{out} holds the previous run of the built-in default job: replacing it"
            + (f" (its checkpoints {', '.join(p.name for _, p in old)} are deleted)" if old else "")
            + "; pass --output-dir to keep a run")

    return replace_default_run
