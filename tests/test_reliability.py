"""Reliability (issue 7): bad input to the models, NaN inputs to the ops, threads, determinism."""
import threading

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import linattn_models
from devices import DEVICE
from linattn_models import ops


@pytest.fixture(scope="module", params=["linear_transformer", "retnet", "gla"])
def model(request):
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(linattn_models.configs_path(request.param, "tiny"))
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_bad_model_inputs(model):
    V = model.config.vocab_size
    x = torch.randint(2, 100, (2, 10))
    cases = [
        (dict(input_ids=torch.full((2, 10), V)), ValueError, "input_ids must lie in"),
        (dict(input_ids=-x), ValueError, "input_ids must lie in"),
        (dict(input_ids=x.float()), TypeError, "input_ids must be an int64"),
        (dict(input_ids=x[0]), ValueError, r"input_ids must be \[batch, seq\]"),
        (dict(input_ids=x[:0]), ValueError, "no tokens"),
        (dict(input_ids=x[:, :0]), ValueError, "no tokens"),
        (dict(input_ids=x, attention_mask=torch.ones(2, 9)), ValueError, "attention_mask"),
        (dict(input_ids=x, attention_mask=torch.ones(2, 10, 10)), ValueError, "attention_mask"),
        (dict(inputs_embeds=torch.randn(2, 10, 3)), ValueError, "inputs_embeds must be"),
        (dict(input_ids=x, inputs_embeds=torch.randn(2, 10, model.config.hidden_size)), ValueError, "exactly one"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            model(**kw)
    assert model(input_ids=x[:, :1]).logits.shape == (2, 1, V)  # T=1 works


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_nan_inputs_are_reported(name):
    x = {n: torch.randn(1, 20, 2, 8) for n in "qkv"}
    x[name][0, 3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=f"{name} contains NaN"):
        ops.retention(x["q"], x["k"], x["v"])


def test_threads_equal_serial(model):
    prompts = [torch.randint(2, 200, (1, 5 + 3 * i)) for i in range(4)]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=model.config.pad_token_id)
    serial = [model.generate(p, **kw) for p in prompts]
    results = [None] * len(prompts)

    def work(i):
        results[i] = model.generate(prompts[i], **kw)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, results):
        assert torch.equal(a, b)


def test_deterministic_training_step():
    """Same seed, same device: identical loss and gradients (the CPU path uses no atomics)."""
    def step():
        torch.manual_seed(123)
        cfg = AutoConfig.from_pretrained(linattn_models.configs_path("gla", "tiny"))
        m = AutoModelForCausalLM.from_config(cfg)
        x = torch.randint(0, cfg.vocab_size, (2, 40))
        loss = m(input_ids=x, labels=x).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]
    (l1, g1), (l2, g2) = step(), step()
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


def test_triton_kernels_are_deterministic():
    """The kernels use no atomics: the same inputs give bitwise-identical outputs and gradients (test device)."""
    def run():
        torch.manual_seed(5)
        q, k, v = (torch.randn(1, 70, 2, 16, device=DEVICE, requires_grad=True) for _ in range(3))
        g = (-torch.rand(1, 70, 2, 16, device=DEVICE)).requires_grad_(True)
        o, s = ops.gated_linear_attention(q, k, v, g, output_final_state=True, backend="triton")
        (o.sum() + s.sum()).backward()
        return [o, s, q.grad, k.grad, v.grad, g.grad]
    assert all(torch.equal(a, b) for a, b in zip(run(), run()))
