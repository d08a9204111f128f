"""The model of a ``linattn-train`` run: its config (--arch/--size, --config or --init-from, with --set
overrides), matched to the tokenizer, and the model built from it."""
from __future__ import annotations

import json
from pathlib import Path


def resolve_config_path(arch: str, size: str) -> Path:
    """``configs/<arch>/<size>.json`` through linattn_models.configs_path (package, checkout, ./configs)."""
    import linattn_models
    try:
        return Path(linattn_models.configs_path(arch, size.lower()))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no config for --arch {arch} --size {size} ({e}); "
                                "pass --config path/to/config.json") from None


def _parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def config_fields(config) -> tuple[set[str], list[str]]:
    """The names ``--set`` accepts for this config (its fields, aliases and constructor arguments), and
    the user-facing ones to show (those in its config.json, and aliases)."""
    import inspect

    cls = type(config)
    aliases = set(getattr(cls, "attribute_map", None) or {})
    shown = {k for k in config.to_dict() if not k.startswith("_")} - {"transformers_version", "model_type"}
    valid = shown | aliases | set(getattr(cls, "__dataclass_fields__", {}))
    try:
        valid |= {n for n, p in inspect.signature(cls.__init__).parameters.items()
                  if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    except (TypeError, ValueError):
        pass
    return valid, sorted(shown | aliases)


def _parse_overrides(base, overrides: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict; a key that is not a field of ``base`` raises UsageError naming it."""
    import difflib

    from linattn_models.cli import UsageError

    upd = {}
    valid, shown = config_fields(base)
    for kv in overrides:
        k, sep, v = kv.partition("=")
        k = k.strip()
        if not sep:
            raise UsageError(f"--set expects KEY=VALUE, got {kv!r}")
        if k not in valid:
            close = difflib.get_close_matches(k, shown, n=1)
            raise UsageError(f"--set {kv}: {base.model_type} has no config field {k!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; its fields: {', '.join(shown)}")
        upd[k] = _parse_value(v)
    return upd


def build_config(cfg_src: str, overrides: list[str]):
    """Load a config (JSON file or checkpoint dir) with ``KEY=VALUE`` overrides applied at construction,
    so that fields derived from others (layer_types, head dims, intermediate size) are derived again.
    A key that is not a field of the config raises UsageError naming it (and the fields there are)."""
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(cfg_src)
    if not overrides:
        return base
    with open(Path(cfg_src) / "config.json" if Path(cfg_src).is_dir() else cfg_src, encoding="utf-8") as f:
        d = json.load(f)
    upd = _parse_overrides(base, overrides)
    # Fields derived from others in __post_init__ (layer_types, head dims, intermediate size, the attention
    # layers' head counts): drop the stored values so that they are derived again from the new ones. (Other
    # fields that default to None, such as attn_layers and attn_window, are settings: they are kept.)
    from linattn_models.models.common.configuration_common import DERIVED_SIZES
    for k in list(d):
        if k not in upd and k in DERIVED_SIZES + ("layer_types",):
            d.pop(k)
    d.update(upd)
    model_type = d.pop("model_type", base.model_type)
    return AutoConfig.for_model(model_type, **d)


def load_config(args, overrides: list[str], tokenizer):
    """The run's config (from --init-from, --config, or --arch/--size) with the --set overrides, its vocab
    and special tokens set to the tokenizer's. Returns (config, where it came from)."""
    from linattn_models.cli import UsageError

    if args.init_from:
        cfg_src = args.init_from
    elif args.config:
        cfg_src = args.config
    else:
        cfg_src = str(resolve_config_path(args.arch, args.size))
    config = build_config(cfg_src, overrides)
    if getattr(config, "vocab_size", None) != len(tokenizer):
        if args.init_from:
            raise UsageError(f"--init-from {args.init_from} has vocab_size {config.vocab_size} but the tokenizer "
                             f"has {len(tokenizer)} tokens; pass the checkpoint's tokenizer with --tokenizer")
        config.vocab_size = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    return config, cfg_src


def build_model(args, config, cfg_src: str, say):
    """The model: the --init-from weights, or freshly initialized from ``config``. Prints its size;
    returns (model, parameter count)."""
    from transformers import AutoModelForCausalLM

    if args.init_from:
        model = AutoModelForCausalLM.from_pretrained(args.init_from, config=config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {config.model_type} from {cfg_src}, {n_params / 1e6:.2f} M parameters "
        f"(hidden {getattr(config, 'hidden_size', '?')}, layers {getattr(config, 'num_hidden_layers', '?')}, "
        f"vocab {config.vocab_size})")
    return model, n_params
