"""`python -m linattn_models.check`: passes on correct ops, and catches a wrong one."""
import torch

from linattn_models import check, ops
from linattn_models.ops import reference


def test_selfcheck_passes_small():
    results = check.check("cpu", "torch", T=40, H=2, K=16, V=8, verbose=False)
    assert len(results) == len(check.FAMILIES) * 2 * 2 * 2 and all(ok for _, _, ok in results)


def test_selfcheck_catches_a_broken_kernel(monkeypatch):
    real = reference.run_torch

    def broken(q, k, v, g, scale, h0, out_state, cu, mode, chunk_size=None):
        o, s = real(q, k, v, g, scale, h0, out_state, cu, mode, chunk_size)
        if q.dtype != torch.float64:  # leave the float64 reference intact, break the checked path
            o = o * 1.01
        return o, s

    real_delta = ops.delta.run_delta_torch

    def broken_delta(q, k, v, beta, g, scale, h0, out_state, cu, mode, chunk_size=None):
        o, s = real_delta(q, k, v, beta, g, scale, h0, out_state, cu, mode, chunk_size)
        return (o * 1.01 if q.dtype != torch.float64 else o), s

    monkeypatch.setattr(ops.library, "run_torch", broken)  # the torch backend of every non-delta op (torch_gla)
    monkeypatch.setattr(ops.delta, "run_delta_torch", broken_delta)
    results = check.check("cpu", "torch", T=20, H=1, K=8, V=8, dtypes=[torch.float32], verbose=False)
    assert results and not any(ok for _, _, ok in results)


def test_selfcheck_cli_exit_code():
    assert check.main(["--device", "cpu", "--backend", "torch", "--seq-len", "24", "--head-dim", "8"]) == 0
