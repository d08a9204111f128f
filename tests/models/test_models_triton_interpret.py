"""The models on the Triton kernels (compiled on a GPU test device, Triton's interpreter on CPU), fp32, against
the torch backend on the same device: a padded batch (packed varlen chunk calls with initial states), its
gradients, and cached decoding steps."""
import pytest
import torch

import linattn_models
from devices import DEVICE
from linattn_models.models import CONFIGS
from linattn_models.models.common import CACHE_OUTPUT_NAME

try:
    from linattn_models.ops.dispatch import triton_ops
    triton_ops()
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="triton (kernels) not importable")


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_triton_backend_matches_torch_backend(arch, monkeypatch, poisoned_kernels):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(linattn_models.configs_path(arch, "tiny"), vocab_size=128, num_hidden_layers=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(DEVICE)
    x = torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = torch.ones_like(x)
    mask[1, :7] = 0
    res = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("LINATTN_BACKEND", backend)
        model.zero_grad()
        model.train()
        out = model(x, attention_mask=mask, labels=x)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.eval()
        with torch.no_grad():
            c = model(x[:, :37], attention_mask=mask[:, :37], use_cache=True)[CACHE_OUTPUT_NAME]
            steps = torch.cat([model(x[:, t:t + 1], use_cache=True, **{CACHE_OUTPUT_NAME: c}).logits
                               for t in range(37, 40)], 1)
        res[backend] = (out.logits.detach(), grads, steps)
    (lt, gt, st), (lr, gr, sr) = res["torch"], res["triton"]
    assert rel(lr, lt) < 1e-4
    assert max(rel(gr[n], gt[n]) for n in gt) < 1e-4
    assert rel(sr, st) < 1e-4
