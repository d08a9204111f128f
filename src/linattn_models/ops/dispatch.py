"""Backend choice, in one place.

- "torch": the pure-PyTorch implementation (reference.py); runs on any device.
- "triton": the Triton kernels (ops/triton/). On a GPU Triton drives (CUDA, ROCm/HIP, Intel XPU) they are
  compiled; on CPU tensors they run through Triton's interpreter, which must be switched on with
  TRITON_INTERPRET=1 before the kernels are first imported (Triton reads it when a kernel is defined).
- None / "auto": LINATTN_BACKEND if set, else "triton" for GPU tensors when Triton and the kernels are
  importable, else "torch".

The kernel module is imported lazily so that importing linattn_models never pays Triton's import cost and so
that TRITON_INTERPRET can still be set by a test before the first kernel call.
"""
import importlib

import torch

from .. import env

BACKENDS = ("auto", "torch", "triton")
_TRITON_DEVICES = ("cuda", "xpu")
_triton_module = None
_triton_error = None


def triton_ops():
    """The Triton kernel module, or raise ImportError saying why it is unavailable."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            _triton_module = importlib.import_module("linattn_models.ops.triton")
        except ImportError as e:  # triton missing, or the kernels not importable here
            _triton_error = e
    if _triton_module is None:
        raise ImportError(f"the Triton backend is unavailable: {_triton_error}")
    return _triton_module


def default_device() -> str:
    """The accelerator torch sees (cuda, xpu, mps, ...), else "cpu": where the CLIs and the self-check run by
    default. torch.accelerator knows every device type torch was built for, so an Intel XPU is found too."""
    acc = torch.accelerator.current_accelerator(check_available=True)
    return acc.type if acc is not None else "cpu"


def bf16_supported(device) -> bool:
    """Whether `device` (a type string or torch.device) does bf16 arithmetic natively (autocast's choice)."""
    kind = torch.device(device).type
    if kind == "cpu":
        return False
    check = getattr(getattr(torch, kind, None), "is_bf16_supported", None)
    return bool(check()) if check is not None else False


def resolve_backend(backend, device):
    """Return "torch" or "triton" for tensors on `device`."""
    if backend is None:
        backend = env.get("LINATTN_BACKEND")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (LINATTN_BACKEND likewise), got {backend!r}")
    if backend == "auto":
        if device.type in _TRITON_DEVICES:
            try:
                triton_ops()
                return "triton"
            except ImportError:
                return "torch"
        return "torch"
    if backend == "triton":
        if device.type == "cpu" and not env.triton_interpret():
            raise ValueError("backend='triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
                             "before the first kernel call, or use backend='torch'")
        if device.type not in _TRITON_DEVICES + ("cpu",):
            raise ValueError(f"backend='triton' cannot run on device {device}; use backend='torch'")
        triton_ops()
    return backend
