"""``linattn-train --context-parallel N``: the refusals (no processes launched), and a 2-rank gloo run on CPU
(torch.distributed.run) whose first step equals the single-process run's on the same data: the loss (each
rank's, summed as the Trainer's world mean does, and the logged one) and every parameter gradient."""
import inspect
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from linattn_models.cli import train as train_cli

from devices import ROOT

TINY = ["--set", "hidden_size=32", "--set", "num_hidden_layers=2", "--set", "num_heads=2",
        "--set", "intermediate_size=64", "--set", "use_short_conv=true"]
FAST = ["--block-size", "32", "--batch-size", "2", "--max-steps", "1", "--logging-steps", "1", "--eval-steps", "100",
        "--save-steps", "100", "--max-eval-blocks", "1", "--sample-tokens", "0", "--no-plot", "--warmup-steps", "1",
        "--threads", "1", "--eval-fraction", "0.2"]


@pytest.mark.parametrize("world, extra, message", [
    (None, [], "needs a distributed launch"),
    ("1", [], "needs a distributed launch"),
    ("3", [], "WORLD_SIZE=3 processes, not a multiple of 2"),
    ("4", ["--block-size", "33"], "--block-size 33 does not divide by 2"),
    ("2", ["--activation-checkpointing"], "--activation-checkpointing exclude each other"),
])
def test_refused_before_loading(tmp_path, monkeypatch, capsys, world, extra, message):
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--context-parallel", "2", "--output-dir", str(tmp_path / "out"), *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--context-parallel 2" in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_refused_for_a_model_that_does_not_split(tmp_path, monkeypatch, capsys):
    from transformers import LlamaConfig
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=100, max_position_embeddings=256).save_pretrained(tmp_path / "llama")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--context-parallel", "2", "--config", str(tmp_path / "llama"), "--output-dir",
                        str(tmp_path / "out")])
    assert e.value.code == 2
    assert "the model type 'llama' does not split its sequence" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_context_parallel_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--context-parallel", "0", "--output-dir", str(tmp_path / "out")])
    assert "--context-parallel must be >= 1" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker():
    import importlib.util
    spec = importlib.util.spec_from_file_location("cp_train_worker", ROOT / "tests" / "scripts" / "cp_train_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logged_first_loss(out):
    return next(h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h)


def _run_here(tmp_path, monkeypatch, name, argv):
    """The one-process run in this process (saves a second interpreter start on a busy 2-core machine)."""
    from linattn_models.cli import trainer as trainer_mod
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("CP_RECORD", str(tmp_path / name))
    monkeypatch.setattr(trainer_mod, "_make_trainer_class", _worker()._recording_trainer_class)
    out = tmp_path / f"run-{name}"
    train_cli.main([*argv, "--output-dir", str(out)])
    return torch.load(tmp_path / f"{name}.rank0.pt"), _logged_first_loss(out)


def _run(tmp_path, name, argv, world):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", CP_RECORD=str(tmp_path / name))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    worker = [str(ROOT / "tests" / "scripts" / "cp_train_worker.py")]
    launch = [sys.executable, *(["-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
                                 "127.0.0.1", "--master_port", str(_free_port())] if world > 1 else []), *worker]
    out = tmp_path / f"run-{name}"
    p = subprocess.run([*launch, *argv, "--output-dir", str(out)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return [torch.load(tmp_path / f"{name}.rank{r}.pt") for r in range(world)], _logged_first_loss(out)


def test_two_ranks_first_step_equals_one_process(tmp_path, monkeypatch):
    import argparse as m1, shlex as m2, textwrap as m3
    data = tmp_path / "data"
    data.mkdir()
    for i, m in enumerate((m1, m2, m3)):
        (data / f"doc{i}.txt").write_text(inspect.getsource(m))
    argv = ["--arch", "gla", "--size", "tiny", *TINY, "--data", str(data), *FAST]
    one, logged_one = _run_here(tmp_path, monkeypatch, "one", argv)
    ranks, logged_cp = _run(tmp_path, "cp", argv + ["--context-parallel", "2"], 2)

    cp_loss = sum(r["loss"] for r in ranks) / len(ranks)  # the Trainer logs the world's mean of the ranks' losses
    assert cp_loss == pytest.approx(one["loss"], rel=1e-5)
    assert logged_cp == pytest.approx(logged_one, rel=1e-5)
    assert ranks[0]["loss"] != pytest.approx(ranks[1]["loss"], rel=1e-3)  # each rank had its own piece
    for r in ranks:  # DDP's average: the same gradients on every rank, equal to the one process's
        assert r["grads"].keys() == one["grads"].keys()
        for n, g in one["grads"].items():
            err = ((r["grads"][n] - g).norm() / g.norm().clamp_min(1e-12)).item()
            assert err < 1e-5, f"{n}: rel err {err:.2e}"
