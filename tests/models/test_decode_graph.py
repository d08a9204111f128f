"""The CUDA-graph decode step (models/common/decode_graph.py).

On CPU: when a call is eligible (and why not), that the eager path is untouched, the switches (method, env var),
invalidation, the cache binding/ownership logic, and the in-place final state of the Triton recurrent kernel
(through the interpreter). On a GPU: graph decoding equals eager decoding through `generate` (greedy, beam,
sampling, padding, batch sizes, continued caches, interleaved caches) for every registered architecture.
"""
import copy
import pickle

import pytest
import torch


from devices import DEVICE, gpu_only
from linattn_models.models import LinearAttentionCache
from linattn_models.models.common import CACHE_OUTPUT_NAME
from linattn_models.models.common.decode_graph import ENV_VAR, _StepGraph
from linattn_models.ops import resolve_backend
from model_tester import ARCHS, HYBRIDS, ids, make_model

cuda = gpu_only("CUDA graphs")


def prefilled(model, x):
    with torch.no_grad():
        return model(x, use_cache=True)[CACHE_OUTPUT_NAME]


# --- eligibility (CPU) ------------------------------------------------------------------------------------------
def test_ineligible_reasons_on_cpu(monkeypatch):
    model = make_model("gla")
    x = ids(2, 5)
    cache = prefilled(model, x)
    step = x[:, -1:]
    with torch.no_grad():
        assert model.decode_graph_ineligible(step, cache=cache) == "not on a CUDA device"  # all else eligible
        assert "not [B, 1]" in model.decode_graph_ineligible(x, cache=cache)
        assert "inputs_embeds" in model.decode_graph_ineligible(step, cache=cache, inputs_embeds=torch.zeros(2, 1, 64))
        assert "no populated" in model.decode_graph_ineligible(step, cache=None)
        assert "no populated" in model.decode_graph_ineligible(step, cache=LinearAttentionCache(model.config))
        assert "use_cache" in model.decode_graph_ineligible(step, cache=cache, use_cache=False)
        assert "batch size" in model.decode_graph_ineligible(ids(3, 1), cache=cache)
        assert "labels" in model.decode_graph_ineligible(step, cache=cache, labels=step)
        assert "hidden" in model.decode_graph_ineligible(step, cache=cache, output_hidden_states=True)
        assert "tensor" in model.decode_graph_ineligible(step, cache=cache, logits_to_keep=torch.tensor([0]))
        model.enable_decode_graph(False)
        assert "disabled" in model.decode_graph_ineligible(step, cache=cache)
        model.enable_decode_graph(True)
        monkeypatch.setenv(ENV_VAR, "0")
        assert ENV_VAR in model.decode_graph_ineligible(step, cache=cache)
        monkeypatch.delenv(ENV_VAR)
    assert "grad" in model.decode_graph_ineligible(step, cache=cache)  # grad enabled here
    model.train()
    with torch.no_grad():
        assert "training" in model.decode_graph_ineligible(step, cache=cache)


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_generate_is_eager_and_unchanged(arch):
    model = make_model(arch)
    x = ids(2, 6)
    out = model.generate(x, max_new_tokens=5, do_sample=False)
    model.enable_decode_graph(False)
    assert torch.equal(model.generate(x, max_new_tokens=5, do_sample=False), out)
    assert len(model._decode_graphs) == 0


def test_invalidation_and_copies():
    model = make_model("retnet")
    graphs = model._decode_graphs

    def plant():
        graphs.graphs["k"] = "g"
        graphs.failed.add("f")

    plant()
    model.eval()
    assert len(graphs) == 1  # eval() keeps them
    model.reset_decode_graphs()
    assert len(graphs) == 0 and not graphs.failed
    for change in (lambda m: m.train(), lambda m: m.float(), lambda m: m.to("cpu"), lambda m: m.set_attn_mode("chunk"),
                   lambda m: m.enable_decode_graph(False)):
        plant()
        change(model)
        assert len(graphs) == 0, change
    model.enable_decode_graph(True)
    plant()
    assert len(copy.deepcopy(model)._decode_graphs) == 0
    assert len(pickle.loads(pickle.dumps(model))._decode_graphs) == 0
    assert len(graphs) == 1


def _fake_graph(cache):
    """A _StepGraph without capture (its binding logic only), shaped like `cache`."""
    g = _StepGraph.__new__(_StepGraph)
    g.states = {(i, n): torch.zeros_like(x) for i, layer in enumerate(cache.layers) for n, x in layer.states.items()}
    g.positions = torch.zeros_like(cache.positions)
    g.owner = None
    return g


def test_binding_copies_in_and_releases_the_previous_owner():
    model = make_model("gla")  # conv states and recurrent states
    a, b = prefilled(model, ids(2, 5, seed=1)), prefilled(model, ids(2, 7, seed=2))
    a_vals = {k: x.clone() for k, x in a.layers[0].states.items()}
    g = _fake_graph(a)
    assert not g.bound_to(a)
    g.bind(a)
    assert g.bound_to(a) and a.positions is g.positions
    assert all(a.layers[i].states[n] is buf for (i, n), buf in g.states.items())
    assert all(torch.equal(a.layers[0].states[n], v) for n, v in a_vals.items())
    a.reorder_cache(torch.tensor([1, 0]))  # beam search swaps in new tensors: no longer bound
    assert not g.bound_to(a)
    g.bind(a)
    b_vals = {k: x.clone() for k, x in b.layers[0].states.items()}
    g.bind(b)  # a must keep its own copy of its state
    assert not any(a.layers[i].states[n] is buf for (i, n), buf in g.states.items())
    assert a.positions is not g.positions and torch.equal(a.positions, torch.tensor([5, 5]))
    assert all(torch.equal(a.layers[0].states[n], v[[1, 0]]) for n, v in a_vals.items())
    assert all(torch.equal(g.states[(0, n)], v) for n, v in b_vals.items())


def test_recurrent_kernel_final_state_in_place():
    """On the test device: the in-place final state equals the allocated one, and is the h0 buffer."""
    pytest.importorskip("triton")
    from linattn_models import ops
    dev = DEVICE
    gen = torch.Generator().manual_seed(0)
    B, T, H, K, V = 2, 1, 2, 16, 32
    q, k, v = (torch.randn(B, T, H, d, generator=gen).to(dev) for d in (K, K, V))
    g = -torch.rand(B, T, H, K, generator=gen).to(dev)
    h0 = torch.randn(B, H, K, V, generator=gen).to(dev)
    with torch.no_grad():
        o_ref, s_ref = ops.gated_linear_attention(q, k, v, g, initial_state=h0.clone(), output_final_state=True,
                                                  mode="recurrent", backend="triton")
        buf = h0.clone()
        o, s = ops.gated_linear_attention(q, k, v, g, initial_state=buf, output_final_state=True,
                                          mode="recurrent", backend="triton", final_state_in_place=True)
    assert s is buf
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(s, s_ref)
    buf = h0.clone()
    _, s = ops.gated_linear_attention(q, k, v, g, initial_state=buf, output_final_state=True,  # grad on: ignored
                                      mode="recurrent", backend="triton", final_state_in_place=True)
    assert s is not buf and torch.equal(buf, h0)


# --- graph decoding on a GPU ------------------------------------------------------------------------------------
def _generate_both(model, x, **kw):
    """generate with graphs on and off; returns (graph output, eager output, graphs captured by the first)."""
    kw = dict(return_dict_in_generate=True, output_logits=True, **kw)
    seed = kw.pop("seed", None)
    outs = []
    for enabled in (True, False):
        model.enable_decode_graph(enabled)
        if seed is not None:
            torch.manual_seed(seed)
        outs.append(model.generate(x, **kw))
        if enabled:
            captured = len(model._decode_graphs)
    model.enable_decode_graph(True)
    return outs + [captured]


@cuda
@pytest.mark.parametrize("arch", list(HYBRIDS))
def test_hybrid_decodes_eagerly_on_cuda(arch):
    """The documented fallback for hybrid stacks (their attention KV grows each token): no graph is captured,
    and graph-enabled generation is the eager one."""
    model = make_model(arch, "cuda")
    x = ids(2, 7, device="cuda")
    g, e, captured = _generate_both(model, x, max_new_tokens=10, do_sample=False)
    assert captured == 0 and len(model._decode_graphs) == 0
    _assert_same(g, e)


def _assert_same(graph_out, eager_out):
    assert torch.equal(graph_out.sequences, eager_out.sequences)
    for a, b in zip(graph_out.logits, eager_out.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@cuda
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_greedy_equals_eager(arch, batch):
    model = make_model(arch, "cuda")
    x = ids(batch, 7, device="cuda")
    model.enable_decode_graph(True)
    g = model.generate(x, max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_logits=True)
    (graph,) = model._decode_graphs.graphs.values()  # the graph ran (and was captured once)
    if resolve_backend(None, x.device) == "triton":  # the recurrent kernel updates its state buffer in place
        assert not any(name == "recurrent" for _, name in graph.copied), graph.copied
    model.enable_decode_graph(False)
    e = model.generate(x, max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_logits=True)
    _assert_same(g, e)


@cuda
@pytest.mark.parametrize("arch", ARCHS)
def test_graph_beam_search_and_sampling(arch):
    model = make_model(arch, "cuda")
    x = ids(2, 6, device="cuda")
    g, e, captured = _generate_both(model, x, max_new_tokens=8, num_beams=2, do_sample=False)
    assert torch.equal(g.sequences, e.sequences) and captured == 1
    g, e, captured = _generate_both(model, x, max_new_tokens=8, do_sample=True, top_k=20, seed=123)
    _assert_same(g, e)
    assert captured == 1


@cuda
@pytest.mark.parametrize("arch", ARCHS)
def test_graph_left_padded_batch(arch):
    model = make_model(arch, "cuda")
    x = ids(3, 8, device="cuda")
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    mask[2, :5] = 0
    x = x.masked_fill(mask == 0, model.config.pad_token_id)
    g, e, captured = _generate_both(model, x, attention_mask=mask, max_new_tokens=10, do_sample=False)
    _assert_same(g, e)
    assert captured == 1


@cuda
@pytest.mark.parametrize("arch", ARCHS)
def test_graph_continue_from_returned_cache_and_interleaved_caches(arch):
    model = make_model(arch, "cuda")
    x = ids(2, 6, device="cuda")
    results = []
    for enabled in (True, False):
        model.enable_decode_graph(enabled)
        first = model.generate(x, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
        cache_a = first[CACHE_OUTPUT_NAME]
        # another sequence decodes in between through the same graph: cache_a must keep its own state
        other = model.generate(ids(2, 4, seed=5, device="cuda"), max_new_tokens=5, do_sample=False)
        cont = torch.cat([first.sequences, ids(2, 1, seed=7, device="cuda")], 1)  # one new prompt token
        more = model.generate(cont, cache=cache_a, max_new_tokens=6, do_sample=False) if CACHE_OUTPUT_NAME == "cache" \
            else model.generate(cont, past_key_values=cache_a, max_new_tokens=6, do_sample=False)
        results.append((first.sequences, other, more))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@cuda
def test_graph_direct_forward_steps_and_dtype_change():
    """Step by step through forward (no generate), in bf16, then after .float(): graphs are recaptured."""
    model = make_model("retnet", "cuda", torch.bfloat16)
    x = ids(2, 9, device="cuda")
    with torch.no_grad():
        caches = [prefilled(model, x), prefilled(model, x)]
        tok = x[:, -1:]
        for _ in range(4):
            model.enable_decode_graph(True)
            lg = model(tok, cache=caches[0]).logits
            model.enable_decode_graph(False)
            le = model(tok, cache=caches[1]).logits
            torch.testing.assert_close(lg, le)
            tok = le[:, -1].argmax(-1, keepdim=True)
        assert caches[0].seen_tokens == caches[1].seen_tokens == 13
        torch.testing.assert_close(caches[0].positions, caches[1].positions)
        model.enable_decode_graph(True)
        model.float()
        cache = prefilled(model, x)
        model(tok, cache=cache)
        assert len(model._decode_graphs) == 1 and next(iter(model._decode_graphs.graphs))[1] == torch.float32
