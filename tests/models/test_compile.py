"""torch.compile(fullgraph=True) of every architecture (docs/compile.md): training (forward + backward) gives
eager's loss and gradients, a second sequence length does not recompile, greedy decoding with the compiled
forward equals eager greedy; padded batches compile too (masking instead of packing); the custom ops pass
torch.library.opcheck; the value checks still raise in eager.

CPU, tiny configs, the torch backend. Dynamo's graph is checked with the "aot_eager" backend (the backward is
traced too) or the plain "eager" one where only tracing is at stake; one test runs the default inductor.
"""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

from linattn_models import ops
from linattn_models.ops import library

from model_tester import ARCHS, ids, make_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    monkeypatch.setenv("LINATTN_BACKEND", "torch")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _train_step(model, x, mask=None):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=x, attention_mask=mask, labels=x, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_train(model, step, x, mask=None, tol=1e-5):
    loss, grads = step(x, mask)
    want_loss, want = _train_step(model, x, mask)
    torch.testing.assert_close(loss, want_loss, rtol=tol, atol=tol)
    assert grads.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(grads[name], want[name], rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def _compiled_step(model, backend, **kw):
    counter = CompileCounterWithBackend(backend)
    fwd = torch.compile(lambda x, mask: model(input_ids=x, attention_mask=mask, labels=x, use_cache=False).loss,
                        fullgraph=True, backend=counter, dynamic=True, **kw)

    def step(x, mask=None):
        model.zero_grad(set_to_none=True)
        loss = fwd(x, mask)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    return step, counter


@pytest.mark.parametrize("arch", ARCHS)
def test_train_fullgraph_matches_eager_and_does_not_recompile(arch):
    """Both lengths of one compile: 40 (chunked form inside the op) and 20 (recurrent: mode auto is resolved
    inside the custom op, so it is no guard)."""
    model = make_model(arch).train()
    step, counter = _compiled_step(model, "aot_eager")
    _check_train(model, step, ids(2, 40, seed=2))
    compiles = counter.frame_count
    _check_train(model, step, ids(2, 20, seed=3))
    _check_train(model, step, ids(3, 57, seed=4))
    assert counter.frame_count == compiles, "a new sequence length recompiled"


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_compiles_fullgraph(arch):
    """attention_mask with left pads, right pads and an all-pad row: under compile the pads are masked instead
    of packed (layers/common.py); loss and gradients are eager's (packed) up to rounding."""
    model = make_model(arch).train()
    step, counter = _compiled_step(model, "eager")
    for T in (40, 24):
        mask = torch.ones(3, T, dtype=torch.long)
        mask[0, :5] = 0
        mask[1, -7:] = 0
        mask[2] = 0
        _check_train(model, step, ids(3, T, seed=T), mask)
    _check_train(model, step, ids(3, 16, seed=9), torch.ones(3, 16, dtype=torch.long))  # all real: no packing
    assert counter.frame_count == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_with_compiled_forward_equals_eager(arch):
    """generate (greedy, the cache through every step) with the forward compiled fullgraph: prefill and the
    one-token step compile once each; a prompt of another length compiles nothing new."""
    model = make_model(arch)
    prompts = [ids(2, 9, seed=1), ids(2, 13, seed=5)]
    want = [model.generate(p, max_new_tokens=5, do_sample=False) for p in prompts]
    counter = CompileCounterWithBackend("eager")
    model.forward = torch.compile(model.forward, fullgraph=True, backend=counter, dynamic=True)
    got = model.generate(prompts[0], max_new_tokens=5, do_sample=False)
    assert torch.equal(got, want[0])
    compiles = counter.frame_count
    assert torch.equal(model.generate(prompts[1], max_new_tokens=5, do_sample=False), want[1])
    assert counter.frame_count == compiles, "a new prompt length recompiled"


def test_train_with_inductor():
    """The default backend (inductor, C++ on CPU) once: same loss and gradients, no recompile for a new length.
    One layer: inductor's C++ compile of the graph is minutes on a 2-core box otherwise."""
    torch._inductor.config.compile_threads = 1
    model = make_model("retnet", num_hidden_layers=1).train()
    step, counter = _compiled_step(model, "inductor")
    _check_train(model, step, ids(2, 40, seed=2), tol=1e-4)
    compiles = counter.frame_count
    _check_train(model, step, ids(2, 70, seed=3), tol=1e-4)
    assert counter.frame_count == compiles


def _gla_inputs(B=1, T=19, H=2, K=8, V=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen))
    return q, k, v, g


@pytest.mark.parametrize("T", [19, 70])  # recurrent and chunked inside the op
def test_ops_fullgraph_with_optional_arguments(T):
    """The ops under compile with cu_seqlens, initial_state and final states (the optional inputs and output of
    the schema) and without them: outputs and gradients equal eager's."""
    q, k, v, g = _gla_inputs(T=T)
    cu = torch.tensor([0, 7, T])
    h0 = torch.randn(2, 2, 8, 4)
    beta = torch.rand(1, T, 2).clamp_min(0.1)
    gs = F.logsigmoid(torch.randn(1, T, 2))

    def run(q, k, v, g, gs, beta, h0):
        o1, s1 = ops.gated_linear_attention(q, k, v, g, initial_state=h0, output_final_state=True, cu_seqlens=cu)
        o2, s2 = ops.retention(q, k, v)
        o3, s3 = ops.gated_delta_rule(q, k, v, gs, beta, use_qk_l2norm=True, initial_state=h0,
                                      output_final_state=True, cu_seqlens=cu)
        o4, _ = ops.linear_attention(q.sigmoid(), k.sigmoid(), v, normalize=True)
        assert s2 is None
        return (o1.sum() + s1.sum() + o2.sum() + o3.sum() + s3.sum() + o4.sum()), (o1, s1, o2, o3, s3, o4)

    inputs = [x.clone().requires_grad_() for x in (q, k, v, g, gs, beta, h0)]
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager", dynamic=True)
    total, outs = compiled(*inputs)
    total.backward()
    got = [x.grad for x in inputs]
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    want_total, want_outs = run(*inputs)
    want_total.backward()
    for a, b in zip(outs + tuple(got), want_outs + tuple(x.grad for x in inputs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_custom_ops_pass_opcheck():
    """Schema, fake impls (shapes, strides), autograd registration: torch.library's own checks."""
    q, k, v, g = _gla_inputs(T=9)
    req = [x.requires_grad_() for x in (q, k, v, g)]
    h0 = torch.randn(1, 2, 8, 4, requires_grad=True)
    torch.library.opcheck(library.gla, (*req, h0, None, "vector", 0.35, "auto", True, "torch"))
    torch.library.opcheck(library.gla, (q, k, v, None, None, None, "head", 0.35, "chunk", False, "torch"))
    beta = torch.rand(1, 9, 2, requires_grad=True)
    gs = F.logsigmoid(torch.randn(1, 9, 2)).requires_grad_()
    cu = torch.tensor([0, 4, 9])
    h0 = torch.randn(2, 2, 8, 4, requires_grad=True)
    torch.library.opcheck(library.delta, (q, k, v, gs, beta, h0, cu, 0.35, "recurrent", True, "torch"))


def test_value_checks_still_raise_eagerly_and_kernel_config_is_refused_under_compile():
    """Skipped while compiling, the value checks are not lost: an eager call still names the bad argument."""
    q, k, v, g = _gla_inputs()
    with pytest.raises(ValueError, match="g holds log decays"):
        ops.gated_linear_attention(q, k, v, -g)
    with pytest.raises(ValueError, match="q contains NaN"):
        ops.retention(q.clone().fill_(float("nan")), k, v)
    with pytest.raises(ValueError, match="beta holds the delta rule's step sizes"):
        ops.delta_rule(q, k, v, torch.full(q.shape[:3], 3.0))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        ops.gated_linear_attention(q, k, v, g, cu_seqlens=torch.tensor([1, 19]))
    model = make_model("gla")
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(input_ids=torch.tensor([[1, 999]]))
    # shape checks stay on under compile (static), with the same message
    compiled = torch.compile(lambda q, k, v: ops.linear_attention(q, k, v[:, :, :1])[0], backend="eager")
    with pytest.raises(Exception, match="v must be"):
        compiled(q, k, v)
    compiled = torch.compile(lambda q, k, v: ops.linear_attention(q, k, v, kernel_config={"BT": 32})[0],
                             backend="eager")
    with pytest.raises(Exception, match="kernel_config is not supported under torch.compile"):
        compiled(q, k, v)


def test_triton_backend_under_compile_matches_eager(device):
    """The custom ops on the Triton backend (compiled kernels on a GPU, the interpreter on CPU): forward and the
    kernels' backward (gla_backward / delta_backward, A recomputed) equal the eager autograd functions'."""
    q, k, v, g = (x.to(device) for x in _gla_inputs(T=20, K=16, V=16))
    beta = torch.rand(1, 20, 2, device=device).clamp_min(0.1)
    gs = F.logsigmoid(torch.randn(1, 20, 2, device=device))
    h0 = torch.randn(1, 2, 16, 16, device=device)

    def run(q, k, v, g, gs, beta, h0):
        o1, s1 = ops.gated_linear_attention(q, k, v, g, initial_state=h0, output_final_state=True, backend="triton")
        o2, _ = ops.retention(q, k, v, backend="triton", mode="chunk")
        o3, s3 = ops.gated_delta_rule(q, k, v, gs, beta, use_qk_l2norm=True, initial_state=h0,
                                      output_final_state=True, backend="triton")
        return o1.sum() + s1.sum() + o2.sum() + o3.sum() + s3.sum(), (o1, s1, o2, o3, s3)

    inputs = [x.clone().requires_grad_() for x in (q, k, v, g, gs, beta, h0)]
    total, outs = torch.compile(run, fullgraph=True, backend="aot_eager")(*inputs)
    total.backward()
    got = [x.grad for x in inputs]
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    want_total, want_outs = run(*inputs)
    want_total.backward()
    for a, b in zip(outs + tuple(got), want_outs + tuple(x.grad for x in inputs)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
