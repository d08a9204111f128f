"""Modules and token mixers, in float64 against direct formulas and against token-by-token decoding."""

import pytest
import torch
import torch.nn.functional as F

from linattn_models.layers import (DeltaNet, GatedDeltaNet, GatedLinearAttention, LinearAttention, MultiScaleRetention,
                                   Padding, attend)
from linattn_models.models import LinearAttentionCache
from linattn_models.modules import (GatedMLP, GatedRMSNorm, RMSNorm, RotaryEmbedding, ShortConvolution,
                                    get_feature_map)
from linattn_models import ops

D, H = 32, 4


def make_mixer(kind, **kw):
    torch.manual_seed(0)
    if kind == "linear_attention":
        m = LinearAttention(D, H, 8, 8, **kw)
    elif kind == "retention":
        m = MultiScaleRetention(D, H, 8, 16, **kw)
    elif kind == "deltanet":
        m = DeltaNet(D, H, 8, 8, **kw)
    elif kind == "gated_deltanet":
        m = GatedDeltaNet(D, H, 8, 8, **kw)
    else:
        m = GatedLinearAttention(D, H, 4, 8, **kw)
    for p in m.parameters():  # well-scaled random weights (default inits are tiny)
        torch.nn.init.normal_(p, std=0.3)
    return m.double().eval()


MIXERS = [
    ("linear_attention", dict(feature_map="elu", normalize=True)),
    ("linear_attention", dict(feature_map="relu", normalize=False, output_norm=True)),
    ("linear_attention", dict(feature_map="identity", normalize=False)),
    ("linear_attention", dict(feature_map="hedgehog", normalize=True, use_short_conv=True)),
    ("linear_attention", dict(feature_map="elementwise_product", tie_feature_map_qk=False, normalize=False, output_norm=True)),
    ("retention", dict()),
    ("retention", dict(use_short_conv=True)),
    ("gla", dict()),
    ("gla", dict(use_short_conv=True)),
    ("deltanet", dict()),
    ("deltanet", dict(use_short_conv=False)),
    ("gated_deltanet", dict()),
    ("gated_deltanet", dict(use_short_conv=False)),
]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items())}" for k, kw in MIXERS]


def run(m, x, cache=None, padding=None, positions=None):
    B, T, _ = x.shape
    if positions is None:
        positions = torch.arange(T).expand(B, T) if padding is None else (padding.mask.long().cumsum(1) - 1).clamp(min=0)
    return m(x, cache=cache, padding=padding, positions=positions)


@pytest.mark.parametrize("kind,kw", MIXERS, ids=IDS)
def test_decoding_equals_parallel(kind, kw):
    """Prefill a prefix, then decode token by token from the cache: equals one parallel (chunk) forward."""
    m = make_mixer(kind, **kw)
    x = torch.randn(2, 45, D, dtype=torch.float64)
    m.mode = "chunk"
    full = run(m, x)
    cache = LinearAttentionCache(num_layers=1)
    outs = [run(m, x[:, :37], cache)]
    m.mode = "recurrent"
    for t in range(37, 45):
        pos = torch.full((2, 1), t)
        outs.append(run(m, x[:, t:t + 1], cache, positions=pos))
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind,kw", MIXERS, ids=IDS)
def test_padding_equals_rows_alone(kind, kw):
    """Left- and right-padded rows give the outputs (and states) of each sequence run alone; pads give 0."""
    m = make_mixer(kind, **kw)
    lens = [40, 27, 33]
    T = 40
    xs = [torch.randn(1, n, D, dtype=torch.float64) for n in lens]
    x = torch.zeros(3, T, D, dtype=torch.float64)
    mask = torch.zeros(3, T, dtype=torch.long)
    x[0], mask[0] = xs[0][0], 1
    x[1, T - 27:], mask[1, T - 27:] = xs[1][0], 1          # left padding
    x[2, :33], mask[2, :33] = xs[2][0], 1                  # right padding
    x = x + 5.0 * (mask == 0)[..., None]                    # garbage at pads must not matter
    cache = LinearAttentionCache(num_layers=1)
    pad = Padding.from_mask(mask, T)
    y = run(m, x, cache, pad)
    for i, (xi, n) in enumerate(zip(xs, lens)):
        c1 = LinearAttentionCache(num_layers=1)
        yi = run(m, xi, c1)
        torch.testing.assert_close(y[i][mask[i].bool()], yi[0], rtol=1e-10, atol=1e-10)
        assert y[i][~mask[i].bool()].abs().max() == 0 if n < T else True
        for name, s in c1.layers[0].states.items():
            if name.startswith("conv") and i == 2:
                continue  # right padding: the conv state is the last W-1 real inputs either way
            torch.testing.assert_close(cache.layers[0].states[name][i], s[0], rtol=1e-10, atol=1e-10)


def test_padding_rows_without_tokens_keep_state():
    m = make_mixer("gla", use_short_conv=True)
    cache = LinearAttentionCache(num_layers=1)
    x = torch.randn(2, 10, D, dtype=torch.float64)
    run(m, x, cache)
    before = {k: v.clone() for k, v in cache.layers[0].states.items()}
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    run(m, torch.randn(2, 3, D, dtype=torch.float64), cache, Padding.from_mask(mask, 3))
    for k, v in cache.layers[0].states.items():
        torch.testing.assert_close(v[1], before[k][1], rtol=0, atol=0)
        assert not torch.equal(v[0], before[k][0])


def test_linear_attention_matches_quadratic_formula():
    """o_t = Σ_s (φ(q_t)·φ(k_s)) v_s / Σ_s φ(q_t)·φ(k_s) (Katharopoulos et al.), float64."""
    m = make_mixer("linear_attention", feature_map="elu", normalize=True)
    x = torch.randn(2, 50, D, dtype=torch.float64)
    B, T, _ = x.shape
    q = F.elu(m.q_proj(x).view(B, T, H, 8)) + 1
    k = F.elu(m.k_proj(x).view(B, T, H, 8)) + 1
    v = m.v_proj(x).view(B, T, H, 8)
    A = torch.einsum("bihk,bjhk->bhij", q, k).tril()
    o = torch.einsum("bhij,bjhv->bihv", A, v) / (A.sum(-1).transpose(1, 2)[..., None] + 1e-6 * 8 ** 0.5)
    want = m.o_proj(o.reshape(B, T, -1))
    for mode in ("chunk", "recurrent"):
        m.mode = mode
        torch.testing.assert_close(run(m, x), want, rtol=1e-8, atol=1e-10)


def test_retention_matches_quadratic_formula():
    """o = GroupNorm((Q Kᵀ ⊙ D) V) ⊙ swish(W_g x) with D_ij = γ_h^(i-j) (Sun et al.), RoPE on q, k."""
    m = make_mixer("retention")
    x = torch.randn(2, 50, D, dtype=torch.float64)
    B, T, _ = x.shape
    pos = torch.arange(T).expand(B, T)
    q, k = m.rotary(m.q_proj(x).view(B, T, H, 8), m.k_proj(x).view(B, T, H, 8), pos)
    v = m.v_proj(x).view(B, T, H, 16)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float64))  # exact: fp64 inputs get fp64 decays
    i = torch.arange(T)
    Dm = (gamma[:, None, None] ** (i[:, None] - i[None, :]).clamp(min=0)) * (i[:, None] >= i[None, :])
    o = torch.einsum("bihk,bjhk,hij,bjhv->bihv", q, k, Dm, v) * 8 ** -0.5
    want = m.o_proj(m.g_norm(o, m.g_proj(x).view(B, T, H, 16)).reshape(B, T, -1))
    torch.testing.assert_close(run(m, x), want, rtol=1e-8, atol=1e-10)


def test_gla_matches_recurrence():
    """S_t = Diag(α_t) S_{t-1} + k_tᵀ v_t with α_t = sigmoid(W2 W1 x)^(1/16), o_t = q_t S_t / sqrt(K)."""
    m = make_mixer("gla")
    x = torch.randn(1, 40, D, dtype=torch.float64)
    B, T, _ = x.shape
    q, k, v = m.q_proj(x).view(B, T, H, 4), m.k_proj(x).view(B, T, H, 4), m.v_proj(x).view(B, T, H, 8)
    alpha = torch.sigmoid(m.gk_proj(x)).pow(1 / 16).view(B, T, H, 4)
    S = torch.zeros(B, H, 4, 8, dtype=torch.float64)
    outs = []
    for t in range(T):
        S = alpha[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) * 0.5)
    o = torch.stack(outs, 1)
    want = m.o_proj(m.g_norm(o, m.g_proj(x).view(B, T, H, 8)).reshape(B, T, -1))
    torch.testing.assert_close(run(m, x), want, rtol=1e-8, atol=1e-10)


def delta_recurrence(m, x):
    """The mixer by its definition, token by token in float64: SiLU(conv) q, k, v (when on), L2-normalised q, k
    (x / sqrt(|x|² + 1e-6)), β = sigmoid(W_b x), g = −exp(A_log) softplus(W_a x + dt_bias) (gated),
    S_t = e^{g_t} (I − β k kᵀ) S_{t−1} + β k vᵀ, o_t = S_tᵀ q_t / sqrt(K), then W_o (RMSNorm(o) ⊙ swish(W_g x))."""
    B, T, _ = x.shape
    K, V = m.head_k_dim, m.head_v_dim
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    if m.use_short_conv:
        def conv(c, y):
            W = c.kernel_size[0]
            yp = F.pad(y, (0, 0, W - 1, 0))
            return F.silu(sum(c.weight[:, 0, j] * yp[:, j:j + T] for j in range(W)))
        q, k, v = conv(m.q_conv1d, q), conv(m.k_conv1d, k), conv(m.v_conv1d, v)
    q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)  # the ops' L2 norm: eps 1e-6 inside the root
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    beta = torch.sigmoid(m.b_proj(x))
    g = -m.A_log.exp() * F.softplus(m.a_proj(x) + m.dt_bias) if m.gated else torch.zeros_like(beta)
    S = torch.zeros(B, H, K, V, dtype=x.dtype)
    outs = []
    for t in range(T):
        kt, vt, bt = k[:, t], v[:, t], beta[:, t, :, None, None]
        S = g[:, t].exp()[..., None, None] * (S - bt * kt[..., :, None] * torch.einsum("bhk,bhkv->bhv", kt, S)[..., None, :])
        S = S + bt * kt[..., :, None] * vt[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) * K ** -0.5)
    o = torch.stack(outs, 1)
    return m.o_proj(m.g_norm(o, m.g_proj(x).view(B, T, H, V)).reshape(B, T, -1))


@pytest.mark.parametrize("kind,kw", [k for k in MIXERS if "deltanet" in k[0]],
                         ids=[i for i in IDS if "deltanet" in i])
def test_deltanet_matches_recurrence(kind, kw):
    """DeltaNet / Gated DeltaNet (chunk and recurrent modes) against the delta rule written out token by token."""
    m = make_mixer(kind, **kw)
    x = torch.randn(2, 40, D, dtype=torch.float64)
    want = delta_recurrence(m, x)
    for mode in ("chunk", "recurrent"):
        m.mode = mode
        torch.testing.assert_close(run(m, x), want, rtol=1e-8, atol=1e-10)


def test_deltanet_parameters_and_decay_init():
    """fla's parameter names (g_norm where fla has o_norm); A ~ U(0, 16), dt = softplus(dt_bias) in [1e-3, 1e-1]."""
    torch.manual_seed(0)
    m = GatedDeltaNet(D, H, 8, 8)
    names = {n for n, _ in m.named_parameters()}
    assert names == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "q_conv1d.weight", "k_conv1d.weight",
                     "v_conv1d.weight", "b_proj.weight", "a_proj.weight", "A_log", "dt_bias", "g_proj.weight",
                     "g_norm.weight", "o_proj.weight"}
    assert {n for n, _ in DeltaNet(D, H, 8, 8).named_parameters()} == names - {"a_proj.weight", "A_log", "dt_bias"}
    assert m.A_log.shape == m.dt_bias.shape == m.b_proj.weight.shape[:1] == (H,)
    A = m.A_log.exp()
    assert ((A > 0) & (A < 16)).all()
    dt = F.softplus(m.dt_bias)
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all()
    assert m.A_log._no_weight_decay and m.dt_bias._no_weight_decay


@pytest.mark.parametrize("kind,kw", MIXERS[::2], ids=IDS[::2])
def test_fp32_close_to_fp64(kind, kw):
    m = make_mixer(kind, **kw)
    x = torch.randn(2, 70, D, dtype=torch.float64)
    want = run(m, x)
    got = run(m.float(), x.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_short_conv_matches_definition_and_state():
    torch.manual_seed(0)
    conv = ShortConvolution(6, 4, bias=True).double()
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    y, s = conv(x, output_final_state=True)
    xp = F.pad(x, (0, 0, 3, 0))
    want = F.silu(sum(conv.weight[:, 0, j] * xp[:, j:j + 9] for j in range(4)) + conv.bias)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(s, x[:, -3:].transpose(1, 2))
    # continuing from the state equals the one long run
    y1, s1 = conv(x[:, :5], output_final_state=True)
    y2, _ = conv(x[:, 5:], conv_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    # a left-padded continuation chunk: the state sits right before the first real token
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]).bool()
    xc = torch.zeros(2, 4, 6, dtype=torch.float64)
    xc[0, 2:], xc[1] = x[0, 5:7], x[1, 5:9]
    yc, sc = conv(xc, conv_state=s1, mask=mask, output_final_state=True)
    torch.testing.assert_close(yc[0, 2:], y[0, 5:7])
    torch.testing.assert_close(yc[1], y[1, 5:9])
    assert yc[0, :2].abs().max() == 0
    torch.testing.assert_close(sc[0], x[0, 4:7].T)


def test_padding_from_mask():
    assert Padding.from_mask(None, 3) is None
    assert Padding.from_mask(torch.ones(2, 5), 3) is None
    p = Padding.from_mask(torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]), 3)
    assert p.mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert p.rows.tolist() == [0, 1] and p.cu_seqlens.tolist() == [0, 3, 4] and p.indices.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="2-D"):
        Padding.from_mask(torch.ones(1, 1, 3, 3), 3)


def test_attend_packed_equals_rows():
    torch.manual_seed(0)
    q, k = torch.randn(2, 6, 2, 4, dtype=torch.float64), torch.randn(2, 6, 2, 4, dtype=torch.float64)
    v = torch.randn(2, 6, 2, 3, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(2, 6, 2, 4, dtype=torch.float64))
    h0 = torch.randn(2, 2, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    o, s = attend(ops.gated_linear_attention, q, k, v, g, initial_state=h0, output_final_state=True,
                  padding=Padding.from_mask(mask, 6))
    o0, s0 = ops.gated_linear_attention(q[:1, 2:], k[:1, 2:], v[:1, 2:], g[:1, 2:], initial_state=h0[:1],
                                        output_final_state=True)
    torch.testing.assert_close(o[0, 2:], o0[0])
    torch.testing.assert_close(s[0], s0[0])
    assert o[0, :2].abs().max() == 0


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                (torch.float16, torch.float16), (torch.bfloat16, torch.float32)])
def test_rmsnorm_dtypes_against_float64(dtype, weight_dtype):
    """Matching dtypes take torch's fused rms_norm, mixed ones the float32 path: both the float64 formula, rounded
    once (relative error within a few units of the output dtype's last place)."""
    x = torch.randn(4, 7, 64, dtype=torch.float64) * 3
    n = RMSNorm(64)
    with torch.no_grad():
        n.weight.normal_()
    n = n.to(weight_dtype)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * n.weight.double()
    got = n(x.to(dtype))
    assert got.dtype == dtype
    ulp = torch.finfo(dtype).eps
    assert ((got.double() - ref).abs() / ref.abs().clamp_min(1e-3)).max() < 4 * ulp + 1e-6


def test_norms_mlp_rotary():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    n = RMSNorm(8).double()
    torch.testing.assert_close(n(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    gate = torch.randn_like(x)
    torch.testing.assert_close(GatedRMSNorm(8).double()(x, gate), n(x) * F.silu(gate))
    mlp = GatedMLP(8, 16).double()
    torch.testing.assert_close(mlp(x), mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)))
    # RoPE: q_i · k_j depends on i - j only
    rot = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(i, j):
        qi, _ = rot(q, q, torch.tensor([[i]]))
        _, kj = rot(k, k, torch.tensor([[j]]))
        return (qi * kj).sum()
    torch.testing.assert_close(score(7, 3), score(104, 100))
    torch.testing.assert_close(rot(q, k, torch.zeros(1, 1, dtype=torch.long))[0], q)


@pytest.mark.parametrize("name", ["elu", "relu", "identity", "hedgehog", "elementwise_product"])
def test_feature_maps(name):
    fm = get_feature_map(name, 2, 4)
    x = torch.randn(3, 2, 4)
    y = fm(x)
    assert y.shape[-1] == fm.out_dim
    if fm.positive:
        assert (y > 0).all()
    if name == "hedgehog":
        torch.testing.assert_close(y.sum(-1), torch.ones(3, 2))
    with pytest.raises(ValueError, match="feature_map"):
        get_feature_map("softmax", 2, 4)


def elementwise_product(fm, x):
    """φ(x)_h = (x_h A_h + a_h) ⊙ (x_h B_h + b_h), per head h: A_h = weight[h, :, :K], B_h = weight[h, :, K:],
    [a_h, b_h] = bias[h]."""
    K = fm.head_dim
    out = torch.empty_like(x)
    for h in range(fm.num_heads):
        W, b = fm.weight[h], fm.bias[h]
        out[..., h, :] = (x[..., h, :] @ W[:, :K] + b[:K]) * (x[..., h, :] @ W[:, K:] + b[K:])
    return out


def test_elementwise_product_feature_map():
    fm = get_feature_map("elementwise_product", 3, 4).double()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    assert torch.equal(fm(x), x)  # starts as φ(x) = x (A = I, a = 0, B = 0, b = 1)
    assert (fm.weight.shape, fm.bias.shape, fm.out_dim) == ((3, 4, 8), (3, 8), 4)
    with torch.no_grad():
        for p in fm.parameters():
            p.normal_()
    y = fm(x)
    torch.testing.assert_close(y, elementwise_product(fm, x), rtol=1e-12, atol=1e-12)
    assert (y < 0).any()  # sign-indefinite
    assert not torch.allclose(y[..., 0, :], fm(x[..., [1, 0, 2], :])[..., 1, :])  # each head its own map
    fm.reset_parameters()
    assert torch.equal(fm(x), x)


def test_untied_feature_maps_for_q_and_k():
    """tie_feature_map_qk=False: φ_q on q, φ_k on k, each with its own parameters;
    o_t = s Σ_{s≤t} (φ_q(q_t)·φ_k(k_s)) v_s, s = K^-1/2 (no normaliser)."""
    m = make_mixer("linear_attention", feature_map="elementwise_product", tie_feature_map_qk=False, normalize=False)
    assert not hasattr(m, "feature_map") and m.feature_map_q.weight is not m.feature_map_k.weight
    x = torch.randn(2, 30, D, dtype=torch.float64)
    B, T, _ = x.shape
    q = elementwise_product(m.feature_map_q, m.q_proj(x).view(B, T, H, 8))
    k = elementwise_product(m.feature_map_k, m.k_proj(x).view(B, T, H, 8))
    v = m.v_proj(x).view(B, T, H, 8)
    A = torch.einsum("bihk,bjhk->bhij", q, k).tril() * 8 ** -0.5
    want = m.o_proj(torch.einsum("bhij,bjhv->bihv", A, v).reshape(B, T, -1))
    for mode in ("chunk", "recurrent"):
        m.mode = mode
        torch.testing.assert_close(run(m, x), want, rtol=1e-8, atol=1e-10)
    m.feature_map_q, m.feature_map_k = m.feature_map_k, m.feature_map_q  # swapped maps: another output
    assert not torch.allclose(run(m, x), want)
    tied = LinearAttention(D, H, 8, 8, feature_map="hedgehog")  # tied: the one map of existing checkpoints
    assert [n for n, _ in tied.named_parameters() if "feature" in n] == ["feature_map.weight", "feature_map.bias"]


def test_feature_map_argument_errors():
    from linattn_models import LinearTransformerConfig
    with pytest.raises(ValueError, match="feature_map must be one of .*'elementwise_product'.*got 'softmax'"):
        LinearAttention(D, H, 8, 8, feature_map="softmax")
    with pytest.raises(ValueError, match="tie_feature_map_qk must be True or False, got 'no'"):
        LinearAttention(D, H, 8, 8, tie_feature_map_qk="no")
    with pytest.raises(ValueError, match="feature_map must be one of .*'hedgehog'.*got 't2r'"):
        LinearTransformerConfig(feature_map="t2r")
    with pytest.raises(ValueError, match="tie_feature_map_qk must be True or False, got 0"):
        LinearTransformerConfig(tie_feature_map_qk=0)


@pytest.mark.parametrize("name", ["DeltaNetConfig", "GatedDeltaNetConfig"])
def test_deltanet_config_errors(name):
    import linattn_models
    cls = getattr(linattn_models, name)
    assert cls().use_short_conv is True
    with pytest.raises(ValueError, match="use_short_conv must be True or False, got 'yes'"):
        cls(use_short_conv="yes")
    with pytest.raises(ValueError, match="conv_size must be an integer >= 2, got 1"):
        cls(conv_size=1)
