"""Hybrid stacks (issue 19): the SoftmaxAttention layer against a float64 reference written here (naive softmax
with an explicit mask, grouped-query heads, sliding window, rotary at real-token positions), padding, its KV in
the cache, the config fields' validation, the decode-graph fallback and the CLI's hybrid sizes. The shared model
tests (test_models.py) run the hybrid configs through generation, beam search, save/load and training."""
import math

import pytest
import torch
from transformers import AutoConfig

import linattn_models
from linattn_models import GatedDeltaNetConfig, GLAConfig, RetNetConfig
from linattn_models.layers import Padding, SoftmaxAttention
from linattn_models.models import LinearAttentionCache
from linattn_models.models.common import CACHE_OUTPUT_NAME
from model_tester import ids, make_model

D64 = torch.float64


# --- the float64 reference ----------------------------------------------------------------------------------
def rope_reference(x, pos, theta):
    """Rotate-half RoPE of x [B, T, H, D] at integer positions [B, T], in float64 (the frequencies made in
    float32 as RotaryEmbedding makes them: a float32 buffer)."""
    D = x.shape[-1]
    inv = (1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)).to(D64)
    ang = pos.to(D64)[..., None] * inv  # [B, T, D/2]
    cos, sin = ang.cos()[:, :, None], ang.sin()[:, :, None]
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def attention_reference(layer, x, mask=None):
    """What SoftmaxAttention computes, token by token: x [B, T, C]; mask [B, T] bool (True = real) or None.
    Each real query t of a row attends to the real keys s <= t, and with a window W to the last W real tokens up
    to t only; positions count real tokens; pads output zero. Plain loops, explicit softmax, float64."""
    x = x.to(D64)
    B, T, _ = x.shape
    H, Hk, Dh, W = layer.num_heads, layer.num_kv_heads, layer.head_dim, layer.window_size
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask
    w = {n: getattr(layer, n).weight.to(D64) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    q = rope_reference((x @ w["q_proj"].T).view(B, T, H, Dh), pos, layer.rotary.base)
    k = rope_reference((x @ w["k_proj"].T).view(B, T, Hk, Dh), pos, layer.rotary.base)
    v = (x @ w["v_proj"].T).view(B, T, Hk, Dh)
    out = torch.zeros(B, T, H, Dh, dtype=D64)
    for b in range(B):
        real = [t for t in range(T) if mask[b, t]]
        for i, t in enumerate(real):
            keys = real[:i + 1] if W is None else real[max(0, i + 1 - W):i + 1]
            for h in range(H):
                g = h // (H // Hk)
                scores = torch.stack([q[b, t, h] @ k[b, s, g] for s in keys]) / math.sqrt(Dh)
                p = torch.exp(scores - scores.max())
                p = p / p.sum()
                out[b, t, h] = sum(p[j] * v[b, s, g] for j, s in enumerate(keys))
    return out.reshape(B, T, H * Dh) @ w["o_proj"].T


def make_layer(hidden=48, heads=6, kv_heads=None, window=None, theta=10000.0, seed=0):
    torch.manual_seed(seed)
    layer = SoftmaxAttention(hidden, heads, num_kv_heads=kv_heads, window_size=window, rope_theta=theta)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer.double()


def padding_of(mask):
    return Padding.from_mask(mask, mask.shape[1])


LAYER_CASES = [dict(), dict(kv_heads=2), dict(kv_heads=3, window=4), dict(kv_heads=1, window=1),
               dict(heads=4, kv_heads=4, window=7, theta=500.0)]


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "mha")
def test_layer_matches_float64_reference(case):
    layer = make_layer(**case)
    x = torch.randn(2, 13, 48, dtype=D64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), attention_reference(layer, x), rtol=1e-10, atol=1e-10)
    # left padding in row 0, right padding in row 1, a pad in the middle of row 1
    mask = torch.ones(2, 13, dtype=torch.bool)
    mask[0, :4] = False
    mask[1, 9:] = False
    mask[1, 5] = False
    got = layer(x, padding=padding_of(mask))
    torch.testing.assert_close(got, attention_reference(layer, x, mask), rtol=1e-10, atol=1e-10)
    assert torch.equal(got[~mask], torch.zeros_like(got[~mask]))  # pads: exactly zero


def test_layer_gradients_match_float64_reference():
    """Gradients (input and every weight) against autograd through the reference loops, padded, GQA, window."""
    layer = make_layer(kv_heads=2, window=3)
    x = torch.randn(2, 9, 48, dtype=D64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :2] = False
    w = torch.randn(2, 9, 48, dtype=D64, generator=torch.Generator().manual_seed(6))
    grads = []
    for fn in (lambda: layer(x, padding=padding_of(mask)), lambda: attention_reference(layer, x, mask)):
        layer.zero_grad()
        x.grad = None
        (fn() * w).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_reference_is_not_trivially_matched():
    """The comparison can fail: a wrong window, GQA grouping or rotary position is far off the reference."""
    layer = make_layer(kv_heads=2, window=4)
    x = torch.randn(1, 10, 48, dtype=D64, generator=torch.Generator().manual_seed(2))
    want = attention_reference(layer, x)
    for wrong in (dict(window_size=5), dict(window_size=None)):
        for k, v in wrong.items():
            setattr(layer, k, v)
        assert (layer(x) - want).abs().max() > 1e-3
        layer.window_size = 4
    shifted = layer(x, positions=torch.arange(1, 11)[None])  # a uniform shift: RoPE only sees differences
    torch.testing.assert_close(shifted, want, rtol=1e-10, atol=1e-10)
    stretched = layer(x, positions=2 * torch.arange(10)[None])  # other relative positions
    assert (stretched - want).abs().max() > 1e-3
    # another grouping of the query heads onto the kv heads (h % H_kv instead of h // (H / H_kv))
    perm = torch.arange(6).view(2, 3).T.reshape(-1)
    with torch.no_grad():
        layer.q_proj.weight.copy_(layer.q_proj.weight.view(6, 8, 48)[perm].reshape(48, 48))
    assert (layer(x) - want).abs().max() > 1e-3


@pytest.mark.parametrize("window", [None, 3])
def test_padded_rows_equal_rows_alone(window):
    layer = make_layer(kv_heads=2, window=window)
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(1, n, 48, dtype=D64, generator=g) for n in (9, 4, 12)]
    T = 12
    for side in ("left", "right"):
        batch = torch.zeros(3, T, 48, dtype=D64)
        mask = torch.zeros(3, T, dtype=torch.bool)
        for i, r in enumerate(rows):
            sl = slice(T - r.shape[1], T) if side == "left" else slice(0, r.shape[1])
            batch[i, sl], mask[i, sl] = r[0], True
        out = layer(batch, padding=padding_of(mask))
        for i, r in enumerate(rows):
            torch.testing.assert_close(out[i][mask[i]], layer(r)[0], rtol=1e-12, atol=1e-12)
        assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))


@pytest.mark.parametrize("window", [None, 4])
def test_cached_steps_equal_full_forward(window):
    """Prefill a left-padded batch into a cache, then feed tokens one at a time and in a chunk: the KV grows and
    the outputs equal one forward over everything (standalone: positions derived from the cached mask)."""
    layer = make_layer(kv_heads=3, window=window)
    x = torch.randn(2, 15, 48, dtype=D64, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[1, :5] = False
    want = layer(x, padding=padding_of(mask))
    cache = LinearAttentionCache(num_layers=1)
    got = [layer(x[:, :8], cache=cache, padding=padding_of(mask[:, :8]))]
    assert cache.kv_length(0) == 8 and cache.get_state(0, "kv_mask").shape == (2, 8)
    for t in range(8, 11):
        got.append(layer(x[:, t:t + 1], cache=cache))
    got.append(layer(x[:, 11:], cache=cache))  # a chunk after a cache: explicit causal mask
    assert cache.kv_length(0) == 15 and cache.get_state(0, "key").shape == (2, 3, 15, 8)
    torch.testing.assert_close(torch.cat(got, 1), want, rtol=1e-10, atol=1e-10)
    # without any padding no mask is kept
    cache = LinearAttentionCache(num_layers=1)
    steps = [layer(x[:, :6], cache=cache)] + [layer(x[:, t:t + 1], cache=cache) for t in range(6, 15)]
    assert cache.get_state(0, "kv_mask") is None
    torch.testing.assert_close(torch.cat(steps, 1), layer(x), rtol=1e-10, atol=1e-10)


def test_layer_gradients_and_low_precision():
    layer = make_layer(kv_heads=2, window=5).float()
    x = torch.randn(2, 11, 48, requires_grad=True)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, :3] = False
    layer(x, padding=padding_of(mask)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, :3].abs().max() == 0  # pads get no gradient
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    bf = make_layer(kv_heads=2).to(torch.bfloat16)
    y = bf(torch.randn(1, 9, 48, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_size=48, num_heads=5), "num_heads = 5 must divide hidden_size = 48"),
    (dict(hidden_size=48, num_heads=6, num_kv_heads=4), "num_kv_heads = 4 must be a positive integer dividing"),
    (dict(hidden_size=48, num_heads=6, num_kv_heads=0), "num_kv_heads"),
    (dict(hidden_size=48, num_heads=16), "head_dim must be an even"),
    (dict(hidden_size=48, num_heads=6, window_size=0), "window_size must be None"),
    (dict(hidden_size=48, num_heads=6, rope_theta=-1.0), "rope_theta"),
    (dict(hidden_size=0, num_heads=6), "hidden_size must be a positive integer"),
])
def test_layer_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxAttention(**kwargs)


# --- config ---------------------------------------------------------------------------------------------------
def test_attn_layers_list_and_interval():
    c = GLAConfig(hidden_size=64, num_heads=4, num_hidden_layers=12, attn_layers=4)
    assert c.attention_layer_indices == [3, 7, 11]
    assert c.layer_types == ["full_attention" if i in (3, 7, 11) else "linear_attention" for i in range(12)]
    c.num_hidden_layers = 8  # an interval follows the depth
    assert c.attention_layer_indices == [3, 7] and c.layer_types.count("full_attention") == 2
    c = GLAConfig(hidden_size=64, num_heads=4, num_hidden_layers=5, attn_layers=(4, 0), attn_window=16)
    assert c.attn_layers == [4, 0] and c.attention_layer_indices == [0, 4]
    assert c.layer_types[0] == c.layer_types[4] == "sliding_attention"
    assert GLAConfig(num_hidden_layers=3, attn_layers=1).attention_layer_indices == [0, 1, 2]
    assert GLAConfig(num_hidden_layers=3, attn_layers=[]).layer_types == ["linear_attention"] * 3
    assert GLAConfig(num_hidden_layers=3).attention_layer_indices == []
    # heads: derived from num_heads until set
    c = GLAConfig(hidden_size=64, num_heads=4, attn_layers=[0])
    assert (c.attn_num_heads, c.attn_num_kv_heads) == (4, 4)
    c.num_heads = 2
    assert (c.attn_num_heads, c.attn_num_kv_heads) == (2, 2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(attn_layers=[4]), r"attn_layers: index 4 is out of range for num_hidden_layers = 4"),
    (dict(attn_layers=[-1]), "attn_layers: index -1 is out of range"),
    (dict(attn_layers=[1, 2, 1]), r"attn_layers holds duplicate indices \[1\]"),
    (dict(attn_layers=0), "attn_layers as an interval must be >= 1"),
    (dict(attn_layers="3"), "attn_layers must be None, a list"),
    (dict(attn_layers=[1.0]), "attn_layers must hold integer layer indices"),
    (dict(attn_layers=[1], attn_num_heads=3), "attn_num_heads = 3 must divide hidden_size = 64"),
    (dict(attn_layers=[1], attn_num_heads=4, attn_num_kv_heads=3), "attn_num_kv_heads = 3 must divide attn_num_heads = 4"),
    (dict(attn_layers=[1], attn_num_heads=0), "attn_num_heads must be a positive integer"),
    (dict(attn_layers=[1], attn_num_heads=64), "odd attention head dim"),
    (dict(attn_layers=[1], attn_window=0), "attn_window must be None"),
    (dict(attn_layers=[1], attn_window=2.5), "attn_window must be None"),
    (dict(attn_layers=[1], attn_rope_theta=0.0), "attn_rope_theta must be a finite number > 0"),
    (dict(attn_layers=[1], layer_types=["linear_attention", "full_attention", "full_attention", "linear_attention"]),
     "layer_types is derived from attn_layers"),
])
@pytest.mark.parametrize("config_cls", [GLAConfig, GatedDeltaNetConfig, RetNetConfig])
def test_config_refuses_bad_attention_fields(config_cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config_cls(hidden_size=64, num_heads=4, num_hidden_layers=4, head_k_dim=16, head_v_dim=16, **kwargs)


def test_config_overrides_are_checked_on_load(tmp_path):
    cfg = AutoConfig.from_pretrained(linattn_models.configs_path("gla", "tiny-hybrid"))
    cfg.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert again.attn_layers == 4 and again.layer_types == cfg.layer_types and again.attn_num_kv_heads == 2
    assert AutoConfig.from_pretrained(tmp_path, num_hidden_layers=8).attention_layer_indices == [3, 7]
    with pytest.raises(ValueError, match="attn_layers: index 9 is out of range"):
        AutoConfig.from_pretrained(tmp_path, attn_layers=[9])
    with pytest.raises(ValueError, match="attn_num_kv_heads = 3 must divide"):
        AutoConfig.from_pretrained(tmp_path, attn_num_kv_heads=3)


@pytest.mark.parametrize("arch", ["gla", "gated_deltanet"])
def test_shipped_hybrid_configs(arch):
    for size in ("tiny", "125m", "370m", "1.3b"):
        base = AutoConfig.from_pretrained(linattn_models.configs_path(arch, size))
        c = AutoConfig.from_pretrained(linattn_models.configs_path(arch, f"{size}-hybrid"))
        assert type(c) is type(base) and c.attn_layers == 4
        n = c.num_hidden_layers
        assert c.attention_layer_indices == list(range(3, n, 4)) and len(c.attention_layer_indices) == n // 4
        assert (c.hidden_size, c.vocab_size) == (base.hidden_size, base.vocab_size)
        assert c.hidden_size % c.attn_num_heads == 0 and c.attn_num_heads % c.attn_num_kv_heads == 0
    # the package's copy of the configs (src/linattn_models/configs/<arch>, a link) holds them too
    pkg = linattn_models.configs_path()
    assert (__import__("pathlib").Path(pkg) / arch / "tiny-hybrid.json").is_file()


# --- models -----------------------------------------------------------------------------------------------------
def test_hybrid_model_layers_and_any_architecture():
    """attn_layers works for every architecture (here RetNet, which ships no hybrid config)."""
    model = make_model("retnet", attn_layers=[0, 2], attn_num_heads=2, attn_num_kv_heads=1, num_hidden_layers=3)
    kinds = [type(layer.attn).__name__ for layer in model.model.layers]
    assert kinds == ["SoftmaxAttention", "MultiScaleRetention", "SoftmaxAttention"]
    names = {n for n, _ in model.named_parameters() if n.startswith("model.layers.0.attn.")}
    assert names == {f"model.layers.0.attn.{p}_proj.weight" for p in "qkvo"}
    x = ids(2, 30)
    with torch.no_grad():
        out = model(x[:, :20], use_cache=True)
        cache = out[CACHE_OUTPUT_NAME]
        assert cache.kv_length(0) == cache.kv_length(2) == 20 and cache.kv_length(1) == 0
        assert cache.get_state(0, "key").shape == (2, 1, 20, 32)
        more = model(x[:, 20:], use_cache=True, **{CACHE_OUTPUT_NAME: cache})
        torch.testing.assert_close(more.logits, model(x).logits[:, 20:], rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 30 and cache.kv_length(0) == 30
    out = model.generate(x, max_new_tokens=5, do_sample=False)
    seq = x
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)
    # left padding with attention in the first layer (and a linear layer after it): rows as alone, in generate too
    a, b = ids(1, 11, seed=7), ids(1, 18, seed=8)
    batch = torch.full((2, 18), model.config.pad_token_id)
    mask = torch.zeros(2, 18, dtype=torch.long)
    batch[0, 7:], mask[0, 7:] = a[0], 1
    batch[1], mask[1] = b[0], 1
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        torch.testing.assert_close(logits[0, 7:], model(a).logits[0], rtol=1e-5, atol=1e-5)
    gen = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(gen[0, 7:], model.generate(a, max_new_tokens=6, do_sample=False)[0])
    assert torch.equal(gen[1], model.generate(b, max_new_tokens=6, do_sample=False)[0])


def test_cache_batch_operations_reach_the_kv():
    model = make_model("gla-hybrid")
    x = ids(2, 9)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :2] = 0
    with torch.no_grad():
        cache = model(x, attention_mask=mask, use_cache=True)[CACHE_OUTPUT_NAME]
    L = model.config.attention_layer_indices[0]
    key, kv_mask, rec = (cache.get_state(L, "key").clone(), cache.get_state(L, "kv_mask").clone(),
                         cache.get_state(0, "recurrent").clone())
    cache.batch_repeat_interleave(2)
    assert torch.equal(cache.get_state(L, "key"), key.repeat_interleave(2, 0))
    assert torch.equal(cache.get_state(L, "kv_mask"), kv_mask.repeat_interleave(2, 0))
    cache.reorder_cache(torch.tensor([3, 0, 1, 2]))
    assert torch.equal(cache.get_state(L, "key"), key[[1, 0, 0, 1]])
    assert torch.equal(cache.get_state(0, "recurrent"), rec[[1, 0, 0, 1]])
    cache.batch_select_indices(torch.tensor([1, 3]))
    assert torch.equal(cache.get_state(L, "value")[:, 0], cache.get_state(L, "value")[:, 0])
    assert torch.equal(cache.get_state(L, "kv_mask"), kv_mask[[0, 1]]) and cache.batch_size == 2
    assert cache.nbytes() > cache.nbytes(kv=False) > 0


def test_kv_grows_and_linear_states_do_not():
    model = make_model("gated_deltanet-hybrid")
    sizes = []
    for T in (8, 64):
        with torch.no_grad():
            c = model(ids(1, T), use_cache=True)[CACHE_OUTPUT_NAME]
        sizes.append((c.nbytes(kv=False), c.nbytes() - c.nbytes(kv=False)))
    assert sizes[0][0] == sizes[1][0] > 0 and sizes[1][1] == 8 * sizes[0][1] > 0


def test_decode_graph_falls_back_to_eager_for_hybrids():
    """The documented fallback: a hybrid stack never takes the CUDA-graph step (its KV grows)."""
    model = make_model("gla-hybrid")
    with torch.no_grad():
        cache = model(ids(2, 5), use_cache=True)[CACHE_OUTPUT_NAME]
        reason = model.decode_graph_ineligible(input_ids=ids(2, 1), cache=cache, use_cache=True)
    assert reason is not None and "softmax-attention layers" in reason and "eagerly" in reason
    plain = make_model("gla")
    with torch.no_grad():
        cache = plain(ids(2, 5), use_cache=True)[CACHE_OUTPUT_NAME]
    assert "softmax" not in plain.decode_graph_ineligible(input_ids=ids(2, 1), cache=cache, use_cache=True)


# --- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_hybrid_sizes_and_overrides():
    from linattn_models.cli import UsageError
    from linattn_models.cli.args import build_parser, validate_args
    from linattn_models.cli.model import build_config, resolve_config_path
    path = resolve_config_path("gated_deltanet", "tiny-hybrid")
    cfg = build_config(str(path), ["hidden_size=128", "num_hidden_layers=8"])
    assert cfg.attn_layers == 4 and cfg.attention_layer_indices == [3, 7] and cfg.attn_num_heads == 4
    cfg = build_config(str(path), ["attn_window=32"])
    assert cfg.layer_types[3] == "sliding_attention"
    args = build_parser().parse_args(["--arch", "retnet", "--size", "tiny-hybrid"])
    with pytest.raises(UsageError, match="--size tiny-hybrid: no shipped config for --arch retnet"):
        validate_args(args)
