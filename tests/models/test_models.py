"""Every registered architecture (tiny configs, CPU): Auto classes, save/load, generation, training."""
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

import linattn_models
from linattn_models.models import CONFIGS, LinearAttentionCache, model_classes, register_all
from linattn_models.models.common import CACHE_OUTPUT_NAME
from devices import ROOT
from model_tester import ARCHS, HYBRIDS, MODELS, VOCAB, arch_of, config_path, make_model, tiny_config

SRC = str(ROOT / "src")


def ids(*shape, seed=1):
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def cache_of(out):
    return out[CACHE_OUTPUT_NAME]


def greedy_by_full_forwards(model, x, n):
    seq = x
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    return seq


# --- registration -------------------------------------------------------------------------------------------
def test_import_is_light_and_registers():
    """`import linattn_models` registers the Auto classes without importing transformers' modeling code, nor
    triton / torch._dynamo unless the transformers Auto classes themselves do (5.17 does, 5.24 does not): Triton's
    interpreter must stay switchable on afterwards, nor transformers' modeling_auto (the model Auto classes: 7-9 s
    of a fresh process on the H200 machine): the model classes go into its mappings when it is imported, and load
    on first use."""
    heavy = '[m for m in ("triton", "torch._dynamo", "transformers.modeling_utils") if m in sys.modules]'
    baseline = f"import sys, transformers.models.auto.modeling_auto; print({heavy})"
    code = f"""
import sys
import linattn_models
print({heavy})
assert "transformers.models.auto.modeling_auto" not in sys.modules  # model classes registered on its import
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.for_model("linattn_gla", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_heads=2)
model = AutoModelForCausalLM.from_config(cfg)
assert type(model) is linattn_models.GLAForCausalLM, type(model)
print("OK")
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]))
    env.pop("TRITON_INTERPRET", None)
    outs = []
    for c in (baseline, code):
        r = subprocess.run([sys.executable, "-c", c], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        outs.append(r.stdout.splitlines())
    assert outs[1][-1] == "OK"
    ours, base = eval(outs[1][0]), eval(outs[0][0])
    assert "transformers.modeling_utils" not in ours and set(ours) <= set(base), (ours, base)


@pytest.mark.parametrize("arch", ARCHS)
def test_registration_and_auto_classes(arch):
    config_cls, model_cls, lm_cls, seq_cls = model_classes(arch)
    assert config_cls.model_type.startswith("linattn_")
    assert config_cls.model_type in linattn_models.models.REGISTERED_MODEL_TYPES
    cfg = AutoConfig.for_model(config_cls.model_type, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                               num_heads=2)
    assert type(cfg) is config_cls
    assert cfg.layer_types == ["linear_attention"] * 2 and cfg.tie_word_embeddings
    assert type(AutoModel.from_config(cfg)) is model_cls
    assert type(AutoModelForCausalLM.from_config(cfg)) is lm_cls
    assert type(AutoModelForSequenceClassification.from_config(cfg)) is seq_cls
    for size in ("tiny", "125m", "370m", "1.3b"):
        c = AutoConfig.from_pretrained(linattn_models.configs_path(arch, size))
        assert type(c) is config_cls and c.num_hidden_layers == len(c.layer_types)
    c = AutoConfig.from_pretrained(linattn_models.configs_path(arch, "370m"))
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size) == (1024, 24, 32000)
    with pytest.raises(ValueError):
        config_cls(num_heads=3, hidden_size=64)  # head dims not divisible


def test_registration_is_idempotent_and_refuses_foreign_types():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    assert sorted(register_all()) == sorted(c.model_type for c in CONFIGS.values())

    class ForeignConfig(transformers.PreTrainedConfig):
        model_type = "linattn_gla"

    saved = CONFIG_MAPPING._extra_content["linattn_gla"]
    CONFIG_MAPPING._extra_content["linattn_gla"] = ForeignConfig
    try:
        with pytest.warns(UserWarning, match="already registered"):
            done = register_all()
        assert "linattn_gla" not in done
        assert CONFIG_MAPPING._extra_content["linattn_gla"] is ForeignConfig
    finally:
        CONFIG_MAPPING._extra_content["linattn_gla"] = saved


# --- save / load --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", MODELS)
def test_save_load_roundtrip(arch, tmp_path):
    model = make_model(arch)
    x = ids(2, 20)
    with torch.no_grad():
        want = model(x).logits
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "linattn_shim.py", "generation_config.json"} <= files
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"] == f"linattn_shim.{type(model).__name__}"
    assert "auto_map" not in model.config.to_dict()  # only written to disk
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(loaded) is type(model)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # tied
    for m in loaded.modules():  # non-persistent buffers rebuilt after meta-device construction
        if isinstance(m, linattn_models.modules.RotaryEmbedding):
            torch.testing.assert_close(m.inv_freq, m.compute_inv_freq(), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, want, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is model_classes(arch_of(arch))[1]
    bf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and bf.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():  # the same as casting the original model
        torch.testing.assert_close(bf(x).logits, model.to(torch.bfloat16)(x).logits, rtol=0, atol=0)
    bf.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_trust_remote_code_without_importing_us(tmp_path):
    """A fresh process that never imports linattn_models loads each checkpoint through its auto_map shim."""
    for arch in MODELS:
        model = make_model(arch)
        x = ids(1, 12)
        with torch.no_grad():
            want = model(x).logits
        model.save_pretrained(tmp_path / arch)
        torch.save({"x": x, "want": want}, tmp_path / f"{arch}.pt")
    code = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoConfig
assert "linattn_models" not in sys.modules
try:
    AutoConfig.from_pretrained({str(tmp_path / ARCHS[0])!r})
    raise SystemExit("loaded an unregistered model type without trust_remote_code")
except ValueError:
    pass
for arch in {MODELS!r}:
    m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + arch, trust_remote_code=True)
    d = torch.load({str(tmp_path)!r} + "/" + arch + ".pt")
    got = m(d["x"]).logits
    assert torch.equal(got, d["want"]), (got - d["want"]).abs().max()
    print("OK", type(m).__module__, type(m).__name__)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    for arch in map(arch_of, MODELS):
        assert f"OK linattn_models.models.{arch}.modeling_{arch}" in r.stdout, r.stdout


# --- generation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", MODELS)
def test_cached_greedy_equals_full_forward_argmax(arch):
    model = make_model(arch)
    x = ids(2, 40)  # > 32 tokens: the prompt runs in chunk mode, decoding in recurrent mode
    out = model.generate(x, max_new_tokens=10, do_sample=False)
    assert torch.equal(out, greedy_by_full_forwards(model, x, 10))
    # same with the cache off
    assert torch.equal(model.generate(x, max_new_tokens=10, do_sample=False, use_cache=False), out)


@pytest.mark.parametrize("arch", MODELS)
def test_left_padded_batch_equals_rows_alone(arch):
    model = make_model(arch)
    a, b, c = ids(1, 30, seed=2), ids(1, 41, seed=3), ids(1, 7, seed=4)
    T = 41
    rows = [a, b, c]
    batch = torch.full((3, T), model.config.pad_token_id)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, T - r.shape[1]:] = r[0]
        mask[i, T - r.shape[1]:] = 1
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        for i, r in enumerate(rows):
            torch.testing.assert_close(logits[i, T - r.shape[1]:], model(r).logits[0], rtol=1e-5, atol=1e-5)
    out = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    for i, r in enumerate(rows):
        alone = model.generate(r, max_new_tokens=8, do_sample=False)
        assert torch.equal(out[i, T - r.shape[1]:], alone[0])


@pytest.mark.parametrize("arch", MODELS)
def test_beam_search_and_sampling(arch):
    model = make_model(arch)
    x = ids(2, 20)
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    beam = model.generate(x, **kw)
    assert beam.shape == (4, 26)
    # reorder_cache is right: the cached beam search equals the cache-free one
    assert torch.equal(beam, model.generate(x, use_cache=False, **kw))
    assert torch.equal(model.generate(x, max_new_tokens=6, num_beams=1, do_sample=False),
                       model.generate(x, max_new_tokens=6, do_sample=False))
    torch.manual_seed(0)
    s1 = model.generate(x, max_new_tokens=6, do_sample=True, top_k=20, num_return_sequences=3)
    torch.manual_seed(0)
    s2 = model.generate(x, max_new_tokens=6, do_sample=True, top_k=20, num_return_sequences=3, use_cache=False)
    assert s1.shape == (6, 26) and torch.equal(s1, s2)
    bs = model.generate(x, max_new_tokens=4, num_beams=2, do_sample=True)
    assert bs.shape == (2, 24)


@pytest.mark.parametrize("arch", MODELS)
def test_beam_search_left_padded_equals_rows_alone(arch):
    model = make_model(arch)
    a, b = ids(1, 12, seed=3), ids(1, 20, seed=4)
    batch = torch.full((2, 20), model.config.pad_token_id)
    mask = torch.zeros(2, 20, dtype=torch.long)
    batch[0, 8:], mask[0, 8:] = a[0], 1
    batch[1], mask[1] = b[0], 1
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
    out = model.generate(batch, attention_mask=mask, **kw)
    assert torch.equal(out[:2, 8:], model.generate(a, **kw))
    assert torch.equal(out[2:], model.generate(b, **kw))


@pytest.mark.parametrize("arch", MODELS)
def test_continue_from_returned_cache(arch):
    model = make_model(arch)
    x = ids(2, 25)
    once = model.generate(x, max_new_tokens=12, do_sample=False)
    first = model.generate(x, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    cache = cache_of(first)
    assert isinstance(cache, LinearAttentionCache) and cache.get_seq_length() == 29
    # full sequence with the cache: generate slices to the unprocessed token
    more = model.generate(first.sequences, max_new_tokens=7, do_sample=False, **{CACHE_OUTPUT_NAME: cache})
    assert torch.equal(more, once)
    # by hand: the forward with a cache continues the state
    with torch.no_grad():
        out = model(x[:, :15], use_cache=True)
        out2 = model(x[:, 15:], **{CACHE_OUTPUT_NAME: cache_of(out)}, use_cache=True)
        torch.testing.assert_close(out2.logits, model(x).logits[:, 15:], rtol=1e-5, atol=1e-5)
    # every accepted cache keyword works
    for name in ("cache", "past_key_values", "cache_params"):
        with torch.no_grad():
            c = model(x[:, :15], use_cache=True)[CACHE_OUTPUT_NAME]
            o = model(x[:, 15:], use_cache=True, **{name: c})
        torch.testing.assert_close(o.logits, out2.logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", MODELS)
def test_cache_is_constant_size(arch):
    """The linear layers' states do not grow; a hybrid's attention KV grows by one column per token."""
    model = make_model(arch)
    sizes, kv = [], []
    for T in (8, 64, 200):
        with torch.no_grad():
            c = cache_of(model(ids(1, T), use_cache=True))
        sizes.append(c.nbytes(kv=False))
        kv.append(c.nbytes() - c.nbytes(kv=False))
    assert sizes[0] == sizes[1] == sizes[2] > 0
    if arch in HYBRIDS:
        assert kv[1] == 8 * kv[0] and kv[2] == 25 * kv[0] > 0
    else:
        assert kv == [0, 0, 0]


@pytest.mark.parametrize("arch", MODELS)
def test_logits_to_keep(arch):
    model = make_model(arch)
    x = ids(2, 10)
    with torch.no_grad():
        full = model(x).logits
        torch.testing.assert_close(model(x, logits_to_keep=1).logits, full[:, -1:])
        torch.testing.assert_close(model(x, logits_to_keep=torch.tensor([2, 5])).logits, full[:, [2, 5]])


@pytest.mark.parametrize("arch", MODELS)
def test_chunk_and_recurrent_modes_agree(arch):
    model = make_model(arch)
    x = ids(2, 70)
    mask = torch.ones(2, 70, dtype=torch.long)
    mask[1, :13] = 0
    out = {}
    for mode in ("chunk", "recurrent", "auto"):
        model.set_attn_mode(mode)
        with torch.no_grad():
            out[mode] = model(x, attention_mask=mask).logits
    torch.testing.assert_close(out["chunk"], out["recurrent"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["auto"], out["chunk"], rtol=0, atol=0)
    assert model.config.attn_mode == "auto"
    with pytest.raises(ValueError):
        model.set_attn_mode("fast")


@pytest.mark.parametrize("arch", MODELS)
def test_pipeline_text_generation(arch, tmp_path):
    from transformers import pipeline

    from linattn_models.tokenizer import load_tokenizer
    tok = load_tokenizer()
    cfg = AutoConfig.from_pretrained(config_path(arch))
    assert cfg.vocab_size == len(tok) and cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    out = pipe(["def main():", "import os\nimport"], max_new_tokens=8, do_sample=False, batch_size=2)
    assert isinstance(out[0][0]["generated_text"], str) and out[0][0]["generated_text"].startswith("def main():")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    pipe = pipeline("text-generation", model=str(tmp_path))
    out2 = pipe("def main():", max_new_tokens=8, do_sample=False, num_beams=2, num_return_sequences=2)
    assert len(out2) == 2 and all(o["generated_text"].startswith("def main():") for o in out2)


# --- training -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", MODELS)
def test_loss_labels_and_padding(arch):
    model = make_model(arch)
    x = ids(2, 16)
    labels = x.clone()
    labels[:, :4] = -100
    out = model(x, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, VOCAB)
    want = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)
    n = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(model(x, labels=labels, num_items_in_batch=2 * n).loss, want / 2)
    # right padding (training batches): real tokens' logits equal the rows run alone
    mask = torch.ones_like(x)
    mask[1, 10:] = 0
    with torch.no_grad():
        padded = model(x, attention_mask=mask).logits
        torch.testing.assert_close(padded[1, :10], model(x[1:, :10]).logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", MODELS)
def test_gradient_checkpointing_same_gradients(arch):
    x = ids(2, 40)
    mask = torch.ones_like(x)
    mask[0, :5] = 0
    grads = []
    for ckpt in (False, True):
        model = make_model(arch).train()
        if ckpt:
            model.gradient_checkpointing_enable() if not hasattr(model, "activation_checkpointing_enable") \
                else model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        loss = model(x, attention_mask=mask, labels=x).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("arch", MODELS)
def test_trainer_lowers_loss(arch, tmp_path):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    g = torch.Generator().manual_seed(0)
    # a learnable pattern: repeated short random motifs, right-padded to varying lengths
    rows = []
    for i in range(32):
        motif = torch.randint(3, 40, (5,), generator=g).tolist()
        n = 20 + (i % 4) * 5
        rows.append({"input_ids": (motif * 10)[:n]})
    ds = rows  # a plain list is a map-style dataset (no `datasets` needed: a minimal GPU image lacks it)

    class Tok:  # the collator only pads
        pad_token_id = 1
        padding_side = "right"

        def pad(self, features, return_tensors="pt", **kw):
            T = max(len(f["input_ids"]) for f in features)
            ii = torch.full((len(features), T), 1)
            am = torch.zeros(len(features), T, dtype=torch.long)
            for j, f in enumerate(features):
                ii[j, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
                am[j, :len(f["input_ids"])] = 1
            return {"input_ids": ii, "attention_mask": am}

    collator = DataCollatorForLanguageModeling(Tok(), mlm=False)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=1e-2,
                             max_steps=24, logging_steps=4, report_to=[], use_cpu=True, save_strategy="no",
                             gradient_accumulation_steps=1, warmup_steps=0, lr_scheduler_type="constant",
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("arch", MODELS)
def test_autocast_and_accelerate(arch):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)  # the Trainer tests initialised it without mixed precision
    model = make_model(arch).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    model, opt = acc.prepare(model, opt)
    x = ids(2, 40)
    losses = []
    for _ in range(3):
        loss = model(x, labels=x).loss
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(map(lambda v: v == v and abs(v) < 1e4, losses)) and losses[-1] < losses[0]
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.isfinite(model(x).logits).all()


@pytest.mark.parametrize("arch", MODELS)
def test_sequence_classification(arch):
    torch.manual_seed(0)
    cfg = tiny_config(arch, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    a, b = ids(1, 9, seed=5), ids(1, 14, seed=6)
    batch = torch.full((2, 14), 1)
    batch[0, 5:], batch[1] = a[0], b[0]
    mask = (torch.arange(14) >= torch.tensor([[5], [0]])).long()
    with torch.no_grad():
        out = model(batch, attention_mask=mask, labels=torch.tensor([0, 2]))
        torch.testing.assert_close(out.logits[0], model(a).logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits[1], model(b).logits[0], rtol=1e-5, atol=1e-5)
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
