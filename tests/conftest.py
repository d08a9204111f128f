"""Test configuration: import the package from this checkout's src/, and pick the test device in one place.

`--device auto` (the default) runs the kernel tests on the first CUDA GPU when there is one, with the compiled
Triton kernels (what users run), else on CPU through Triton's interpreter. `--device cpu` forces the interpreter
run on a GPU machine too (GPU-only tests then skip, saying so). Tests take the device from `devices.DEVICE`
(or the `device` fixture), never from torch.cuda.is_available() themselves.

The interpreter must be switched on before anything imports triton: Triton reads TRITON_INTERPRET once and
decides interpreter vs compiler when a @triton.jit function is defined. pytest_configure runs before any test
module is imported, and nothing imported so far (torch) loads triton.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import pytest  # noqa: E402
import torch  # noqa: E402

import devices  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="where the kernel tests run: cuda (compiled Triton kernels), cpu (Triton's interpreter), "
                          "auto (cuda when a GPU is present)")


def pytest_configure(config):
    choice = config.getoption("--device")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: no CUDA GPU is visible to torch")
    if choice == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
        # hide GPUs too, so code that picks its own device (the Trainer, the CLIs) stays on CPU with the kernels
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:  # the compiled kernels; an inherited TRITON_INTERPRET=1 would hand GPU tensors to the interpreter
        os.environ.pop("TRITON_INTERPRET", None)
    devices.set_device(choice)
    # Under pytest-xdist each worker would start one CPU thread per core: with -n 15 on a 16-core GPU machine the
    # CPU-side tests (the Trainer's, the models' on CPU tensors) then ran 10x slower than alone. Share the cores.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_report_header(config):
    return f"linattn_models test device: {devices.DEVICE} ({'compiled Triton' if devices.ON_GPU else 'interpreter'})"


@pytest.fixture(scope="session")
def device():
    return devices.DEVICE


@pytest.fixture
def poisoned_kernels(monkeypatch):
    """The Triton kernel module with every output and scratch buffer NaN-filled before the kernels run (memory a
    kernel fails to write shows up as NaN); checks it runs compiled on a GPU device and interpreted on CPU."""
    from linattn_models.ops.dispatch import triton_ops
    mod = triton_ops()
    assert mod.INTERPRET != devices.ON_GPU, (
        f"the kernels run {'interpreted' if mod.INTERPRET else 'compiled'} for test device {devices.DEVICE}: "
        "something imported triton before conftest set TRITON_INTERPRET")
    monkeypatch.setattr(mod.alloc, "POISON", True)
    return mod
