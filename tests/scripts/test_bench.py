"""scripts/bench.py as a user runs it: one cheap ops case in a fresh process, then the JSON it wrote.

On CPU the run is `--tiny` (Triton's interpreter, tiny shapes; ~20 s on a 2-core box). On a GPU the same case runs
compiled with do_bench at a small shape, SDPA as the only peer (fla's first calls autotune for minutes)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import devices

from devices import ROOT  # noqa: E402
SCRIPT = ROOT / "scripts" / "bench.py"


def test_bench_ops_case_writes_table_and_json(tmp_path):
    if devices.ON_GPU:
        args = ["--set", "B=1", "--set", "H=2", "--set", "T=[256]", "--set", "D=[64]", "--set", "extra_shapes=[]",
                "--set", 'peers=["sdpa"]']
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiled kernels
    else:
        args = ["--tiny"]
        env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--cases", "linear_attention", "--out", str(tmp_path), *args],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(tmp_path.glob("bench_*.json"))
    assert len(files) == 1 and files[0].with_suffix(".txt").is_file()
    data = json.loads(files[0].read_text())
    meta = data["meta"]
    for key in ("card", "torch", "triton", "transformers", "fla", "date"):
        assert key in meta, key
    assert meta["tiny"] is (not devices.ON_GPU)
    case = data["cases"]["linear_attention"]
    assert case["kind"] == "ops" and "error" not in case and case["params"]["families"] == ["linear_attention"]
    (row,) = case["rows"]
    for key in ("op", "B", "H", "T", "D", "ours_fwd", "ours_fwdbwd", "floor", "x_floor", "sdpa_fwd", "sdpa_fwdbwd"):
        assert key in row, key
    assert row["ours_fwd"] > 0 and row["ours_fwdbwd"] > 0 and row["floor"] > 0
    # the table on stdout: header with card and versions, then the case's columns
    assert meta["torch"] in r.stdout and meta["triton"] in r.stdout and "ours f+b" in r.stdout


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_registry_list_and_argument_errors(bench, capsys):
    assert bench.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name, case in bench.CASES.items():
        assert name in listed
        assert case.kind in bench.COLUMNS and set(case.tiny) <= set(case.params), name
    for cfg in (c for case in bench.CASES.values() for c in case.params.get("configs", [])):
        from linattn_models.ops.triton.config import _default_config
        assert set(cfg) <= set(_default_config(128, 128, True)), cfg  # sweep keys the kernels know
    with pytest.raises(SystemExit):
        bench.main(["--cases", "no_such_case"])
    with pytest.raises(SystemExit):
        bench.main(["--cases", "linear_attention", "--set", "no_such_param=1"])


def test_compile_case_tiny(bench):
    """The torch.compile case at a tiny size on CPU (dynamo's eager backend: tracing fullgraph, no codegen)."""
    case = bench.CASES["compile"]
    rows, checks = case.fn({**case.params, **case.tiny}, {"tiny": True})
    (row,) = rows
    assert "error" not in row, row
    assert row["eager_ms"] > 0 and row["compiled_ms"] > 0 and row["compile_s"] > 0
    # the same weights and batch: bf16 autocast rounding at most (relative: the H200 run saw 1.02e-4 at a loss
    # of 10.5, where CPU runs stay below 1e-4)
    assert row["loss_diff"] < 1e-4 * max(1.0, abs(row["loss_first"]))
    # decoding through generate with the forward compiled vs plain eager (fp32 on CPU: the same tokens)
    assert "decode_error" not in row, row
    for key in ("decode_eager_ms", "decode_compiled_ms", "decode_compile_s", "decode_speedup"):
        assert row[key] > 0, key
    assert row["decode_tokens"] == "equal", row
    text = bench.table("models", rows)
    assert "compile s" in text and "decode compiled ms/tok" in text and "decode tokens" in text
