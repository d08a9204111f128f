"""Reliability (issue 7): bad input to the models, NaN inputs to the ops, threads, determinism."""
import threading

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import linattn_models
from devices import DEVICE
from linattn_models import ops
from linattn_models.models.common import CACHE_OUTPUT_NAME
from model_tester import ARCHS, MODELS, config_path


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(config_path(request.param))
    return AutoModelForCausalLM.from_config(cfg).eval()


def pads(batch, T=10):
    """A [batch, T] mask with left padding in the first row."""
    mask = torch.ones(batch, T, dtype=torch.long)
    mask[0, :3] = 0
    return mask


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
        # another batch size, with pads (which would pack the wrong rows) or without
        (dict(input_ids=x, attention_mask=pads(1)), ValueError,
         r"attention_mask has shape \(1, 10\) but input_ids has shape \(2, 10\)"),
        (dict(input_ids=x, attention_mask=pads(3)), ValueError,
         r"attention_mask has shape \(3, 10\) but input_ids has shape \(2, 10\)"),
        (dict(input_ids=x, attention_mask=torch.ones(3, 10)), ValueError, r"attention_mask has shape \(3, 10\)"),
        (dict(inputs_embeds=torch.randn(2, 10, model.config.hidden_size), attention_mask=pads(1)), ValueError,
         r"attention_mask has shape \(1, 10\) but inputs_embeds has shape \(2, 10, 64\)"),
        # labels: [T, B] has as many elements as [B, T]; ids past the vocabulary
        (dict(input_ids=x[:, :6], labels=x[:, :6].T.contiguous()), ValueError,
         r"labels has shape \(6, 2\) but input_ids has shape \(2, 6\): labels must be \[batch, seq\] = \(2, 6\)"),
        (dict(input_ids=x, labels=x[:, :9]), ValueError, r"labels has shape \(2, 9\)"),
        (dict(input_ids=x, labels=torch.where(x > 50, V, x)), ValueError,
         rf"labels must lie in \[0, vocab_size={V}\) or be ignore_index=-100"),
        (dict(input_ids=x, labels=torch.full((2, 10), -1)), ValueError, "labels must lie in"),
        (dict(input_ids=x, labels=x.float()), TypeError, "labels must be an int64"),
        # a cache of another batch size (from an earlier call)
        (dict(input_ids=x, cache=model(input_ids=x[:1, :4], use_cache=True)[CACHE_OUTPUT_NAME]), ValueError,
         "the cache holds states for batch size 1 but the input has batch size 2"),
        (dict(input_ids=x[:, :1], cache=model(input_ids=torch.cat([x, x])[:3], use_cache=True)[CACHE_OUTPUT_NAME]),
         ValueError, "the cache holds states for batch size 3 but the input has batch size 2"),
        (dict(inputs_embeds=torch.randn(2, 10, 3)), ValueError, "inputs_embeds must be"),
        (dict(input_ids=x, inputs_embeds=torch.randn(2, 10, model.config.hidden_size)), ValueError, "exactly one"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            model(**kw)
    assert model(input_ids=x[:, :1]).logits.shape == (2, 1, V)  # T=1 works
    # the valid forms still work: labels with ignored positions, a longer mask (generate's), a matching cache
    labels = x.masked_fill(x > 50, -100)
    assert torch.isfinite(model(input_ids=x, labels=labels).loss)
    assert model(input_ids=x, attention_mask=torch.cat([torch.ones(2, 3), pads(2)], 1)).logits.shape == (2, 10, V)
    cache = model(input_ids=x, use_cache=True)[CACHE_OUTPUT_NAME]
    assert model(input_ids=x[:, :1], cache=cache).logits.shape == (2, 1, V)
    with pytest.raises(ValueError, match="the cache holds states for batch size 2 but the input has batch size 1"):
        model.generate(x[:1], cache=cache, max_new_tokens=2)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", 0, "hidden_size must be a positive integer, got 0"),
    ("hidden_size", -64, "hidden_size must be a positive integer, got -64"),
    ("num_hidden_layers", 0, r"num_hidden_layers must be an integer >= 1, got 0"),
    ("num_heads", 3, "num_heads = 3 must divide hidden_size = 64"),
    ("num_heads", 0, "num_heads must be a positive integer, got 0"),
    ("vocab_size", 0, "vocab_size must be a positive integer, got 0"),
    ("rms_norm_eps", 0.0, "rms_norm_eps must be a finite number > 0, got 0.0"),
    ("rms_norm_eps", -1e-6, "rms_norm_eps must be a finite number > 0"),
    ("intermediate_size", 0, "intermediate_size must be a positive integer, got 0"),
    ("head_v_dim", -1, "head_v_dim must be a positive integer, got -1"),
])
def test_invalid_config_is_refused_when_made(arch, field, value, match):
    config_cls = linattn_models.models.CONFIGS[arch]
    base = dict(hidden_size=64, num_heads=4, num_hidden_layers=1, vocab_size=100)
    with pytest.raises(ValueError, match=match):
        config_cls(**dict(base, **{field: value}))
    with pytest.raises(ValueError, match=match):  # the from_pretrained path: kwargs set after __init__
        config_cls.from_dict(config_cls(**base).to_dict(), **{field: value})


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
