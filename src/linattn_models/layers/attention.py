"""SoftmaxAttention: causal softmax attention with rotary positions, grouped-query heads and an optional sliding
window, the token mixer of a hybrid stack's attention layers (config field `attn_layers`).

    q_t = RoPE(W_q x_t, p_t),  k_t = RoPE(W_k x_t, p_t),  v_t = W_v x_t      H query heads, H_kv key/value heads
    o_t = W_o [ softmax_s( q_t · k_s / sqrt(D) ) v_s ]   over the real tokens s <= t   (each query head h reads
                                                         key/value head h // (H / H_kv))
    with a window W: only s among t and the W - 1 real tokens before it.

Parameter names are fla's `attn` layer's (q_proj, k_proj, v_proj, o_proj), so converting fla's attention layers
is a rename. Padding (layers.Padding) is handled the way the linear mixers handle it: pad keys are masked out,
pads get zero output, and rotary positions count real tokens only, so a padded row (left or right padding) gives
what the row alone gives. The cache (duck-typed: get_state / set_state) holds growing "key" / "value" tensors
[B, H_kv, S, D] (rotary already applied) and, once a padded call has been cached, "kv_mask" [B, S] (True = real
token); the window limits what is attended, not what is kept.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import RotaryEmbedding
from ..ops.context_parallel import active_group, gather_sequence, piece_sizes
from .common import TokenMixer


def _positive_int(x):
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


class SoftmaxAttention(TokenMixer):
    """Causal softmax attention (module docstring: the math), usable on its own in any PyTorch model.

    Args:
        hidden_size: width of x [B, T, hidden_size].
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention; None: num_heads); must divide num_heads.
        head_dim: per-head width (None: hidden_size / num_heads, which must then divide); even (rotary).
        window_size: sliding window in tokens (a token attends to itself and the window_size - 1 real tokens
            before it), None for full causal attention.
        rope_theta: the rotary embedding's base.
        layer_idx: this layer's slot in the cache. mode: accepted for the TokenMixer interface (no effect).

    forward(x, cache=None, padding=None, positions=None) -> [B, T, hidden_size]. positions: [B, T] rotary
    positions; None counts real tokens (per `padding`), continuing after the ones already in the cache.

    Example:
        >>> from linattn_models.layers import Padding, SoftmaxAttention
        >>> attn = SoftmaxAttention(hidden_size=256, num_heads=8, num_kv_heads=2, window_size=128)
        >>> y = attn(torch.randn(2, 100, 256))                   # [2, 100, 256]
        >>> mask = torch.ones(2, 100, dtype=torch.bool); mask[0, :30] = False      # row 0 left-padded
        >>> y = attn(torch.randn(2, 100, 256), padding=Padding.from_mask(mask, 100))  # pads give zeros
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None, head_dim: int | None = None,
                 window_size: int | None = None, rope_theta: float = 10000.0, layer_idx: int = 0,
                 mode: str = "auto"):
        super().__init__(layer_idx, mode)
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads)):
            if not _positive_int(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if not _positive_int(num_kv_heads) or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads = {num_kv_heads!r} must be a positive integer dividing num_heads = "
                             f"{num_heads}")
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"num_heads = {num_heads} must divide hidden_size = {hidden_size} (or pass head_dim)")
            head_dim = hidden_size // num_heads
        if not _positive_int(head_dim) or head_dim % 2:
            raise ValueError(f"head_dim must be an even positive integer (rotary), got {head_dim!r}")
        if window_size is not None and not _positive_int(window_size):
            raise ValueError(f"window_size must be None (full attention) or a positive integer, got {window_size!r}")
        if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or not rope_theta > 0:
            raise ValueError(f"rope_theta must be a number > 0, got {rope_theta!r}")
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim, self.window_size = head_dim, window_size
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.rotary = RotaryEmbedding(head_dim, base=rope_theta)

    def extra_repr(self):
        return (f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"window_size={self.window_size}")

    def _rotate(self, q, k, positions):
        """RoPE of q [B, T, H, D] and k [B, T, H_kv, D] (the rotary op takes two tensors of one shape; the rotation
        is per head, so with H_kv < H the heads of both are split into two equal halves)."""
        if q.shape == k.shape:
            return self.rotary(q, k, positions)
        H, Hk = q.shape[2], k.shape[2]
        x = torch.cat([q, k], 2)
        if x.shape[2] % 2:
            x = F.pad(x, (0, 0, 0, 1))
        a, b = (y.contiguous() for y in x.chunk(2, dim=2))
        x = torch.cat(self.rotary(a, b, positions), 2)
        return x[:, :, :H], x[:, :, H:H + Hk]

    def forward(self, x, cache=None, padding=None, positions=None):
        B, T, _ = x.shape
        H, Hk, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, Hk, D)
        v = self.v_proj(x).view(B, T, Hk, D)
        split, group = active_group()
        if split and cache is None:
            return self._forward_split(q, k, v, padding, positions, group)
        past_k, past_v, past_mask = (self.get_state(cache, n) for n in ("key", "value", "kv_mask"))
        new_mask = None if padding is None else padding.mask.to(x.device)
        if positions is None:
            positions = self._positions(B, T, x.device, past_k, past_mask, new_mask)
        q, k = self._rotate(q, k, positions)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, D]
        P = 0 if past_k is None else past_k.shape[2]
        if past_k is not None:
            k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
        kv_mask = None
        if past_mask is not None or new_mask is not None:
            ones = torch.ones(B, P + T, dtype=torch.bool, device=x.device)
            kv_mask = torch.cat([ones[:, :P] if past_mask is None else past_mask.to(x.device),
                                 ones[:, P:] if new_mask is None else new_mask], 1)
        if cache is not None:
            self.set_state(cache, "key", k)
            self.set_state(cache, "value", v)
            self.set_state(cache, "kv_mask", kv_mask)
        o = self._attend(q, k, v, kv_mask, new_mask, P)  # [B, H, T, D]
        if new_mask is not None:
            o = o * new_mask[:, None, :, None].to(o.dtype)  # pads: zero output
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * D))

    def _forward_split(self, q, k, v, padding, positions, group):
        """This rank's piece of a sequence split over `group` (ops.split_sequence): its queries attend to the keys
        of every earlier piece and its own, gathered from the ranks (with their gradient)."""
        if padding is not None:
            raise ValueError("context parallel (split_sequence): padded batches are not supported")
        B, T, H, D = q.shape
        sizes = piece_sizes(T, q.device, group)  # one exchange: this piece's offset and the gathers' lengths
        offset = sum(sizes[:torch.distributed.get_rank(group)])
        if positions is None:
            positions = (torch.arange(T, device=q.device) + offset).expand(B, T)
        q, k = self._rotate(q, k, positions)
        k, v = gather_sequence(k, sizes, group), gather_sequence(v, sizes, group)  # [B, S, H_kv, D], all pieces
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        rows = offset + torch.arange(T, device=q.device)[:, None]
        cols = torch.arange(k.shape[2], device=q.device)[None, :]
        allowed = cols <= rows
        if self.window_size is not None:
            allowed = allowed & (rows - cols < self.window_size)
        gqa = dict(enable_gqa=True) if self.num_kv_heads != self.num_heads else {}
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, **gqa)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * D))

    @staticmethod
    def _positions(B, T, device, past_k, past_mask, new_mask):
        """Real tokens counted per row, after those already cached (what the models pass as positions)."""
        if past_k is None:
            offset = torch.zeros(B, dtype=torch.long, device=device)
        elif past_mask is None:
            offset = torch.full((B,), past_k.shape[2], dtype=torch.long, device=device)
        else:
            offset = past_mask.sum(1).to(device)
        if new_mask is None:
            pos = torch.arange(T, device=device).expand(B, T)
        else:
            pos = (new_mask.long().cumsum(1) - 1).clamp(min=0)
        return pos + offset[:, None]

    def _attend(self, q, k, v, kv_mask, new_mask, P):
        """SDPA over the cached and new keys: q [B, H, T, D], k, v [B, H_kv, P + T, D]; kv_mask [B, P + T] or
        None (all real); new_mask [B, T] (the new tokens' part of it) or None; P: cached columns."""
        T, S = q.shape[2], k.shape[2]
        gqa = dict(enable_gqa=True) if self.num_kv_heads != self.num_heads else {}
        W = self.window_size
        if kv_mask is None and W is None and (P == 0 or T == 1):
            # no explicit mask: plain causal attention (flash / efficient kernels), or one new token sees all
            return F.scaled_dot_product_attention(q, k, v, is_causal=P == 0 and T > 1, **gqa)
        cols = torch.arange(S, device=q.device)
        allowed = cols[None, :] <= (P + torch.arange(T, device=q.device))[:, None]  # [T, S] causal by column
        allowed = allowed[None]  # [1 or B, T, S]
        if kv_mask is not None:
            allowed = allowed & kv_mask[:, None, :]
        if W is not None:
            real = kv_mask.long() if kv_mask is not None else torch.ones(1, S, dtype=torch.long, device=q.device)
            count = real.cumsum(1)  # real tokens up to and including each column
            # key s is in query t's window when t and the real tokens in (s, t] number fewer than W
            allowed = allowed & ((count[:, P:, None] - count[:, None, :]) < W)
        if new_mask is not None:
            allowed = allowed | ~new_mask[:, :, None]  # pad queries attend anywhere (no empty row); zeroed later
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], **gqa)
