"""linear_recomputing_input: same values and gradients as linear(fn(*inputs)), with fn's output not kept."""
import pytest
import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM

import linattn_models
import linattn_models.modules.recompute as rc
from linattn_models.modules import linear_recomputing_input
from model_tester import ARCHS


def _grads(model, x, autocast=False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("autocast", [False, True])
def test_models_same_gradients_with_and_without_recompute(arch, autocast, monkeypatch):
    """Every parameter's gradient (the gated norm's weight, passed as an input, included) equals the plain
    path's: float64 exactly, bf16 autocast to bf16 rounding; and the recompute path really ran."""
    cfg = AutoConfig.from_pretrained(linattn_models.configs_path(arch, "tiny"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    if not autocast:
        model = model.double()
    x = torch.randint(0, cfg.vocab_size, (2, 37))
    calls = []
    fwd = rc._LinearRecompute.forward
    monkeypatch.setattr(rc._LinearRecompute, "forward", staticmethod(lambda ctx, *a: calls.append(1) or fwd(ctx, *a)))
    l1, g1 = _grads(model, x, autocast)
    assert len(calls) == cfg.num_hidden_layers * (1 if arch == "linear_transformer" else 2)
    monkeypatch.setattr(rc._LinearRecompute, "apply", lambda fn, w, *xs: torch.nn.functional.linear(fn(*xs), w))
    l2, g2 = _grads(model, x, autocast)
    assert g1.keys() == g2.keys()
    tol = 2e-2 if autocast else 1e-12
    assert abs(l1 - l2) <= tol * abs(l2)
    for n in g1:
        err = ((g1[n] - g2[n]).norm() / g2[n].norm().clamp_min(1e-30)).item()
        assert err <= tol, (n, err)


def test_falls_back_for_layers_that_must_see_their_input():
    lin = nn.Linear(4, 3, bias=False)
    seen = []
    lin.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = torch.randn(2, 4, requires_grad=True)
    y = linear_recomputing_input(lin, torch.sin, x)
    assert len(seen) == 1 and torch.allclose(seen[0], torch.sin(x))
    assert torch.allclose(y, torch.sin(x) @ lin.weight.t())
    biased = nn.Linear(4, 3)
    assert torch.allclose(linear_recomputing_input(biased, torch.sin, x), biased(torch.sin(x)))
