"""The one model tester: tiny models of every registered architecture (the next ones included: ARCHS is read
from the registry), built the same way for every model test.

MODELS adds hybrid stacks (config field attn_layers) to ARCHS: "<arch>-hybrid" is configs/<arch>/tiny-hybrid.json
(4 layers, layer 3 softmax attention with grouped-query heads), plus the overrides in HYBRIDS (gated_deltanet's
adds a sliding window shorter than the tests' prompts). `arch_of(name)` gives the registered architecture."""
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import linattn_models
from linattn_models.models import CONFIGS

ARCHS = list(CONFIGS)
HYBRIDS = {"gla-hybrid": {}, "gated_deltanet-hybrid": {"attn_window": 12}}
MODELS = ARCHS + list(HYBRIDS)
VOCAB = 256


def arch_of(name):
    """The registered architecture of a MODELS entry ("gla-hybrid" -> "gla")."""
    return name[:-len("-hybrid")] if name in HYBRIDS else name


def config_path(name, size="tiny"):
    """configs/<arch>/<size>.json, or <size>-hybrid.json for a hybrid entry of MODELS."""
    return linattn_models.configs_path(arch_of(name), size + ("-hybrid" if name in HYBRIDS else ""))


def tiny_config(arch, **overrides):
    """configs/<arch>/tiny.json (tiny-hybrid.json plus HYBRIDS[arch] for a hybrid entry) with a 256-token vocab
    and any field overridden."""
    cfg = AutoConfig.from_pretrained(config_path(arch))
    cfg.vocab_size = VOCAB
    for k, v in {**HYBRIDS.get(arch, {}), **overrides}.items():
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
