"""The five registered architectures. Importing this package registers them with the transformers Auto
classes (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification).

Model types: linattn_linear_transformer, linattn_retnet, linattn_gla, linattn_deltanet, linattn_gated_deltanet
(distinct from fla's retnet / gla / linear_attn / delta_net / gated_deltanet). A model type already registered by another package is left alone, with a warning.

Usage (transformers 5.17 and 5.24):

    import linattn_models
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(linattn_models.configs_path("gla", "370m"))   # or any size / arch
    model = AutoModelForCausalLM.from_config(config)
    out = model.generate(input_ids, attention_mask=mask, max_new_tokens=32)       # greedy/sample/beam, padding
    model.save_pretrained(d)   # also writes linattn_shim.py + auto_map: loads with trust_remote_code=True
    model.set_attn_mode("recurrent")  # or "chunk"; "auto" (default) picks recurrent for <= 32 tokens

Registration is cheap: the configs are registered as classes, the model classes as stand-ins that import the
modeling code on first use (then the real classes replace them in the Auto mappings): linattn_models/_lazy.py
says why.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from .._lazy import lazy_exports
from .common import LinAttnConfig
from .deltanet import DeltaNetConfig
from .gated_deltanet import GatedDeltaNetConfig
from .gla import GLAConfig
from .linear_transformer import LinearTransformerConfig
from .retnet import RetNetConfig

CONFIGS = {"linear_transformer": LinearTransformerConfig, "retnet": RetNetConfig, "gla": GLAConfig,
           "deltanet": DeltaNetConfig, "gated_deltanet": GatedDeltaNetConfig}
_HEADS = ("Model", "ForCausalLM", "ForSequenceClassification")
_AUTO = ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")
_MODEL_NAMES = {f"{cfg.class_prefix}{h}": arch for arch, cfg in CONFIGS.items() for h in _HEADS}


def model_classes(arch):
    """(Config, Model, ForCausalLM, ForSequenceClassification) of one architecture (imports the modeling code)."""
    cfg = CONFIGS[arch]
    mod = importlib.import_module(f".{arch}.modeling_{arch}", __name__)
    return (cfg,) + tuple(getattr(mod, cfg.class_prefix + h) for h in _HEADS)


class _LazyModelClass:
    """Stands in an Auto mapping for a model class until first use; forwards attribute access and calls to
    the real class (importing it, and putting the real classes into the mappings)."""

    def __init__(self, arch, head):
        self._arch, self._head = arch, head

    def _resolve(self):
        register_all(materialize=True)
        return model_classes(self._arch)[1 + _HEADS.index(self._head)]

    def __getattr__(self, name):
        if name.startswith("__") and name not in ("__name__", "__qualname__", "__doc__"):
            raise AttributeError(name)
        return getattr(self._resolve(), name)

    def __call__(self, *args, **kwargs):
        return self._resolve()(*args, **kwargs)

    def __repr__(self):
        return f"<lazy {CONFIGS[self._arch].class_prefix}{self._head}>"


def _same_class(a, b):
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


_MODELING_AUTO = "transformers.models.auto.modeling_auto"  # the model Auto classes' module (heavy: see below)
_PENDING = []  # architectures whose model classes wait for _MODELING_AUTO's import (_AfterModelingAuto)


def _register_models(archs, materialize):
    import transformers
    for arch in archs:
        real = materialize or f"{__name__}.{arch}.modeling_{arch}" in sys.modules  # already imported: no stand-ins
        classes = model_classes(arch)[1:] if real else [_LazyModelClass(arch, h) for h in _HEADS]
        for auto_name, cls in zip(_AUTO, classes):
            # the mapping's own register: the Auto class's one would inspect (and so import) a stand-in
            getattr(transformers, auto_name)._model_mapping.register(CONFIGS[arch], cls, exist_ok=True)


class _AfterModelingAuto(importlib.abc.MetaPathFinder):
    """A one-shot import hook: once transformers' modeling_auto has run, the pending model classes go into its
    mappings. Why: that module imports auto_factory and through it torch.distributed.tensor, 7-9 of the 9-12 s of
    `import linattn_models` in a fresh process on the H200 machine (session 10, -X importtime), which an ops-only
    user never needs; every Auto model class lookup imports it first, so none can miss the registration."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODELING_AUTO:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _flush_pending()
            spec.loader.exec_module = exec_module
        return spec


def _flush_pending():
    pending, _PENDING[:] = list(_PENDING), []
    _register_models(pending, materialize=False)


def register_all(materialize=False):
    """Register every architecture with the Auto classes (idempotent). Returns the model types registered.

    The configs go into AutoConfig at once. The model classes: materialize=True registers the real classes (and
    imports them); else stand-ins, and only once transformers' modeling_auto is imported (at once if it is,
    else by the import hook _AfterModelingAuto)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    done, mine = [], []
    for arch, config_cls in CONFIGS.items():
        model_type = config_cls.model_type
        if model_type in CONFIG_MAPPING:
            other = CONFIG_MAPPING[model_type]
            if not _same_class(other, config_cls):
                warnings.warn(f"linattn_models: model type {model_type!r} is already registered by "
                              f"{other.__module__}.{other.__qualname__}; not registering {config_cls.__name__} "
                              f"over it (load our checkpoints with {config_cls.class_prefix}ForCausalLM."
                              f"from_pretrained)", stacklevel=2)
                continue
        transformers.AutoConfig.register(model_type, config_cls, exist_ok=True)
        mine.append(arch)
        done.append(model_type)
    if materialize or _MODELING_AUTO in sys.modules:
        _PENDING[:] = [c for c in _PENDING if c not in mine]
        _register_models(mine, materialize)
    else:
        _PENDING[:] = list(dict.fromkeys(_PENDING + mine))
        if not any(isinstance(f, _AfterModelingAuto) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterModelingAuto())
    return done


def register_fla_placeholders():
    """Under fla's model types (FLA_MODEL_TYPES), when still free, a config that refuses to load and
    says to convert (FlaCheckpointConfig). Returns the types taken."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from .common.configuration_common import FLA_MODEL_TYPES, FlaCheckpointConfig

    taken = []
    for model_type in FLA_MODEL_TYPES:
        if model_type not in CONFIG_MAPPING:
            cls = type(f"FlaCheckpointConfig_{model_type}", (FlaCheckpointConfig,), {"model_type": model_type})
            transformers.AutoConfig.register(model_type, cls, exist_ok=True)
            taken.append(model_type)
    return taken


REGISTERED_MODEL_TYPES = register_all()
register_fla_placeholders()

__all__ = ["CONFIGS", "REGISTERED_MODEL_TYPES", "model_classes", "register_all", "LinAttnConfig",
           "LinearAttentionCache", "LinearTransformerConfig", "RetNetConfig", "GLAConfig",
           "DeltaNetConfig", "GatedDeltaNetConfig", *_MODEL_NAMES]


_LAZY = {name: f".{arch}" for name, arch in _MODEL_NAMES.items()}
_LAZY["LinearAttentionCache"] = ".common.cache"
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, before=lambda: register_all(materialize=True))
