"""Context parallelism (ops.context_parallel): a sequence split across 2-4 ranks equals the whole sequence on one.

The test launches WORLD_SIZE processes of tests/ops/cp_worker.py joined by torch.distributed (gloo on CPU); each
compares its piece's outputs, the final state and every gradient with the float64 single-process run of the
whole sequence (the torch backend in float64; the Triton kernels in fp32 through the interpreter on CPU)."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from devices import ON_GPU, ROOT

ALL = "linear_attention,linear_attention_normalized,retention,simple_gla,gated_linear_attention,delta_rule," \
      "gated_delta_rule"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world, op_names, cases, device="cpu", timeout=600, models=""):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "ops" / "cp_worker.py"), "--ops", op_names,
                               "--cases", cases, "--models", models, "--device", device],
                              env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            p.kill()
    log = "\n".join(outs)
    assert all(p.returncode == 0 for p in procs), log
    n = len(op_names.split(",")) * len(cases.split(",")) if op_names else 0
    assert log.count("ok   ") == world * (n + len(list(filter(None, models.split(","))))), log
    return log


@pytest.mark.parametrize("world", [2, 4])  # 4: pieces of 9, 16, 1 and 24 tokens
def test_every_op_split_equals_whole_float64(world):
    launch(world, ALL, "float64:torch:chunk,float64:torch:recurrent")


@pytest.mark.skipif(ON_GPU, reason="the interpreted kernels need TRITON_INTERPRET=1, which a GPU test run leaves off; "
                                   "the GPU variant below runs the compiled kernels on 2 GPUs")
def test_triton_kernels_split_equals_whole_interpreted():
    # one op per kind of transition (head decay, per-key decay, delta rule): the interpreter is slow
    launch(2, "retention,gated_linear_attention,gated_delta_rule", "float32:triton:chunk")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL allows one rank per GPU)")
def test_triton_kernels_split_equals_whole_on_gpus():
    launch(2, ALL, "float32:triton:chunk,float32:triton:recurrent", device="cuda")


@pytest.mark.parametrize("world", [3])  # a first, a middle and a last piece
def test_models_split_equal_whole(world):
    """Hybrid models (short convs, rotary, softmax attention with a window and GQA) under ops.split_sequence: each
    rank's logits and the rank-summed parameter gradients equal the single-process model's (float64)."""
    launch(world, "", "", models="gated_deltanet-hybrid,retnet-hybrid,gla")


def test_bad_arguments():
    from linattn_models import ops
    q = torch.randn(1, 4, 1, 4)
    with pytest.raises(ValueError, match="op must be one of"):
        ops.context_parallel(torch.matmul, q, q, q)
