"""Feature maps φ for linear attention, applied per head to q and k: [..., H, K] -> [..., H, K'].

    elu       φ(x) = elu(x) + 1                       (Katharopoulos et al. 2020), K' = K, positive
    relu      φ(x) = relu(x)                          K' = K, non-negative
    identity  φ(x) = x                                K' = K (use without the normaliser)
    hedgehog  φ(x) = softmax([x W_h + b_h, -(x W_h + b_h)])   learnable per head (Zhang et al. 2024),
              K' = 2K, positive; W_h starts as the identity, so φ starts as a softmax of ±x.
    elementwise_product
              φ(x) = (x A_h + a_h) ⊙ (x B_h + b_h)   learnable per head, A_h, B_h: K x K (fla's default map),
              K' = K, sign-indefinite (use without the normaliser, with the output norm, as fla does);
              starts as φ(x) = x (A = I, a = 0, B = 0, b = 1).

The learnable maps are per head (fla shares one map across heads: its weights convert by repeating them).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


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


class LearnableFeatureMap(FeatureMap):
    """A per-head affine map y = x W_h + b_h, weight [H, K, N], bias [H, N], starting at `initial_parameters`.

    The start values live in one place, used by reset_parameters and by the models' _init_weights (which must
    write them through transformers' guarded init so that loaded weights are not overwritten)."""

    def __init__(self, num_heads: int, head_dim: int, width: int):
        super().__init__(num_heads, head_dim)
        self.weight = nn.Parameter(torch.empty(num_heads, head_dim, width))
        self.bias = nn.Parameter(torch.empty(num_heads, width))
        self.reset_parameters()

    def initial_parameters(self) -> dict:
        raise NotImplementedError

    def reset_parameters(self):
        with torch.no_grad():
            for name, value in self.initial_parameters().items():
                getattr(self, name).copy_(value)

    def affine(self, x):
        return torch.einsum("...hk,hkd->...hd", x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)


class HedgehogFeatureMap(LearnableFeatureMap):
    """A learnable per-head linear map followed by a softmax over [y, -y]."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__(num_heads, head_dim, head_dim)

    def initial_parameters(self):
        K = self.head_dim
        return {"weight": torch.eye(K).expand(self.num_heads, K, K), "bias": torch.zeros(self.num_heads, K)}

    @property
    def out_dim(self) -> int:
        return 2 * self.head_dim

    def forward(self, x):
        y = self.affine(x)
        return torch.softmax(torch.cat([y, -y], dim=-1).float(), dim=-1).to(x.dtype)


class ElementwiseProductFeatureMap(LearnableFeatureMap):
    """Two learnable per-head affine maps multiplied elementwise. Both are held in one [H, K, 2K] weight (one
    einsum): columns :K are A_h, K: are B_h; the bias likewise [a_h, b_h]."""

    positive = False

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__(num_heads, head_dim, 2 * head_dim)

    def initial_parameters(self):
        # φ starts as the identity map: A = I, a = 0 and B = 0, b = 1. Not A = B (φ = x²): with equal factors the
        # two get equal gradients and would stay equal, so φ could never become more than a square.
        H, K = self.num_heads, self.head_dim
        weight = torch.cat([torch.eye(K), torch.zeros(K, K)], dim=1).expand(H, K, 2 * K)
        bias = torch.cat([torch.zeros(K), torch.ones(K)]).expand(H, 2 * K)
        return {"weight": weight, "bias": bias}

    def forward(self, x):
        y1, y2 = self.affine(x).chunk(2, dim=-1)
        return y1 * y2


# the one registry: config value -> class (its keys are the allowed values of `feature_map`)
FEATURE_MAP_CLASSES = {"elu": EluFeatureMap, "relu": ReluFeatureMap, "identity": IdentityFeatureMap,
                       "hedgehog": HedgehogFeatureMap, "elementwise_product": ElementwiseProductFeatureMap}
FEATURE_MAPS = tuple(FEATURE_MAP_CLASSES)


def get_feature_map(name: str, num_heads: int, head_dim: int) -> FeatureMap:
    cls = FEATURE_MAP_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {name!r}")
    return cls(num_heads, head_dim)
