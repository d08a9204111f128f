"""RMSNorm and its gated variant (norm(x) * swish(gate)), computed in float32 (float64 for float64) and cast
back; fused Triton kernels on GPUs (ops.fused.rms_norm)."""
import torch
import torch.nn as nn

from ..ops.fused import rms_norm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last dimension (float32 inside, float64 for float64).

    Under autocast a float32 input (the residual stream) comes out in the autocast dtype: every consumer is a
    linear layer that would cast it anyway, and casting once here means one low-precision copy is kept for the
    backward instead of one per consuming layer (4 in a RetNet mixer)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None

    def forward(self, x):
        out_dtype = x.dtype
        if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        return rms_norm(x, self.weight, self.eps, out_dtype=out_dtype)

    def extra_repr(self):
        return f"{self.hidden_size}, eps={self.eps}"


class GatedRMSNorm(RMSNorm):
    """y = RMSNorm(x) * swish(gate): the output gate of RetNet and GLA, normalising each head separately when
    x is [..., H, D] and hidden_size == D. Output in x's dtype."""

    def forward(self, x, gate):
        return rms_norm(x, self.weight, self.eps, gate=gate)
