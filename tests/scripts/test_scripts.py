"""The main job's scripts on CPU: train a few steps on a temp dir with tiny data, resume, then load the
result with AutoModelForCausalLM and generate (pipeline, streaming, the generate CLI)."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import linattn_models  # noqa: F401  (registers the model types)
from linattn_models.cli import generate as gen_cli
from linattn_models.cli import train as train_cli

from devices import ROOT  # noqa: E402

# Small enough for a few CPU steps in seconds.
TINY = ["--set", "hidden_size=64", "--set", "num_hidden_layers=2", "--set", "num_heads=2",
        "--set", "num_attention_heads=2", "--set", "intermediate_size=128"]
FAST = ["--max-steps", "4", "--block-size", "32", "--batch-size", "2", "--eval-steps", "2", "--save-steps", "2",
        "--logging-steps", "1", "--max-eval-blocks", "4", "--sample-tokens", "6", "--warmup-steps", "1"]


def _registered(model_type):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    return model_type in CONFIG_MAPPING


def _arch_available(arch):
    try:
        train_cli.resolve_config_path(arch, "tiny")
    except FileNotFoundError:
        return False
    return _registered(f"linattn_{arch}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A few stdlib modules as .txt files and as a JSONL file."""
    import argparse as m1, json as m2, textwrap as m3, shlex as m4, fnmatch as m5, bisect as m6
    d = tmp_path_factory.mktemp("data")
    texts = [inspect.getsource(m) for m in (m1, m2, m3, m4, m5, m6)]
    (d / "txt").mkdir()
    for i, t in enumerate(texts):
        (d / "txt" / f"doc{i}.txt").write_text(t)
    with open(d / "docs.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"content": t}) + "\n")
    return d


@pytest.fixture(scope="module")
def llama_config(tmp_path_factory):
    """Any registered causal LM works with the scripts: a tiny Llama stands in for ours."""
    from transformers import LlamaConfig
    d = tmp_path_factory.mktemp("llama")
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=100, max_position_embeddings=256).save_pretrained(d)
    return d


def _check_checkpoint(out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    ckpts = sorted(out.glob("checkpoint-*"))
    assert ckpts, "no checkpoints written"
    for c in ckpts:
        assert (c / "tokenizer.json").is_file(), f"tokenizer missing in {c}"
    assert (out / "loss_curve.png").stat().st_size > 1000
    res = json.loads((out / "results.json").read_text())
    assert res["eval_loss"] > 0 and res["unigram_baseline"] > 0 and "sample" in res

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok)
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    text = pipe("def f(x):", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("def f(x):")
    ids = tok("import os", return_tensors="pt")
    with torch.no_grad():
        g = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert g.shape[1] > ids["input_ids"].shape[1]
    return res


def test_train_any_causal_lm_text_files_resume_and_generate(tmp_path, data_dir, llama_config, capsys):
    out = tmp_path / "run"
    files = [str(p) for p in sorted((data_dir / "txt").glob("*.txt"))]
    res = train_cli.main(["--config", str(llama_config), "--data", *files, "--eval-fraction", "0.2",
                          "--output-dir", str(out), *FAST])
    assert res["steps"] == 4
    printed = capsys.readouterr().out
    assert "unigram baseline" in printed and "sample" in printed
    _check_checkpoint(out)

    # resume from the last checkpoint and train on to step 6
    res2 = train_cli.main(["--config", str(llama_config), "--data", *files, "--eval-fraction", "0.2",
                           "--output-dir", str(out), *FAST, "--max-steps", "6", "--resume"])
    assert res2["steps"] == 6
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert any(h.get("step") == 1 for h in state["log_history"])  # history carried over from the first run

    # the generate CLI: pipeline and streaming
    outs = gen_cli.main([str(out), "--prompt", "def ", "--max-new-tokens", "5", "--num-samples", "2"])
    assert len(outs) == 2 and all(o.startswith("def ") for o in outs)
    outs = gen_cli.main([str(out / "checkpoint-6"), "--prompt", "x = ", "--max-new-tokens", "4", "--stream",
                         "--greedy"])
    assert outs[0].startswith("x = ")
    assert "x = " in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["gla", "retnet", "linear_transformer"])
def test_train_our_archs_jsonl(tmp_path, data_dir, arch):
    if not _arch_available(arch):
        pytest.skip(f"linattn_{arch} or configs/{arch}/tiny.json not available yet")
    out = tmp_path / arch
    res = train_cli.main(["--arch", arch, "--size", "tiny", *TINY, "--data", str(data_dir / "docs.jsonl"),
                          "--text-field", "content", "--eval-fraction", "0.2", "--output-dir", str(out), *FAST])
    assert res["arch"] == f"linattn_{arch}"
    _check_checkpoint(out)


def test_train_hybrid_size(tmp_path, data_dir):
    """--size tiny-hybrid: the hybrid stack (every 4th layer softmax attention) trains, and --set overrides keep
    attn_layers (only derived fields are re-derived)."""
    out = tmp_path / "hybrid"
    res = train_cli.main(["--arch", "gated_deltanet", "--size", "tiny-hybrid", *TINY, "--set", "num_hidden_layers=4",
                          "--data", str(data_dir / "docs.jsonl"), "--text-field", "content", "--eval-fraction", "0.2",
                          "--output-dir", str(out), *FAST])
    assert res["arch"] == "linattn_gated_deltanet"
    _check_checkpoint(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["attn_layers"] == 4 and cfg["layer_types"][3] == "full_attention"
    assert cfg["attn_num_heads"] == 2  # derived from the new num_heads


def test_console_scripts_subprocess(tmp_path, data_dir, llama_config):
    """scripts/train.py and scripts/generate.py as a user runs them (fresh process, offline)."""
    out = tmp_path / "sub"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(llama_config),
                        "--data", str(data_dir / "txt"), "--eval-fraction", "0.3", "--output-dir", str(out), *FAST,
                        "--max-steps", "2", "--no-plot"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "held-out eval loss" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate.py"), str(out), "--prompt", "import",
                        "--max-new-tokens", "3"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("import")


def test_help_and_bad_config():
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--help"])
    assert e.value.code == 0
    with pytest.raises(FileNotFoundError):
        train_cli.resolve_config_path("gla", "does-not-exist")


def test_train_without_datasets_package(tmp_path, data_dir, llama_config, monkeypatch):
    """The in-memory fallback (for images without `datasets`) trains on text and JSONL files."""
    monkeypatch.setenv("LINATTN_NO_DATASETS", "1")
    out = tmp_path / "nods"
    res = train_cli.main(["--config", str(llama_config), "--data", str(data_dir / "docs.jsonl"),
                          "--text-field", "content", "--eval-fraction", "0.3", "--output-dir", str(out), *FAST,
                          "--max-steps", "2", "--no-plot", "--sample-tokens", "0"])
    assert res["steps"] == 2 and res["eval_loss"] > 0


def test_time_budget_stops_training(tmp_path, data_dir, llama_config):
    out = tmp_path / "budget"
    res = train_cli.main(["--config", str(llama_config), "--data", str(data_dir / "txt"), "--eval-fraction", "0.3",
                          "--output-dir", str(out), *FAST, "--max-steps", "100000", "--max-time", "3",
                          "--save-steps", "100000", "--eval-steps", "100000", "--no-plot", "--sample-tokens", "0"])
    assert 1 <= res["steps"] < 100000
    assert (out / "model.safetensors").is_file() and res["eval_loss"] > 0
