"""Gated MLP (SwiGLU): down(silu(gate(x)) * up(x))."""
import torch.nn as nn
import torch.nn.functional as F

from ..ops.fused import swiglu
from .recompute import linear_recomputing_input


class GatedMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu"):
        super().__init__()
        if hidden_act not in ("silu", "swish", "gelu"):
            raise ValueError(f"hidden_act must be 'silu' (swish) or 'gelu', got {hidden_act!r}")
        self.hidden_act = hidden_act
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        g, u = self.gate_proj(x), self.up_proj(x)
        if self.hidden_act == "gelu":
            return self.down_proj(F.gelu(g) * u)
        return linear_recomputing_input(self.down_proj, swiglu, g, u)
