"""Running a call's kernel launches: a plan of queued launches, compiled in parallel the first time.

A first GLA fwd+bwd compiles ~10 kernels of 1-2 s each; left to the launches they compile one after another.
`Plan.run` compiles every queued launch at once on a thread pool (Triton's AsyncCompileMode + warmup with the very
arguments of the launch; the compiler releases the GIL: on the 2-core dev box 8 kernels took 4.1 s in 2 threads
against 8.5 s one by one), then launches them in order. A plan is compiled once per specialisation key (below);
where compiling fails (no AsyncCompileMode in this Triton, a compile error) the launches compile one by one as usual
and raise any error there.
"""
import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import triton
from triton.runtime.errors import OutOfResources

from ... import env

# Triton picks interpreter vs compiler when a @triton.jit function is defined, i.e. when the kernels are imported.
INTERPRET = env.triton_interpret()
PARALLEL_COMPILE = env.flag("LINATTN_PARALLEL_COMPILE")
_COMPILED = set()  # specialisation keys of plans compiled already
_ONE_STAGE = set()  # (plan key, launch index) that ran out of shared memory pipelined (Plan.run)


def _arg_key(value, by_value):
    """What of one launch argument selects the compiled variant: as Triton specialises, a constexpr by value, a
    tensor by dtype and 16-byte alignment, a plain int by being 1 / a multiple of 16 / beyond int32, a float not."""
    if isinstance(value, torch.Tensor):
        return (value.dtype, value.data_ptr() % 16 == 0)
    if by_value or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float):
        return float
    return (value == 1, value % 16 == 0, abs(value) < 2 ** 31)


def launch_key(kernel, kwargs):
    """The specialisation key of one launch (kernel, keyword arguments incl. num_warps / num_stages), from the
    kernel's own parameter list. Approximate by design: a key seen again only skips the parallel pre-compile;
    Triton itself still picks (or compiles) the variant at the launch."""
    runtime = {p.name for p in getattr(kernel, "params", None) or () if not getattr(p, "is_constexpr", False)}
    name = getattr(getattr(kernel, "fn", kernel), "__name__", repr(kernel))
    return (name,) + tuple((n, _arg_key(v, by_value=n not in runtime)) for n, v in sorted(kwargs.items()))


class Plan:
    """Launches queued by the kernels' launch functions (keyword arguments only), run in order by `run`."""

    def __init__(self):
        self.launches = []

    def queue(self, kernel, grid, **kwargs):
        self.launches.append((kernel, grid, kwargs))

    def run(self):
        launches, self.launches = self.launches, []
        key = tuple(launch_key(kernel, kw) for kernel, _, kw in launches)
        if key not in _COMPILED:
            _COMPILED.add(key)
            _compile_parallel(launches)
        for i, (kernel, grid, kw) in enumerate(launches):
            if _ONE_STAGE and (key, i) in _ONE_STAGE:
                kw = dict(kw, num_stages=1)
            try:
                kernel[grid](**kw)
            except OutOfResources as e:
                # software pipelining (num_stages > 1) sized for a device with more shared memory than this one:
                # run unpipelined from now on rather than fail (block sizes come from config.py, not autotuning)
                if kw.get("num_stages", 1) <= 1:
                    raise
                _ONE_STAGE.add((key, i))
                warnings.warn(f"linattn_models: {getattr(kernel, '__name__', kernel)} needs more shared memory at "
                              f"num_stages={kw['num_stages']} than this device has ({e}); running it at 1 stage")
                kernel[grid](**dict(kw, num_stages=1))


def _compile_parallel(launches):
    mode = getattr(triton, "AsyncCompileMode", None)
    if INTERPRET or mode is None or len(launches) < 2 or not PARALLEL_COMPILE:
        return
    try:
        with ThreadPoolExecutor(min(len(launches), os.cpu_count() or 1)) as pool, mode(pool):
            for kernel, grid, kw in launches:
                kernel.warmup(grid=grid, **kw)
    except Exception as e:  # noqa: BLE001
        try:  # Triton 3.6 leaves the mode active when a compile raised: later launches would go to the closed pool
            from triton.runtime import _async_compile
            _async_compile.active_mode.set(None)
        except Exception:  # noqa: BLE001
            pass
        warnings.warn(f"linattn_models: parallel Triton compile failed ({e!r:.200}); compiling one by one")


@functools.lru_cache(maxsize=None)
def shared_mem(device):
    """Bytes of shared memory per block on `device` (a large number for the interpreter)."""
    if INTERPRET or device.type == "cpu":
        return 1 << 20
    try:
        return triton.runtime.driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"]
    except Exception:  # unknown driver: assume a small part
        return 64 * 1024


def dot_precision(dtype):
    """tl.dot's input_precision for fp32 operands: ieee unless torch allows tf32 for matmuls (16-bit: unused)."""
    if INTERPRET:
        return "ieee"
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
