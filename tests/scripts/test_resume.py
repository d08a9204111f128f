"""A training run interrupted after a checkpoint and resumed gives the same loss curve as one straight run."""
import inspect
import json

import pytest
import transformers

from linattn_models.cli import train as train_cli

ARGS = ["--arch", "gla", "--size", "tiny", "--set", "hidden_size=64", "--set", "num_hidden_layers=2",
        "--set", "num_heads=2", "--max-steps", "8", "--block-size", "32", "--batch-size", "2",
        "--eval-steps", "100", "--save-steps", "4", "--logging-steps", "1", "--max-time", "0", "--no-plot",
        "--sample-tokens", "2", "--eval-fraction", "0.2"]


@pytest.fixture
def data(tmp_path):
    # a few real documents (the json package's own source), nothing downloaded
    path = tmp_path / "docs.jsonl"
    src = inspect.getsource(json.decoder) + inspect.getsource(json.encoder)
    chunks = [src[i:i + 1500] for i in range(0, len(src), 1500)]
    path.write_text("".join(json.dumps({"text": c}) + "\n" for c in chunks))
    return str(path)


def losses(out):
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_resume_after_interruption_gives_identical_losses(tmp_path, data, monkeypatch):
    straight = tmp_path / "straight"
    train_cli.main(ARGS + ["--data", data, "--output-dir", str(straight)])

    # Interrupt the second run on the first step after checkpoint-4 was written, then resume it.
    interrupted = tmp_path / "interrupted"
    real_step = transformers.Trainer.training_step

    def step_then_crash(self, *a, **kw):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(self, *a, **kw)

    monkeypatch.setattr(transformers.Trainer, "training_step", step_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_cli.main(ARGS + ["--data", data, "--output-dir", str(interrupted)])
    assert (interrupted / "checkpoint-4").is_dir() and not (interrupted / "checkpoint-8").exists()
    steps_run = []

    def counting_step(self, *a, **kw):
        steps_run.append(self.state.global_step)
        return real_step(self, *a, **kw)

    monkeypatch.setattr(transformers.Trainer, "training_step", counting_step)
    train_cli.main(ARGS + ["--data", data, "--output-dir", str(interrupted), "--resume"])
    assert steps_run == [4, 5, 6, 7]  # it went on from checkpoint-4, not from scratch

    a, b = losses(straight), losses(interrupted)
    assert sorted(a) == list(range(1, 9)) and sorted(b) == sorted(a)
    assert all(a[s] == b[s] for s in a), {s: (a[s], b[s]) for s in a}
