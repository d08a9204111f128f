"""The one model tester: tiny models of every registered architecture (the next ones included: ARCHS is read
from the registry), built the same way for every model test."""
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import linattn_models
from linattn_models.models import CONFIGS

ARCHS = list(CONFIGS)
VOCAB = 256


def tiny_config(arch, **overrides):
    """configs/<arch>/tiny.json with a 256-token vocab and any field overridden."""
    cfg = AutoConfig.from_pretrained(linattn_models.configs_path(arch, "tiny"))
    cfg.vocab_size = VOCAB
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_model(arch, device="cpu", dtype=torch.float32, seed=0, **overrides):
    """A tiny causal LM in eval mode with larger random weights than the init (so that tokens differ between
    positions) and no early stop at EOS (so generate compares with plain argmax loops)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.normal_(0, 0.1)
    model.generation_config.eos_token_id = None
    return model.to(device=device, dtype=dtype).eval()


def ids(*shape, seed=1, device="cpu"):
    """Random token ids (>= 3: clear of the special ids) of the given shape."""
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed)).to(device)
