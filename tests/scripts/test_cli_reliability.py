"""Issue #16: the training script loses no data silently (another run's output dir, two writers, a checkpoint
cut short), and bad command-line input gets one clear line naming the argument, before any heavy work."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import inspect
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers

from linattn_models.cli import generate as gen_cli
from linattn_models.cli import rundir
from linattn_models.cli import train as train_cli
from linattn_models.cli.data import DataFileError, load_local_dataset

from devices import ROOT  # noqa: E402
# A few CPU steps in a second or two: a tiny Llama (any causal LM works with the script), tiny blocks.
FAST = ["--max-steps", "2", "--block-size", "16", "--batch-size", "2", "--eval-steps", "100", "--save-steps", "1",
        "--logging-steps", "1", "--max-eval-blocks", "2", "--sample-tokens", "0", "--warmup-steps", "0",
        "--no-plot", "--max-time", "0", "--eval-fraction", "0.3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import LlamaConfig

    d = tmp_path_factory.mktemp("rel")
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=100, max_position_embeddings=64).save_pretrained(d / "llama")
    (d / "txt").mkdir()
    for i, m in enumerate((json.decoder, json.encoder, json.scanner)):
        (d / "txt" / f"doc{i}.txt").write_text(inspect.getsource(m)[:3000])
    return d


def base(setup, out, *extra):
    return ["--config", str(setup / "llama"), "--data", str(setup / "txt"), "--output-dir", str(out), *FAST,
            *extra]


def usage_error(capsys, fn, argv) -> str:
    """Run ``fn(argv)``; it must exit with status 2 and one line ``<prog>: error: ...``; returns that line."""
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(("linattn-train: error: ", "linattn-generate: error: ")), err
    return err[-1]


# ---- 1. an output dir holding another run is not replaced without --overwrite / --resume ----------------


def test_output_dir_of_another_run_is_refused_and_overwrite_keeps_its_checkpoints(tmp_path, setup, capsys):
    out = tmp_path / "run"
    train_cli.main(base(setup, out))
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    model_mtime = (out / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()

    msg = usage_error(capsys, train_cli.main, base(setup, out, "--max-steps", "1"))
    assert f"--output-dir {out} already holds a training run" in msg
    assert "pass --overwrite to replace it" in msg and "--resume to continue it" in msg
    assert (out / "model.safetensors").stat().st_mtime_ns == model_mtime  # nothing touched
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    assert not (out / rundir.LOCK_NAME).exists()  # the lock was released

    # --overwrite: a new run; the old run's checkpoints are moved aside, never deleted or overwritten
    old_id = rundir.read_run(out)["run_id"]
    # ... but only once training starts: a run that fails on its data first changes nothing
    msg = usage_error(capsys, train_cli.main, base(setup, out, "--overwrite", "--block-size", "100000"))
    assert "--block-size 100000: not enough text for one block" in msg
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    assert rundir.read_run(out)["run_id"] == old_id and not (out / rundir.PREVIOUS_DIR).exists()
    res = train_cli.main(base(setup, out, "--overwrite", "--save-total-limit", "1"))
    assert res["steps"] == 2
    assert "--overwrite: moved the 2 checkpoint(s)" in capsys.readouterr().out
    kept = out / rundir.PREVIOUS_DIR / old_id
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert all(rundir.is_complete(p) and rundir.checkpoint_info(p)["run_id"] == old_id for p in kept.iterdir())
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]  # this run's, rotated to 1
    assert rundir.read_run(out)["run_id"] != old_id


def test_rotation_never_deletes_another_runs_checkpoint_and_resume_skips_it(tmp_path, setup, capsys):
    out = tmp_path / "run"
    train_cli.main(base(setup, out, "--save-total-limit", "1"))
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    foreign = out / "checkpoint-1000"  # not written by this run (no marker): e.g. copied in by hand
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"someone else's")
    capsys.readouterr()

    res = train_cli.main(base(setup, out, "--save-total-limit", "1", "--max-steps", "4", "--resume"))
    assert res["steps"] == 4
    cap = capsys.readouterr()
    assert f"resuming from {out / 'checkpoint-2'}" in cap.out
    assert f"skipping {foreign}: not a complete checkpoint (no completion marker" in cap.err
    assert (foreign / "model.safetensors").read_bytes() == b"someone else's"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1000", "checkpoint-4"]


def test_prepare_output_dir_rules(tmp_path):
    """The built-in default job replaces only a previous default-job run; --resume without a complete
    checkpoint does not start over a trained model."""
    said, warned = [], []
    kw = dict(say=said.append, warn=warned.append)

    def fake_run(d, default_job, steps=(5,), complete=True):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        rid = rundir.new_run_id()
        rundir._write_json_atomic(d / rundir.RUN_MARKER, {"run_id": rid, "default_job": default_job})
        for s in steps:
            rundir.begin_checkpoint(d / f"checkpoint-{s}", rid, s)
            if complete:
                rundir.finish_checkpoint(d / f"checkpoint-{s}", rid, s)
        return rid

    d = tmp_path / "default"
    old = fake_run(d, default_job=True)
    with pytest.raises(rundir.RunDirError, match="already holds a training run"):  # not the default job
        rundir.prepare_output_dir(d, overwrite=False, resume=None, default_job=False, **kw)
    rid, resume, apply = rundir.prepare_output_dir(d, overwrite=False, resume=None, default_job=True, **kw)
    assert (d / "checkpoint-5").is_dir()  # nothing changes before apply() (just before training starts)
    apply()
    assert rid != old and resume is None and not (d / "checkpoint-5").exists()
    assert rundir.read_run(d)["run_id"] == rid
    assert "holds the previous run of the built-in default job: replacing it" in said[-1]

    d = tmp_path / "user"
    fake_run(d, default_job=False)
    with pytest.raises(rundir.RunDirError, match="pass --overwrite to replace it"):
        rundir.prepare_output_dir(d, overwrite=False, resume=None, default_job=True, **kw)

    d = tmp_path / "default-plus-foreign"
    fake_run(d, default_job=True)
    (d / "checkpoint-9").mkdir()  # no marker: not the default job's, so it is not deleted
    with pytest.raises(rundir.RunDirError, match="already holds a training run"):
        rundir.prepare_output_dir(d, overwrite=False, resume=None, default_job=True, **kw)
    assert (d / "checkpoint-5").is_dir()

    d = tmp_path / "cut-short"
    fake_run(d, default_job=False, complete=False)
    with pytest.raises(rundir.RunDirError, match="--resume: no complete checkpoint in --output-dir .* holds a "
                                                 "trained model"):
        rundir.prepare_output_dir(d, overwrite=False, resume="auto", default_job=False, **kw)

    d = tmp_path / "fresh"  # --resume into an empty dir starts fresh (a preemptible job's one command)
    d.mkdir()
    rid, resume, apply = rundir.prepare_output_dir(d, overwrite=False, resume="auto", default_job=False, **kw)
    apply()
    assert rid and resume is None and rundir.read_run(d)["run_id"] == rid


# ---- 2. one writer per output dir --------------------------------------------------------------------


def _lock_holder(out: Path):
    """A separate process that holds the output dir's lock until killed."""
    code = ("import sys, time; from linattn_models.cli.rundir import OutputDirLock; "
            f"OutputDirLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, setup, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = _lock_holder(out)
    try:
        msg = usage_error(capsys, train_cli.main, base(setup, out))
        assert f"--output-dir {out} is in use by another training run (pid {holder.pid} on " in msg
        assert not list(out.glob("checkpoint-*")) and not (out / rundir.RUN_MARKER).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((out / rundir.LOCK_NAME).read_text())["pid"] == holder.pid  # left behind by the kill

    warned = []
    with rundir.OutputDirLock(out, warned.append):
        assert json.loads((out / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert warned == [f"taking over the stale lock {out / rundir.LOCK_NAME} of pid {holder.pid} (no longer running)"]
    assert not (out / rundir.LOCK_NAME).exists()


def test_lock_file_of_a_live_process_is_respected(tmp_path):
    """A lock file naming a live pid (a holder without flock, e.g. on another filesystem) is not taken."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        import socket
        (tmp_path / rundir.LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(rundir.RunDirError, match=f"in use by another training run \\(pid {sleeper.pid} "):
            rundir.OutputDirLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- 3. a checkpoint cut short is never resumed from --------------------------------------------------


def test_checkpoint_cut_short_is_skipped_on_resume(tmp_path, setup, capsys, monkeypatch):
    out = tmp_path / "run"
    real_save = transformers.Trainer.save_model

    def save_then_die(self, output_dir=None, _internal_call=False):
        real_save(self, output_dir, _internal_call)
        if output_dir and Path(output_dir).name == "checkpoint-2":
            raise KeyboardInterrupt("killed while writing checkpoint-2")  # weights written, optimizer not

    monkeypatch.setattr(transformers.Trainer, "save_model", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_cli.main(base(setup, out))
    monkeypatch.undo()
    part = out / "checkpoint-2"
    assert (part / "model.safetensors").is_file() and not (part / "optimizer.pt").exists()
    assert not rundir.is_complete(part) and rundir.is_complete(out / "checkpoint-1")
    assert not (out / rundir.LOCK_NAME).exists()
    capsys.readouterr()

    steps_run = []
    real_step = transformers.Trainer.training_step

    def counting_step(self, *a, **kw):
        steps_run.append(self.state.global_step)
        return real_step(self, *a, **kw)

    monkeypatch.setattr(transformers.Trainer, "training_step", counting_step)
    res = train_cli.main(base(setup, out, "--resume"))
    cap = capsys.readouterr()
    assert f"skipping {part}: not a complete checkpoint (marked incomplete" in cap.err
    assert f"resuming from {out / 'checkpoint-1'}" in cap.out
    assert steps_run == [1] and res["steps"] == 2
    assert rundir.is_complete(part) and (part / "optimizer.pt").is_file()


def test_rewriting_a_complete_checkpoint_marks_it_incomplete_first(tmp_path):
    ck = tmp_path / "checkpoint-3"
    rundir.begin_checkpoint(ck, "r", 3)
    assert not rundir.is_complete(ck)
    rundir.finish_checkpoint(ck, "r", 3)
    assert rundir.is_complete(ck)
    rundir.begin_checkpoint(ck, "r", 3)  # the same step written again (a resumed run): incomplete until done
    assert not rundir.is_complete(ck)


def test_no_private_trainer_method_overridden():
    cls = train_cli._make_trainer_class()
    assert "_save_checkpoint" not in vars(cls)


# ---- 4. bad training arguments: one line naming the flag, before anything is loaded -----------------------


@pytest.mark.parametrize("extra, expected", [
    (["--block-size", "0"], "--block-size must be >= 2 (tokens per packed training sequence"),
    (["--block-size", "1"], "--block-size must be >= 2 "),
    (["--max-steps", "0"], "--max-steps must be >= 1, or -1 to train for --epochs, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--save-steps", "0"], "--save-steps must be >= 1, got 0"),
    (["--eval-fraction", "1.5"], "--eval-fraction must be between 0 and 1"),
    (["--set", "hidden_size"], "--set expects KEY=VALUE, got 'hidden_size'"),
    (["--overwrite", "--resume"], "--overwrite and --resume exclude each other"),
])
def test_bad_numbers(tmp_path, setup, capsys, extra, expected):
    out = tmp_path / "never"
    msg = usage_error(capsys, train_cli.main, base(setup, out, *extra))
    assert expected in msg
    assert not out.exists()


def test_report_to_missing_integration_fails_fast(tmp_path, setup, capsys, monkeypatch):
    """--report-to of an integration that is not installed: refused up front with the install hint, not a crash
    after data loading (transformers' own availability check decides; made False here so the test never depends
    on what this machine has)."""
    from transformers.integrations import integration_utils
    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: False)
    out = tmp_path / "never"
    msg = usage_error(capsys, train_cli.main, base(setup, out, "--report-to", "none,tensorboard"))
    assert "--report-to tensorboard: the tensorboard package is not installed (pip install tensorboard" in msg
    assert not out.exists()


def test_unknown_set_key(tmp_path, setup, capsys):
    out = tmp_path / "never"
    msg = usage_error(capsys, train_cli.main, base(setup, out, "--set", "hiden_size=32"))
    assert ("--set hiden_size=32: llama has no config field 'hiden_size' (did you mean 'hidden_size'?); "
            "its fields:") in msg
    assert "num_hidden_layers" in msg
    assert not out.exists()
    # valid keys and aliases still work (num_attention_heads is our configs' alias of num_heads)
    cfg = train_cli.build_config(str(ROOT / "configs" / "gla" / "tiny.json"), ["num_attention_heads=2"])
    assert cfg.num_heads == 2


def test_bad_paths(tmp_path, setup, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    missing = tmp_path / "no" / "such"
    cases = [
        (["--output-dir", str(f)], f"--output-dir {f}: it is a file, expected a directory"),
        (["--output-dir", str(f / "sub")], f"--output-dir {f / 'sub'}: {f} is a file, expected a directory"),
        (["--config", str(missing)], f"--config {missing}: no such file or directory (expected a config.json"),
        (["--init-from", str(missing)], f"--init-from {missing}: no such directory (expected a checkpoint"),
        (["--init-from", str(tmp_path)], f"--init-from {tmp_path}: no config.json in this directory"),
        (["--tokenizer", str(missing)], f"--tokenizer {missing}: no such directory (expected a local tokenizer"),
        (["--tokenizer", str(tmp_path)], f"--tokenizer {tmp_path}: no tokenizer files in this directory"),
        (["--resume", str(missing)], f"--resume {missing}: no such checkpoint directory"),
        (["--data", str(missing)], f"--data {missing}: no such file or directory"),
        (["--eval-data", str(missing)], f"--eval-data {missing}: no such file or directory"),
    ]
    for extra, expected in cases:
        argv = base(setup, tmp_path / "out", *extra)
        if extra[0] == "--output-dir":
            argv = argv[:argv.index("--output-dir")] + argv[argv.index("--output-dir") + 2:] + extra
        msg = usage_error(capsys, train_cli.main, argv)
        assert expected in msg, (extra, msg)
    assert not (tmp_path / "out").exists()


def test_binary_data_file_is_named(tmp_path, setup, capsys):
    png = tmp_path / "image.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    msg = usage_error(capsys, train_cli.main, base(setup, tmp_path / "out", "--data", str(png)))
    assert f"--data file {png} is not text (a NUL byte at offset 8): expected UTF-8 text" in msg
    # text at the start, not UTF-8 further on (past the quick check): named when loading fails
    late = tmp_path / "late.txt"
    late.write_bytes(b"hello world\n" * 1000 + b"caf\xe9\n")
    with pytest.raises(DataFileError, match=f"--data file {late} is not text \\(byte 0xe9 at offset 12003 is not "
                                            "UTF-8\\)"):
        load_local_dataset([str(late)])


def test_subprocess_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--block-size", "0", "--output-dir",
                        str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "linattn-train: error: --block-size must be >= 2 (tokens per packed training sequence; each token is "
        "predicted from the ones before it), got 0"]
    assert r.stdout == ""


# ---- 5. generate: bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    (["--num-samples", "0"], "--num-samples must be >= 1 (samples per prompt), got 0"),
    (["--prompt", ""], "--prompt must not be empty: the model continues the prompt's tokens"),
    (["--prompt", "def", "--prompt", ""], "--prompt must not be empty"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--temperature", "0"], "--temperature must be > 0 (or pass --greedy), got 0.0"),
])
def test_generate_bad_arguments(capsys, extra, expected):
    msg = usage_error(capsys, gen_cli.main, ["runs/does-not-matter", *extra])
    assert expected in msg


def test_generate_missing_checkpoint(tmp_path, capsys):
    msg = usage_error(capsys, gen_cli.main, [str(tmp_path / "nope")])
    assert f"checkpoint {tmp_path / 'nope'}: no such directory (expected a checkpoint directory" in msg
