"""Every environment variable linattn_models reads, parsed one way, in one place (README: "Environment variables").

Switches are read when they act (not cached at import) unless `import time` says otherwise, so a test or a user
may change them between calls. A value that is not understood is an error naming the variable.
"""
import os

# name: (default, what it does)
VARIABLES = {
    "LINATTN_BACKEND": ("auto", "ops backend when an op's backend=None: auto | torch | triton"),
    "LINATTN_FUSED": ("1", "0 sends the fused block ops (norms, rotary, SwiGLU, normaliser) to plain torch"),
    "LINATTN_CHECK_VALUES": ("0", "1 runs the value checks (gates <= 0, NaN/inf, cu_seqlens, token ids) on GPU "
                                  "tensors too (a host sync per call; CPU tensors are always checked)"),
    "LINATTN_DECODE_GRAPH": ("1", "0 turns the CUDA-graph decode step off (eager decoding)"),
    "LINATTN_PARALLEL_COMPILE": ("1", "0 compiles each Triton kernel at its first launch, one by one "
                                      "(import time)"),
    "LINATTN_NO_DATASETS": ("0", "1 makes the training CLI read its data without the datasets package (the in-memory "
                                 "fallback of a minimal GPU image; tests)"),
    "LINATTN_TRITON_POISON": ("0", "1 NaN-fills every kernel output and scratch buffer before the kernels run, "
                                   "so unwritten memory shows (import time; tests)"),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def get(name: str) -> str:
    """The variable's value (stripped, lower case), or its default."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not one of linattn_models' environment variables {sorted(VARIABLES)}")
    value = os.environ.get(name, "").strip().lower()
    return value or VARIABLES[name][0]


def flag(name: str) -> bool:
    """A switch: 1/true/yes/on or 0/false/no/off."""
    value = get(name)
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={os.environ.get(name)!r}: expected 1/0 (true/false, on/off)")


def choice(name: str, choices) -> str:
    value = get(name)
    if value not in choices:
        raise ValueError(f"environment variable {name}={os.environ.get(name)!r}: expected one of {tuple(choices)}")
    return value


def triton_interpret() -> bool:
    """Whether Triton's interpreter is on (Triton's own TRITON_INTERPRET, which Triton reads at kernel definition)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"
