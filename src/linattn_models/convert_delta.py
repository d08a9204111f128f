"""fla 0.6.0's `delta_net` and `gated_deltanet` model types for linattn_models.convert: their config fields and
defaults (configuration_delta_net.py, configuration_gated_deltanet.py) and how each maps onto our DeltaNetConfig /
GatedDeltaNetConfig, or why it cannot.

What fla's layers compute (layers/delta_net.py, layers/gated_deltanet.py), and ours the same:
    q, k, v = SiLU(conv(W_q x)), SiLU(conv(W_k x)), SiLU(conv(W_v x)); q, k L2-normalised (eps 1e-6); scale K^-0.5
    β = sigmoid(W_b x) (· 2 with allow_neg_eigval); Gated DeltaNet: g = −exp(A_log) · softplus(W_a x + dt_bias)
    o = W_o [RMSNorm_head(o) · swish(W_g x)] with use_gate, else W_o RMSNorm_head(o); both norms are fla's `o_norm`.
Refused, because ours computes something else: DeltaNet use_short_conv=False (fla then applies SiLU to q, k, v
without a conv, ours no activation), qk_activation other than silu, qk_norm other than l2, use_beta=False;
Gated DeltaNet num_v_heads != num_heads (grouped value heads), output_gate_activation sigmoid (with use_gate).
Ignored: DeltaNet use_output_norm (fla 0.6.0's DeltaNet layer takes it in **kwargs and always builds o_norm).
"""
import math

# fields every fla 0.6.0 config of these two types has (no num_kv_heads, no elementwise_affine: fla's norms here
# always carry a weight)
_COMMON = dict(attn_mode="chunk", hidden_size=2048, use_short_conv=True, allow_neg_eigval=False, conv_size=4,
               max_position_embeddings=2048, hidden_ratio=4, intermediate_size=None, hidden_act="swish",
               norm_eps=1e-6, attn=None, use_cache=True, pad_token_id=None, bos_token_id=1, eos_token_id=2,
               tie_word_embeddings=False, initializer_range=0.02, fuse_norm=True, fuse_swiglu=True,
               fuse_cross_entropy=True, fuse_linear_cross_entropy=False, use_l2warp=False, vocab_size=32000,
               attnres_block_size=None)
DELTA_DEFAULTS = {
    "delta_net": dict(_COMMON, expand_k=1.0, expand_v=1.0, use_gate=False, use_beta=True, use_output_norm=True,
                      num_heads=16, qk_norm="l2", qk_activation="silu", num_hidden_layers=24),
    "gated_deltanet": dict(_COMMON, expand_v=2.0, use_gate=True, head_dim=256, num_heads=6, num_v_heads=None,
                           num_hidden_layers=21, output_gate_activation="swish"),
}
# our mixer parameter (inside model.layers.N.attn.) -> the fla names it may come from; the rest keep their names
ATTN_SOURCES = {"g_norm.weight": ("o_norm.weight",), "o_norm.weight": ("o_norm.weight",)}


def delta_mixer_kwargs(c, require):
    """Our config's mixer fields for the fla delta_net / gated_deltanet config dict `c`. require(c, field, allowed,
    why) raises the ValueError naming a field whose value ours does not compute identically."""
    D, H = c["hidden_size"], c["num_heads"]
    if not isinstance(H, int) or H <= 0:
        raise ValueError(f"fla config: num_heads must be a positive integer, got {H!r}")
    require(c, "use_short_conv", (True,), "without short convs fla's layer applies SiLU to q, k and v, ours no "
                                          "activation (ours sits in the convs)")
    if c["model_type"] == "delta_net":
        require(c, "qk_activation", ("silu",), "our DeltaNet applies SiLU to q and k (in the short convs)")
        require(c, "qk_norm", ("l2",), "our DeltaNet L2-normalises q and k")
        require(c, "use_beta", (True,), "our DeltaNet always has β = sigmoid(b_proj(x))")
        key_dim, value_dim = _dim(c, "expand_k"), _dim(c, "expand_v")
        head_k, head_v = key_dim // H, value_dim // H
    else:
        require(c, "num_v_heads", (None, H), "our Gated DeltaNet has one value head per query/key head")
        if c["use_gate"]:
            require(c, "output_gate_activation", ("swish", "silu"), "our output gate is swish")
        head_k = c["head_dim"]
        if not isinstance(head_k, int) or head_k <= 0:
            raise ValueError(f"fla config: head_dim must be a positive integer, got {head_k!r}")
        head_v = head_k * c["expand_v"]
        if not math.isclose(head_v, round(head_v), rel_tol=1e-5) or round(head_v) <= 0:
            raise ValueError(f"fla config: head_dim * expand_v = {head_v} must be a positive integer")
        head_v = round(head_v)
    return dict(num_heads=H, head_k_dim=head_k, head_v_dim=head_v, expand_k=H * head_k / D, expand_v=H * head_v / D,
                use_short_conv=True, conv_size=c["conv_size"], use_output_gate=bool(c["use_gate"]),
                allow_neg_eigval=bool(c["allow_neg_eigval"]))


def _dim(c, field):
    """round(hidden_size * expand_k / expand_v), as fla's DeltaNet; must split evenly over the heads."""
    width = c["hidden_size"] * c[field]
    if not math.isclose(width, round(width)) or round(width) <= 0 or round(width) % c["num_heads"]:
        raise ValueError(f"fla config: hidden_size * {field} = {width} must be a positive integer divisible by "
                         f"num_heads = {c['num_heads']}")
    return round(width)
