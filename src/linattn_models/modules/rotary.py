"""Rotary position embedding (RoPE, rotate-half convention) for q, k in the [B, T, H, D] layout.

    x_rot = x * cos(p θ) + rotate_half(x) * sin(p θ),   θ_i = base^(-2i/D)

q_i · k_j then depends on positions only through i - j. `inv_freq` is a non-persistent buffer: after
meta-device construction (from_pretrained) the model's _init_weights refills it from `compute_inv_freq()`.
"""
import torch
import torch.nn as nn

from ..ops.fused import rotary


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim must be even, got {dim}")
        self.dim, self.base = dim, base
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device=None):
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))

    def forward(self, q, k, positions):
        """q, k: [B, T, H, D]; positions: [B, T] (int). Returns the rotated (q, k) in their dtypes."""
        inv_freq = self.inv_freq
        if inv_freq.dtype not in (torch.float32, torch.float64):  # model.to(bf16) cast the buffer: recompute
            inv_freq = self.compute_inv_freq(q.device)
        # inv_freq is derived from (base, dim) alone (non-persistent, recomputed above when cast): that pair
        # stands for its values, so layers of one model share their cos/sin tables within a forward pass
        return rotary(q, k, positions, inv_freq, share_key=(self.base, self.dim))

    def extra_repr(self):
        return f"dim={self.dim}, base={self.base}"
