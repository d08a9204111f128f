"""linattn_models.use_in_transformers(): transformers' own Gated DeltaNet models (Qwen3Next, OLMo Hybrid) on our
ops. Tiny random fp32 models, same weights and input: transformers' torch path vs ours (torch backend, and the
Triton backend: compiled on a GPU, the interpreter on CPU) — logits, parameter gradients, a few optimizer steps,
the undo, packed sequences (cu_seq_lens_q)."""
import importlib

import pytest
import torch

import linattn_models
from devices import DEVICE
from linattn_models import hf_kernels

try:
    from linattn_models.ops.dispatch import triton_ops  # noqa: F401
    HAVE_TRITON = True
except Exception:  # pragma: no cover
    HAVE_TRITON = False


def _model_class(key):
    module_name = hf_kernels.MODELS[key][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None, None
    cls_name = {"qwen3_next": "Qwen3NextForCausalLM", "olmo_hybrid": "OlmoHybridForCausalLM"}[key]
    return module, getattr(module, cls_name, None)


def _config(key, layer_types=("linear_attention", "full_attention")):
    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=len(layer_types),
                  num_attention_heads=2, num_key_value_heads=1, layer_types=list(layer_types),
                  linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=8, linear_num_key_heads=2,
                  linear_num_value_heads=4, initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if key == "qwen3_next":
        from transformers import Qwen3NextConfig
        # grouped value heads (4 value heads on 2 key heads), as the real checkpoints
        return Qwen3NextConfig(head_dim=16, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                               num_experts=2, num_experts_per_tok=1, **common)
    from transformers import OlmoHybridConfig
    common["linear_num_value_heads"] = 2
    return OlmoHybridConfig(**common)


def _build(key, **kw):
    module, cls = _model_class(key)
    if cls is None:
        pytest.skip(f"{key}: the installed transformers has no such model")
    torch.manual_seed(0)
    model = cls(_config(key, **kw)).to(DEVICE).float()
    return model


MODELS = ["qwen3_next", "olmo_hybrid"]
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAVE_TRITON, reason="triton missing"))]


def _batch(T=24, B=2):
    gen = torch.Generator().manual_seed(1)
    return torch.randint(3, 128, (B, T), generator=gen).to(DEVICE)


def _loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x, labels=x)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", MODELS)
def test_logits_and_grads_match_transformers(key, backend):
    model = _build(key)
    x = _batch()
    ref_logits, ref_loss, ref_grads = _loss_and_grads(model, x)
    gdn = hf_kernels.MODELS[key][1]
    assert any(type(m).__name__ == gdn for m in model.modules())
    with linattn_models.use_in_transformers(key, backend=backend):
        calls = []
        original = hf_kernels._run
        hf_kernels._run = lambda *a, **k: calls.append(a[0]) or original(*a, **k)
        try:
            logits, loss, grads = _loss_and_grads(model, x)
        finally:
            hf_kernels._run = original
    assert calls and set(calls) == {"chunk"}  # our op ran (once per linear-attention layer)
    assert _rel(logits, ref_logits) < 1e-4
    assert abs(loss.item() - ref_loss.item()) < 1e-4 * abs(ref_loss.item())
    assert grads.keys() == ref_grads.keys()
    total = torch.cat([g.flatten() for g in ref_grads.values()]).norm()
    for name, g in grads.items():
        # relative per parameter; parameters with a tiny gradient (unrouted experts) against the total norm
        tol = 1e-3 * max(ref_grads[name].norm().item(), 1e-4 * total.item())
        assert (g - ref_grads[name]).norm().item() <= tol, name


@pytest.mark.parametrize("key", MODELS)
def test_training_steps_lower_the_loss(key):
    model = _build(key)
    x = _batch()
    backend = "triton" if HAVE_TRITON else "torch"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with linattn_models.use_in_transformers(key, backend=backend):
        losses = []
        for _ in range(4):
            opt.zero_grad()
            loss = model(x, labels=x).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("key", MODELS)
def test_undo_restores_transformers_path(key):
    module, cls = _model_class(key)
    if cls is None:
        pytest.skip(f"{key}: the installed transformers has no such model")
    gdn_cls = getattr(module, hf_kernels.MODELS[key][1])
    names = [n for n in hf_kernels._CHUNK_NAMES + hf_kernels._RECURRENT_NAMES + (hf_kernels._CONV_NAME,)
             if n in vars(module)]
    before = {n: vars(module)[n] for n in names}
    init = gdn_cls.__init__
    model = _build(key)
    layer = next(m for m in model.modules() if isinstance(m, gdn_cls))
    # an older-transformers style layer: the function as an instance attribute set in __init__
    sentinel = object()
    layer.chunk_gated_delta_rule = sentinel
    h1 = linattn_models.use_in_transformers(key, backend="torch")
    h2 = linattn_models.use_in_transformers(key, backend="torch")  # idempotent: patches nothing more
    assert h1.models == (key,) and h2.models == ()
    assert module.torch_chunk_gated_delta_rule is hf_kernels.chunk_gated_delta_rule
    assert module.torch_recurrent_gated_delta_rule is hf_kernels.recurrent_gated_delta_rule
    assert layer.chunk_gated_delta_rule is hf_kernels.chunk_gated_delta_rule
    h2.undo()
    assert module.torch_chunk_gated_delta_rule is hf_kernels.chunk_gated_delta_rule  # h2 patched nothing
    h1.undo()
    h1.undo()  # twice: no-op
    assert {n: vars(module)[n] for n in names} == before
    assert gdn_cls.__init__ is init
    assert layer.chunk_gated_delta_rule is sentinel
    del layer.chunk_gated_delta_rule


def test_unknown_model_and_backend():
    with pytest.raises(ValueError):
        linattn_models.use_in_transformers("mamba")
    with pytest.raises(ValueError):
        linattn_models.use_in_transformers(backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", MODELS)
def test_packed_sequences(key, backend):
    """Two sequences packed in one row with cu_seq_lens_q (DataCollatorWithFlattening's flash-attention kwargs)
    and restarting position_ids, no cache (training: transformers' full-attention mask separates packed sequences
    only without a cache): the same logits as each sequence alone. transformers' torch fallback refuses it."""
    model = _build(key).eval()
    import inspect
    gdn_cls = next(type(m) for m in model.modules() if type(m).__name__ == hf_kernels.MODELS[key][1])
    if "cu_seq_lens_q" not in inspect.getsource(gdn_cls.forward):
        pytest.skip(f"this transformers' {gdn_cls.__name__} passes no cu_seqlens: no packed-sequence path")
    a, b = _batch(T=10, B=1), _batch(T=14, B=1).flip(-1)
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.cat([torch.arange(10), torch.arange(14)])[None].to(DEVICE)
    cu = torch.tensor([0, 10, 24], dtype=torch.int32, device=DEVICE)
    kw = dict(use_cache=False, position_ids=position_ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=14,
              max_length_k=14)
    with torch.no_grad():
        try:  # transformers' torch fallback (5.2x) refuses packed rows; other versions may mix them silently
            model(packed, **kw)
        except ValueError as e:
            assert "packed" in str(e)
        with linattn_models.use_in_transformers(key, backend=backend):
            out = model(packed, **kw).logits
            sep = torch.cat([model(a, use_cache=False).logits, model(b, use_cache=False).logits], dim=1)
    assert _rel(out, sep) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", MODELS)
def test_cached_decode_matches_transformers(key, backend):
    """Prefill with a cache (chunk op, final state into the cache), then one-token steps (the recurrent op, the
    cached state as initial_state): the step logits equal transformers' own path."""
    model = _build(key).eval()
    x = _batch(T=12, B=2)

    def run():
        calls = []
        original = hf_kernels._run
        hf_kernels._run = lambda *a, **k: calls.append(a[0]) or original(*a, **k)
        try:
            with torch.no_grad():
                out = model.generate(x, max_new_tokens=3, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True, pad_token_id=0)
        finally:
            hf_kernels._run = original
        return out.sequences, torch.stack(out.logits, 1), calls

    ref_seq, ref_logits, ref_calls = run()
    assert ref_calls == []
    with linattn_models.use_in_transformers(key, backend=backend):
        seq, logits, calls = run()
    assert "chunk" in calls and "recurrent" in calls
    assert _rel(logits, ref_logits) < 1e-4
    assert torch.equal(seq, ref_seq)


def test_older_transformers_instance_attributes(monkeypatch):
    """The layer pattern of older transformers (4.5x / early 5.x): fla's names or None at module level, the
    functions chosen in __init__ as instance attributes and called as self.chunk_gated_delta_rule(...)."""
    import sys
    import types

    fake = types.ModuleType("fake_modeling_gdn")

    def torch_chunk_gated_delta_rule(*a, **k):
        raise AssertionError("transformers' fallback called")

    fake.torch_chunk_gated_delta_rule = torch_chunk_gated_delta_rule
    fake.torch_recurrent_gated_delta_rule = torch_chunk_gated_delta_rule
    fake.chunk_gated_delta_rule = fake.fused_recurrent_gated_delta_rule = None  # fla not installed

    class FakeGatedDeltaNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.chunk_gated_delta_rule = fake.chunk_gated_delta_rule or fake.torch_chunk_gated_delta_rule
            self.recurrent_gated_delta_rule = (fake.fused_recurrent_gated_delta_rule
                                               or fake.torch_recurrent_gated_delta_rule)

        def forward(self, q, k, v, g, beta, state=None):
            fn = self.chunk_gated_delta_rule if state is None else self.recurrent_gated_delta_rule
            return fn(q, k, v, g=g, beta=beta, initial_state=state, output_final_state=True,
                      use_qk_l2norm_in_kernel=True)

    fake.FakeGatedDeltaNet = FakeGatedDeltaNet
    monkeypatch.setitem(sys.modules, "fake_modeling_gdn", fake)
    monkeypatch.setitem(hf_kernels.MODELS, "fake", ("fake_modeling_gdn", "FakeGatedDeltaNet"))
    before = FakeGatedDeltaNet()
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 8, 1, 16, generator=gen), torch.randn(1, 8, 1, 16, generator=gen)
    v = torch.randn(1, 8, 2, 8, generator=gen)  # grouped value heads
    g, beta = -torch.rand(1, 8, 2, generator=gen), torch.rand(1, 8, 2, generator=gen)
    with linattn_models.use_in_transformers("fake", backend="torch"):
        after = FakeGatedDeltaNet()
        o1, s1 = before(q, k, v, g, beta)
        o2, s2 = after(q, k, v, g, beta)
        o3, s3 = after(q[:, :1], k[:, :1], v[:, :1], g[:, :1], beta[:, :1], state=s2)
    assert torch.equal(o1, o2) and o1.shape == (1, 8, 2, 8) and s2.shape == (1, 2, 16, 8) and o3.shape[1] == 1
    assert before.chunk_gated_delta_rule is torch_chunk_gated_delta_rule and fake.chunk_gated_delta_rule is None
    assert FakeGatedDeltaNet().chunk_gated_delta_rule is torch_chunk_gated_delta_rule
