"""Short causal depthwise convolution with a decoding state.

    y_t = act(bias + Σ_{j=0}^{W-1} w_j ⊙ x_{t-W+1+j})

over each sequence's own tokens only. The state is the last W-1 inputs, [B, D, W-1]; a missing state is
zeros (a fresh sequence). With a padding mask [B, T] (True = real token) pads never enter a window or the
state: each row's real tokens are moved to the end of the row (stable order), the state is written just in
front of them, the conv runs, and outputs go back to their positions (pads get zeros). For left padding the
move is the identity.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ShortConvolution(nn.Conv1d):
    def __init__(self, hidden_size: int, kernel_size: int = 4, bias: bool = False, activation: str | None = "silu"):
        if kernel_size < 2:
            raise ValueError(f"kernel_size must be >= 2, got {kernel_size}")
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=bias, padding=0)
        if activation not in (None, "silu", "swish"):
            raise ValueError(f"activation must be None or 'silu', got {activation!r}")
        self.activation = activation

    def forward(self, x, conv_state=None, mask=None, output_final_state=False):
        """x: [B, T, D]; conv_state: [B, D, W-1] or None; mask: [B, T] bool or None.
        Returns (y [B, T, D], new_state [B, D, W-1] or None)."""
        B, T, D = x.shape
        W = self.kernel_size[0]
        order = None
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
            order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices  # pads first, then real tokens
            x = x.gather(1, order[..., None].expand(B, T, D))
        xt = torch.cat([x.new_zeros(B, D, W - 1), x.transpose(1, 2)], dim=2)  # [B, D, W-1+T]
        if conv_state is not None:
            conv_state = conv_state.to(x.dtype)
            if mask is None:
                xt = torch.cat([conv_state, xt[..., W - 1:]], dim=2)
            else:
                # place the state right in front of each row's first real token
                n_pad = (~mask).sum(1)
                idx = (n_pad[:, None] + torch.arange(W - 1, device=x.device))[:, None, :].expand(B, D, W - 1)
                xt = xt.scatter(2, idx, conv_state)
        y = F.conv1d(xt, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype), groups=D)
        if self.activation is not None:
            y = F.silu(y)
        y = y.transpose(1, 2)  # [B, T, D]
        new_state = xt[..., -(W - 1):].clone() if output_final_state else None
        if order is not None:
            y = torch.zeros_like(y).scatter(1, order[..., None].expand(B, T, D), y)
            y = y * mask[..., None].to(y.dtype)
        return y, new_state

    def extra_repr(self):
        return super().extra_repr() + f", activation={self.activation}"
