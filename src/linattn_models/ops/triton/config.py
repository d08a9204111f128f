"""Block sizes, warps and path thresholds of the attention kernels (no autotuning: the first call is fast)."""
import functools

from .alloc import np2
from .launch import shared_mem


def kernel_config(K, V, device, overrides=None):
    """The config of a call: the defaults for its head dims and device, updated with `overrides` (a dict of the
    same keys, e.g. from a benchmark sweep; an unknown key is an error naming it)."""
    cfg = dict(_default_config(K, V, shared_mem(device) >= 160 * 1024))
    if overrides:
        unknown = sorted(set(overrides) - set(cfg))
        if unknown:
            raise KeyError(f"kernel_config: unknown keys {unknown}; known: {sorted(cfg)}")
        cfg.update(overrides)
    return cfg


@functools.lru_cache(maxsize=None)
def _default_config(K, V, big):
    """Cached: computing it costs ~0.1 ms of host time per call (triton.next_power_of_2 is a jit-wrapped function).

    BT = 64 rows per chunk, BC = 16 rows per sub-chunk (vector gate). Tiles of 64 along K/V keep a kernel's
    operands (a few [64, 64] tiles, double-buffered) well inside 100 KB of shared memory; devices with more
    (`big`, Hopper: 227 KB) take 128-wide K tiles in the output kernel, which then reads q once per V block.
    BK_A = 32: the vector gate's A kernel holds a [BC, BC, BK_A] product in registers; on an H100 (B=4, H=16,
    T=4K, K=128, bf16) it took 0.80 ms per fwd+bwd at 32, 1.21 at 64, 0.89 at 16.
    onepass_*: the one-pass forward (chunk_fwd.chunk_onepass_kernel, gate kinds none/head/scalar) runs when it
    has at least onepass_min_programs programs (N·H·V/BV_onepass; the scalar gate: onepass_min_programs_scalar)
    and K ≤ onepass_max_K (the state [K, BV] lives in registers); else the states pass + output kernel. 0 forces
    it on, a huge value off (tests do both). Measured on an H100 (132 SMs, bf16), one-pass / two-kernel forward
    time: 128 programs (B=4, H=16, V=128, T=2K..16K) 0.57-0.75x without a gate or with the head gate, 0.60-0.90x
    with the scalar gate; 64 programs 0.5-0.9x (none/head) but 1.2-1.4x (scalar, B=2); 16-32 programs 1.2-2.4x.
    BV 32 or 8 warps helped in a few cases only (4 warps: the state [128, 64] fp32 is 64 registers a thread).
    diag_limit = 30: a vector-gate sub-chunk (16 rows) whose log decay is at most 30 takes the matmul path
    (chunk_fwd.py, chunk_bwd.py): bf16/fp32 operands hold the e^30-scaled values with room to spare (fp16: see
    Call.diag_limit_A); stronger decays take the elementwise path.
    """
    return dict(BT=64, BC=16,
                BK_state=min(64, np2(K)), BV_state=min(64, np2(V)),
                BK_out=min(128 if big else 64, np2(K)), BV_out=min(64, np2(V)),
                BK_dv=min(64, np2(K)), BV_dv=min(64, np2(V)),
                BK_dqk=min(64, np2(K)), BV_dqk=min(64, np2(V)),
                BK_A=min(32, np2(K)), BV_dA=min(64, np2(V)), BK_intra=min(64, np2(K)),
                BK_rec=np2(K), BV_rec=min(np2(V), max(16, 8192 // np2(K))),
                diag_limit=30.0, num_warps=4, num_stages=2 if big else 1,
                BV_onepass=min(64, np2(V)), warps_onepass=4 if np2(K) <= 128 else 8,
                onepass_min_programs=64, onepass_min_programs_scalar=128, onepass_max_K=256)
