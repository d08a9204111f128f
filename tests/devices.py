"""The test device, set once by conftest.pytest_configure (before test modules are imported).

DEVICE: torch.device the kernel and model tests run on. ON_GPU: the compiled Triton kernels run (else the
interpreter on CPU). `gpu_only` / `cpu_only` mark tests that need one setting, with the reason in the skip.
Per-dtype tolerances (‖Δ‖/‖ref‖ against float64) as scripts/check_kernels_gpu.py uses them on the GPU; the
interpreter computes fp32 dots in ieee and cannot run bf16 (its bf16 results are garbage), so bf16 is GPU-only.
"""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]  # the checkout: src/, scripts/, configs/

DEVICE = torch.device("cpu")
ON_GPU = False


def set_device(name):
    global DEVICE, ON_GPU
    DEVICE = torch.device(name)
    ON_GPU = DEVICE.type == "cuda"


# ‖Δ‖/‖ref‖ bounds of the op kernels against the float64 reference, per input dtype
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def low_precision_dtypes():
    """The 16-bit input dtypes the kernel tests run in on this device."""
    return [torch.float16] + ([torch.bfloat16] if ON_GPU else [])


def gpu_only(reason):
    return pytest.mark.skipif(not ON_GPU, reason=f"needs a CUDA GPU (--device cuda): {reason}")


def cpu_only(reason):
    return pytest.mark.skipif(ON_GPU, reason=f"CPU-only setting (run with --device cpu): {reason}")
