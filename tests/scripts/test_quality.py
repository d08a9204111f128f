"""scripts/quality.py: the MQAR generator's labels (the part whose bugs would make every accuracy meaningless),
the recall head's alignment with HF's loss, the data-driven architecture list, and a tiny end-to-end run."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from devices import ROOT
from linattn_models.bench import mqar, quality

SHAPES = [(32, 4), (64, 8), (128, 32)]


@pytest.mark.parametrize("T,n", SHAPES)
def test_mqar_labels_are_the_values_paired_with_the_queried_keys(T, n):
    x, labels = mqar.generate(64, T, n, seed=[7, T])
    assert x.shape == labels.shape == (64, T) and x.dtype == labels.dtype == torch.int64
    (klo, khi), (vlo, vhi) = mqar.key_range(), mqar.value_range()
    assert khi <= vlo  # disjoint ranges
    for row, lab in zip(x.tolist(), labels.tolist()):
        keys, values = row[0:2 * n:2], row[1:2 * n:2]
        assert len(set(keys)) == n and all(klo <= k < khi for k in keys) and all(vlo <= v < vhi for v in values)
        pairs = dict(zip(keys, values))
        labelled = [t for t, y in enumerate(lab) if y != mqar.IGNORE]
        assert len(labelled) == n  # each key asked once; everything else masked
        assert all(t > 2 * n for t in labelled)  # only in the query region, never on the pairs themselves
        assert sorted(row[t - 1] for t in labelled) == sorted(keys)
        for t in labelled:
            assert lab[t] == pairs[row[t - 1]] == row[t]  # the value that key was paired with
        rest = [tok for t, tok in enumerate(row[2 * n:], 2 * n) if t not in labelled and t + 1 not in labelled]
        assert set(rest) <= {mqar.FILLER}


def test_mqar_oracle_constant_and_seeds():
    x, labels = mqar.generate(256, 128, 16, seed=3)
    assert mqar.accuracy(mqar.oracle_predictions(x, 16), labels) == 1.0
    # a constant guess scores ~1/num_values (4096 values: ~0.0002), a wrong pairing ~0
    const = torch.full_like(labels, mqar.value_range()[0] + 5)
    assert mqar.accuracy(const, labels) < 0.005
    x2 = x.clone()
    x2[:, 1:32:2] = x[:, 1:32:2].roll(1, dims=1)  # pair each key with its neighbour's value
    assert mqar.accuracy(mqar.oracle_predictions(x2, 16), labels) < 0.05
    again, _ = mqar.generate(256, 128, 16, seed=3)
    other, _ = mqar.generate(256, 128, 16, seed=4)
    assert torch.equal(x, again) and not torch.equal(x, other)  # held-out sets come from other seeds
    with pytest.raises(ValueError, match="4 \\* num_pairs"):
        mqar.generate(1, 64, 17, seed=0)


def test_recall_head_matches_hf_loss_and_full_logits():
    vocab = 512
    x, labels = mqar.generate(4, 64, 8, seed=0, vocab=vocab)
    for entry in [e for e in quality.ARCHS if e[0] in ("gla", "llama")]:
        model = quality.build_model(entry, 32, 1, vocab=vocab, max_len=64).eval()
        with torch.no_grad():
            out = model(input_ids=x, labels=labels)
            logits, target = quality.recall_logits(model, x, labels)
            ours = quality.recall_loss(model, x, labels)
        assert torch.allclose(ours, out.loss, atol=1e-5), entry[0]
        assert len(target) == 4 * 8
        full = mqar.accuracy(mqar.model_predictions(out.logits), labels)
        assert full == pytest.approx(float((logits.argmax(-1) == target).float().mean())), entry[0]


def test_arch_list_is_data_driven(monkeypatch):
    monkeypatch.setattr(quality, "ARCHS", [("gla", "gla", {}), ("gla-conv2", "gla", {"conv_size": 2}),
                                           ("gla-hybrid", "gla", {"no_such_field": [1]}), ("llama", "llama", {})])
    run, skipped = quality.select_archs()
    assert [e[0] for e in run] == ["gla", "gla-conv2", "llama"] and list(skipped) == ["gla-hybrid"]
    assert quality.build_model(run[1], 32, 1, vocab=256).config.conv_size == 2
    with pytest.raises(ValueError, match="unknown"):
        quality.select_archs(["nope"])


def test_variant_adds_an_architecture(monkeypatch):
    """--variant NAME=BASE:JSON: BASE's entry with the fields changed (the hybrid's own fields kept); bad ones are
    refused by name."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("quality_script", ROOT / "scripts" / "quality.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(quality, "ARCHS", list(quality.ARCHS))
    a = script.parse_args(["--variant", 'gdnh-conv2=gated_deltanet-hybrid:{"conv_size": 2}', "--archs", "gdnh-conv2"])
    assert [e[0] for e in a.entries] == ["gdnh-conv2"]
    assert a.entries[0][1:] == ("gated_deltanet", {"attn_layers": [1], "conv_size": 2})
    assert quality.build_model(a.entries[0], 64, 2, vocab=256).config.conv_size == 2
    for bad, why in (("gla=gla:{}", "taken"), ("x=nope:{}", "no architecture"), ("x=gla:[1]", "JSON object"),
                     ("x=llama:{}", "not llama"), ("x=gla:{", "not JSON"), ("gla", "NAME=BASE:JSON")):
        with pytest.raises(SystemExit):
            script.parse_args(["--variant", bad])
        with pytest.raises(ValueError, match=why):
            script.add_variant(bad)


def test_sweep_survives_a_failed_rate(monkeypatch):
    def fake_run(entry, d, lr, p, valid, test, device, log):
        if lr == 1.0:
            raise ValueError("q holds NaN")  # what the CPU value checks say after a divergence
        return dict(arch=entry[0], d_model=d, lr=lr, valid_acc={"32x4": 0.0}, test_acc={"32x4": 0.0})
    monkeypatch.setattr(quality, "mqar_run", fake_run)
    p = dict(shapes=[[32, 4]], vocab=256, eval_seqs=2, valid_seed=1, test_seed=2, d_models=[32], lrs=[1.0, 1e-3])
    runs, best = quality.run_mqar([("gla", "gla", {})], p, "cpu", lambda *a: None)
    assert "NaN" in runs[0]["error"] and runs[0]["test_acc"] == {"32x4": 0.0}
    assert [r["lr"] for r in best] == [1e-3]  # at equal accuracy the run that ran wins


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, float):
        yield obj


TINY = {"mqar.vocab": 1024, "mqar.steps": 2, "mqar.batch": 4, "mqar.shapes": [[32, 4], [64, 8]], "mqar.eval_seqs": 4,
        "convergence.steps": 1, "convergence.batch": 2, "convergence.block": 32, "convergence.eval_every": 1,
        "convergence.eval_blocks": 2}


def _quality(out, *extra, **sets):
    sets = {**TINY, **{k.replace("__", "."): v for k, v in sets.items()}}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "quality.py"), "--mode", "smoke", "--device", "cpu",
                           "--out", str(out), *args, *extra], capture_output=True, text=True, env=env, timeout=300,
                          cwd=ROOT)


def test_smoke_run_writes_results_for_every_architecture(tmp_path):
    r = _quality(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("quality.json", "quality.md", "mqar_accuracy.png", "convergence.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "quality.json").read_text())
    expected, skipped = quality.select_archs()
    names = [e[0] for e in expected]
    assert "llama" in names and set(names) | set(skipped) == {e[0] for e in quality.ARCHS}
    assert sorted(r["arch"] for r in res["mqar"]["best"]) == sorted(names)
    assert [r["arch"] for r in res["convergence"]["runs"]] == names
    assert all(math.isfinite(v) for v in _numbers(res))
    for run in res["mqar"]["runs"]:
        assert set(run["test_acc"]) == {"32x4", "64x8"}
        assert all(0.0 <= a <= 1.0 for a in [*run["test_acc"].values(), *run["valid_acc"].values()])
    for run in res["convergence"]["runs"]:
        assert len(run["curve"]) == 2 and run["tokens_per_s"] > 0 and run["final_eval_loss"] > 0
    for key in ("card", "torch", "transformers", "date"):
        assert res["machine"][key]
    assert res["settings"]["mqar"]["steps"] == 2  # --set reached the run
    assert "| llama |" in r.stdout and "final held-out loss" in r.stdout


def test_jobs_merges_children_and_reports_a_failed_one(tmp_path):
    """--jobs 2: llama's child runs through; gla's cannot write its MQAR plot (a folder is in the way), so it
    fails after saving its MQAR runs. One run covers the merge and the failure (CI time)."""
    (tmp_path / "parts" / "gla" / "mqar_accuracy.png").mkdir(parents=True)
    r = _quality(tmp_path, "--jobs", "2", "--archs", "gla,llama", mqar__lrs=[3e-3, 1e-3], convergence__steps=2)
    assert r.returncode == 1, r.stderr[-3000:]
    for name in ("quality.json", "quality.md", "mqar_accuracy.png", "convergence.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    for name in ("gla", "llama"):  # each child: its own folder and log, its progress prefixed on our stderr
        assert (tmp_path / "parts" / name / "quality.json").is_file() and (tmp_path / "parts" / f"{name}.log").is_file()
        assert f"[{name}]   mqar {name}" in r.stderr
    res = json.loads((tmp_path / "quality.json").read_text())
    assert all(math.isfinite(v) for v in _numbers(res))
    assert res["settings"]["archs"] == ["gla", "llama"] and res["settings"]["jobs"] == 2
    assert res["settings"]["convergence"]["vocab"] > 0 and "running" not in res  # the child's copy
    assert list(res["skipped"]) == ["gla"]
    why = res["skipped"]["gla"]
    assert "exit code 1" in why and "IsADirectoryError" in why and "parts/gla.log" in why, why
    assert sorted((r["arch"], r["lr"]) for r in res["mqar"]["runs"]) == [("gla", 1e-3), ("gla", 3e-3), ("llama", 1e-3),
                                                                      ("llama", 3e-3)]
    assert [r["arch"] for r in res["mqar"]["best"]] == ["gla", "llama"]  # gla's saved runs are kept
    assert [r["arch"] for r in res["convergence"]["runs"]] == ["llama"]  # gla never got there
    assert all(len(r["curve"]) == 3 and r["final_eval_loss"] > 0 for r in res["convergence"]["runs"])
    assert res["convergence"]["data"]["unigram_baseline"] > 0 and res["machine"]["card"]
    assert "| llama |" in r.stdout and "--jobs 2" in r.stdout  # the tokens/s caveat
    assert "gla (child failed (exit code 1)" in r.stdout and (tmp_path / "quality.md").read_text() == r.stdout
