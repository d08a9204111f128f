"""Buffers and sizes for kernel launches, shared by every kernel file of the package (attention, fused, normaliser)."""
import functools

import torch
import triton

from ... import env

# NaN-fill outputs and scratch before the kernels run, so memory a kernel fails to write shows (the tests set it).
POISON = env.flag("LINATTN_TRITON_POISON")


def new(shape, dtype, device):
    """An output or scratch buffer (uninitialised; NaN-filled when POISON)."""
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def dummy(device):
    """A placeholder for pointer arguments a launch does not use (the kernels never write through it; reads are
    guarded by constexpr flags). One per device, so a call does not pay an allocation and a fill for it."""
    return torch.zeros(1, dtype=torch.float32, device=device)


def np2(x, lo=16):
    """The next power of two >= x, at least lo (tile sizes: tl.arange needs powers of two)."""
    return max(lo, triton.next_power_of_2(int(x)))


def cdiv(a, b):
    return -(-a // b)
