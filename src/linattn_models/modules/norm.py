"""RMSNorm and its gated variant (norm(x) * swish(gate)), computed in float32 (float64 for float64) and cast back."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.reference import compute_dtype


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last dimension (float32 inside, float64 for float64)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None

    def _norm(self, x):
        xf = x.to(compute_dtype(x))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(xf.dtype)
        return y

    def forward(self, x):
        if self.weight is not None and self.weight.dtype == x.dtype:
            # torch's fused kernel (float32 accumulation, one rounding at the end: the same math as _norm) runs
            # as one kernel instead of ~7 (cast, pow, mean, rsqrt, two products, cast back): it matters in the
            # decode step, a chain of small kernels. It needs input and weight of one dtype.
            return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
        return self._norm(x).to(x.dtype)

    def extra_repr(self):
        return f"{self.hidden_size}, eps={self.eps}"


class GatedRMSNorm(RMSNorm):
    """y = RMSNorm(x) * swish(gate): the output gate of RetNet and GLA, normalising each head separately when
    x is [..., H, D] and hidden_size == D."""

    def forward(self, x, gate):
        return (self._norm(x) * F.silu(gate.to(compute_dtype(x)))).to(x.dtype)
