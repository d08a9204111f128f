"""Feature maps φ for linear attention, applied per head to q and k: [..., H, K] -> [..., H, K'].

    elu       φ(x) = elu(x) + 1                       (Katharopoulos et al. 2020), K' = K, positive
    relu      φ(x) = relu(x)                          K' = K, non-negative
    identity  φ(x) = x                                K' = K (use without the normaliser)
    hedgehog  φ(x) = softmax([x W_h + b_h, -(x W_h + b_h)])   learnable per head (Zhang et al. 2024),
              K' = 2K, positive; W_h starts as the identity, so φ starts as a softmax of ±x.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_MAPS = ("elu", "relu", "identity", "hedgehog")


class FeatureMap(nn.Module):
    positive = True

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim

    @property
    def out_dim(self) -> int:
        return self.head_dim


class EluFeatureMap(FeatureMap):
    def forward(self, x):
        return F.elu(x) + 1.0


class ReluFeatureMap(FeatureMap):
    positive = False

    def forward(self, x):
        return F.relu(x)


class IdentityFeatureMap(FeatureMap):
    positive = False

    def forward(self, x):
        return x


class HedgehogFeatureMap(FeatureMap):
    """A learnable per-head linear map followed by a softmax over [y, -y]."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__(num_heads, head_dim)
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, head_dim))
        self.bias = nn.Parameter(torch.empty(num_heads, head_dim))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.copy_(torch.eye(self.head_dim).expand_as(self.weight))
            self.bias.zero_()

    @property
    def out_dim(self) -> int:
        return 2 * self.head_dim

    def forward(self, x):
        y = torch.einsum("...hk,hkd->...hd", x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)
        return torch.softmax(torch.cat([y, -y], dim=-1).float(), dim=-1).to(x.dtype)


def get_feature_map(name: str, num_heads: int, head_dim: int) -> FeatureMap:
    cls = {"elu": EluFeatureMap, "relu": ReluFeatureMap, "identity": IdentityFeatureMap,
           "hedgehog": HedgehogFeatureMap}.get(name)
    if cls is None:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {name!r}")
    return cls(num_heads, head_dim)
