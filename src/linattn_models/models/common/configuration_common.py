"""The configuration fields shared by the three architectures (a transformers 5 dataclass config).

Each architecture subclasses `LinAttnConfig`, sets `model_type` and `mixer` and adds its mixer's fields.
Head dims: `head_k_dim` / `head_v_dim`, or derived as hidden_size * expand_k (expand_v) / num_heads.
Derived sizes (head dims, intermediate_size left None) are computed when read, so changing hidden_size or
num_heads later (from_pretrained(..., num_heads=2), setattr) re-derives them; a value equal to its derivation
counts as derived (configs saved before derived sizes were tracked write them out).
Sizes are checked (`check_sizes`) when a config is made, after from_pretrained's overrides and when a model is
built, each error naming the field.
Hybrid stacks: `attn_layers` turns chosen layers into softmax attention (layers/attention.py), with
`attn_num_heads` / `attn_num_kv_heads` (derived like the head dims: None follows num_heads / attn_num_heads),
`attn_window` and `attn_rope_theta`; `layer_types` is derived from them ("linear_attention", "full_attention",
"sliding_attention" per layer).
`save_pretrained` also writes `linattn_shim.py` next to config.json and an `auto_map` pointing to it, so
`AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` works without importing us first.
"""
import math
import os

from transformers import PreTrainedConfig

from ...ops.validate import ATTN_MODES

SHIM_MODULE = "linattn_shim"
# flash-linear-attention's model types for the same architectures: their checkpoints need a conversion
FLA_MODEL_TYPES = ("gla", "retnet", "linear_attn", "delta_net", "gated_deltanet")
# sizes derived from others when None: stored as None and computed on read (see __getattribute__)
DERIVED_SIZES = ("head_k_dim", "head_v_dim", "intermediate_size", "attn_num_heads", "attn_num_kv_heads")
# the values layer_types may hold (derived from attn_layers / attn_window, never set on its own)
LAYER_TYPES = ("linear_attention", "full_attention", "sliding_attention")


def fla_checkpoint_message(model_type, path=None):
    src = path if path is not None else "<fla_checkpoint_dir>"
    return (f"{src if path is not None else 'this config'} is a flash-linear-attention (fla) checkpoint (model_type "
            f"{model_type!r}), not a linattn_models one. Convert it once, then load the result:\n"
            f"    python -m linattn_models.convert {src} <dst_dir>\n"
            f"(or scripts/convert_fla.py, or linattn_models.convert_fla({str(src)!r}, <dst_dir>)); "
            f"to run it with fla instead, `import fla` first.")


class FlaCheckpointConfig(PreTrainedConfig):
    """Registered under fla's model types when fla has not registered them (see models/__init__.py), so that
    AutoConfig / AutoModel* .from_pretrained on an fla checkpoint says how to convert it instead of
    'unrecognized model type'. fla registers its own configs with exist_ok=True, so `import fla` later
    replaces these."""

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        raise ValueError(fla_checkpoint_message(cls.model_type))


class LinAttnConfig(PreTrainedConfig):
    """The fields every architecture shares (a transformers config: `from_pretrained`, `save_pretrained`,
    `AutoConfig.for_model(model_type, **fields)`).

    Args:
        vocab_size, hidden_size, num_hidden_layers: the usual sizes (each > 0).
        num_heads: heads of the token mixer; must divide hidden_size, unless the head dims are set (or
            derived exactly from expand_k, expand_v) (alias num_attention_heads).
        head_k_dim, head_v_dim: per-head key / value widths; None derives hidden_size * expand_k (expand_v) /
            num_heads when read, so overriding hidden_size or num_heads re-derives them.
        expand_k, expand_v: the key / value width relative to hidden_size when the head dims are derived.
        intermediate_size: the gated MLP's width; None derives about 8/3 hidden_size (rounded up to 256).
        hidden_act: the MLP's activation ("silu": SwiGLU).
        use_short_conv, conv_size: a short causal depthwise conv (with SiLU) on q, k, v, of `conv_size` taps.
        attn_mode: "auto" (recurrent up to 32 tokens, else chunked), "chunk" or "recurrent".
        rms_norm_eps: epsilon of every RMSNorm (> 0).
        initializer_range: std of the normal init of the linear and embedding weights.
        tie_word_embeddings: share the input embedding with the LM head.
        pad_token_id, bos_token_id, eos_token_id: the bundled tokenizer's (1, 0, 0) by default.
        attn_layers: the layers that are softmax attention instead of the linear mixer (a hybrid stack): a list
            of layer indices (0-based, each in [0, num_hidden_layers), no duplicates), or an int N meaning every
            N-th layer, i.e. indices N-1, 2N-1, 3N-1, ... (N = 4 with 12 layers: 3, 7, 11). None or []: none.
            An int follows later changes of num_hidden_layers; `attention_layer_indices` gives the resolved list.
        attn_num_heads: query heads of the attention layers (None: num_heads); must divide hidden_size, and the
            head dim hidden_size / attn_num_heads must be even (rotary).
        attn_num_kv_heads: key/value heads (grouped-query attention; None: attn_num_heads); must divide
            attn_num_heads.
        attn_window: sliding-window size in tokens (a token sees itself and the attn_window - 1 real tokens
            before it), or None for full causal attention.
        attn_rope_theta: the base of the attention layers' rotary embedding.
        layer_types: derived (per layer "linear_attention", "full_attention" or "sliding_attention"); not set.

    Example:
        >>> from linattn_models import GLAConfig
        >>> cfg = GLAConfig(hidden_size=512, num_hidden_layers=6, num_heads=4, vocab_size=8192)
        >>> cfg.head_k_dim, cfg.head_v_dim          # derived: 512 * 0.5 / 4, 512 / 4
        (64, 128)
    """

    model_type = "linattn_base"
    # class name prefix of this architecture's classes (LinearTransformer -> LinearTransformerConfig, ...)
    class_prefix = None
    attribute_map = {"num_attention_heads": "num_heads"}

    vocab_size: int = 32000
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_heads: int = 16
    head_k_dim: int | None = None
    head_v_dim: int | None = None
    expand_k: float = 1.0
    expand_v: float = 1.0
    intermediate_size: int | None = None
    hidden_act: str = "silu"
    use_short_conv: bool = False
    conv_size: int = 4
    attn_mode: str = "auto"
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    # defaults: the bundled tokenizer's ids (<|endoftext|> = 0 is BOS and EOS, <|pad|> = 1)
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0
    layer_types: list[str] | None = None
    attn_layers: list[int] | int | None = None
    attn_num_heads: int | None = None
    attn_num_kv_heads: int | None = None
    attn_window: int | None = None
    attn_rope_theta: float = 10000.0

    def __post_init__(self, **kwargs):
        # first: it also sets extra kwargs, among them aliases such as num_attention_heads (-> num_heads)
        super().__post_init__(**kwargs)
        for name in DERIVED_SIZES:
            value = self.__dict__.get(name)
            if value is not None and value == self._derived_size(name, strict=False):
                super().__setattr__(name, None)  # derived: follows later changes of hidden_size / num_heads
        if isinstance(self.attn_layers, tuple):
            super().__setattr__("attn_layers", list(self.attn_layers))
        self.check_sizes()
        given, derived = self.layer_types, self._derived_layer_types()
        if given is None or (set(given) <= set(LAYER_TYPES) and given != derived
                             and (set(given) <= {"linear_attention"} or len(given) != self.num_hidden_layers)):
            # (re)derived: unset, all-linear (a saved config), or of another length (num_hidden_layers overridden)
            super().__setattr__("layer_types", derived)
        elif given != derived:
            raise ValueError(f"layer_types is derived from attn_layers / attn_window ({derived}), got {given}: "
                             f"leave layer_types unset and set attn_layers")
        if self.attn_mode not in ATTN_MODES:
            raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got {self.attn_mode!r}")

    def __getattribute__(self, key):
        value = super().__getattribute__(key)
        if value is None and key in DERIVED_SIZES:
            return self._derived_size(key)
        return value

    def _derived_size(self, name, strict=True):
        """head_k_dim / head_v_dim / intermediate_size / attn_num_heads / attn_num_kv_heads from the current
        fields (strict=False: None when they do not give one)."""
        if name == "attn_num_heads":
            return self.num_heads
        if name == "attn_num_kv_heads":
            return self.attn_num_heads
        hidden_size, num_heads = self.hidden_size, self.num_heads
        if not (_positive_int(hidden_size) and _positive_int(num_heads)):
            if strict:
                self.check_sizes()
            return None
        if name == "intermediate_size":
            # SwiGLU with ~8/3 expansion, rounded up to a multiple of 256
            return 256 * ((int(hidden_size * 8 / 3) + 255) // 256)
        expand = "expand_k" if name == "head_k_dim" else "expand_v"
        width = int(hidden_size * getattr(self, expand))
        if width <= 0 or width % num_heads:
            if strict:
                raise ValueError(f"{name}: hidden_size * {expand} = {width} is not divisible by num_heads = "
                                 f"{num_heads}; set head_k_dim / head_v_dim")
            return None
        return width // num_heads

    def check_sizes(self):
        """ValueError naming the first field that cannot build a model."""
        for name in ("vocab_size", "hidden_size", "num_heads"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not _positive_int(self.num_hidden_layers):
            raise ValueError(f"num_hidden_layers must be an integer >= 1, got {self.num_hidden_layers!r}")
        underived = [n for n in ("head_k_dim", "head_v_dim")  # a derived head dim that does not split evenly
                     if self.__dict__.get(n) is None and self._derived_size(n, strict=False) is None]
        if self.hidden_size % self.num_heads and underived:
            raise ValueError(f"num_heads = {self.num_heads} must divide hidden_size = {self.hidden_size}")
        for name in DERIVED_SIZES:
            value = getattr(self, name)  # a derived one raises here when it does not divide
            if not _positive_int(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        eps = self.rms_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"rms_norm_eps must be a finite number > 0, got {eps!r}")
        self.check_attention()

    def check_attention(self):
        """ValueError naming the first hybrid-attention field that cannot build a model."""
        indices = self.attention_layer_indices  # checks attn_layers
        heads, kv_heads = self.attn_num_heads, self.attn_num_kv_heads
        if heads % kv_heads:
            raise ValueError(f"attn_num_kv_heads = {kv_heads} must divide attn_num_heads = {heads}")
        # the head split of the attention layers matters only where there are some (num_heads, which
        # attn_num_heads follows by default, need not divide hidden_size when the linear head dims are set)
        if indices and self.hidden_size % heads:
            raise ValueError(f"attn_num_heads = {heads} must divide hidden_size = {self.hidden_size}")
        if indices and (self.hidden_size // heads) % 2:
            raise ValueError(f"attn_num_heads = {heads} gives an odd attention head dim {self.hidden_size // heads} "
                             f"(hidden_size / attn_num_heads); rotary needs an even one")
        w = self.attn_window
        if w is not None and not _positive_int(w):
            raise ValueError(f"attn_window must be None (full attention) or a positive integer, got {w!r}")
        theta = self.attn_rope_theta
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not (math.isfinite(theta) and theta > 0):
            raise ValueError(f"attn_rope_theta must be a finite number > 0, got {theta!r}")

    @property
    def attention_layer_indices(self):
        """The sorted indices of the softmax-attention layers (from attn_layers; [] for a pure linear stack)."""
        spec, n = self.attn_layers, self.num_hidden_layers
        if spec is None:
            return []
        if isinstance(spec, bool) or not isinstance(spec, (int, list, tuple)):
            raise ValueError(f"attn_layers must be None, a list of layer indices or an int interval, got {spec!r}")
        if isinstance(spec, int):
            if spec < 1:
                raise ValueError(f"attn_layers as an interval must be >= 1 (every N-th layer), got {spec}")
            return list(range(spec - 1, n, spec))
        for i in spec:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"attn_layers must hold integer layer indices, got {spec!r}")
            if not 0 <= i < n:
                raise ValueError(f"attn_layers: index {i} is out of range for num_hidden_layers = {n} "
                                 f"(indices are 0-based, in [0, {n}))")
        if len(set(spec)) != len(spec):
            dup = sorted({i for i in spec if list(spec).count(i) > 1})
            raise ValueError(f"attn_layers holds duplicate indices {dup}: {list(spec)}")
        return sorted(spec)

    def _derived_layer_types(self):
        kind = "full_attention" if self.attn_window is None else "sliding_attention"
        attn = set(self.attention_layer_indices)
        return [kind if i in attn else "linear_attention" for i in range(self.num_hidden_layers)]

    def validate(self):
        """transformers' checks (also run by save_pretrained) and check_sizes."""
        super().validate()
        self.check_sizes()

    def to_dict(self):
        out = super().to_dict()
        for name in DERIVED_SIZES:  # written out for readers of config.json; read back as derived
            if out.get(name) is None:
                out[name] = self._derived_size(name, strict=False)
        return out

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        out = super().from_dict(config_dict, **kwargs)
        # from_pretrained's kwargs are set after __init__: check the result
        (out[0] if isinstance(out, tuple) else out).check_sizes()
        return out

    def __setattr__(self, key, value):
        if key == "attn_layers" and isinstance(value, tuple):
            value = list(value)
        super().__setattr__(key, value)
        if key in ("num_hidden_layers", "attn_layers", "attn_window"):
            # keep layer_types in step (e.g. overrides after loading); a value that does not resolve is refused
            # by check_sizes (from_pretrained and model construction run it)
            # (not while the dataclass __init__ assigns the fields: attn_rope_theta, declared after the fields
            # above, is assigned last of them; __post_init__ then checks a given layer_types against them)
            layer_types = self.__dict__.get("layer_types")
            if ("attn_rope_theta" in self.__dict__ and layer_types is not None
                    and set(layer_types) <= set(LAYER_TYPES)):
                try:
                    super().__setattr__("layer_types", self._derived_layer_types())
                except (ValueError, TypeError, AttributeError):
                    pass

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' reader, refusing fla checkpoints (same architectures, other parameter names and
        config fields) and other model types than this class's, and saying when a local path does not exist:
        used by our config and model classes' from_pretrained."""
        src = pretrained_model_name_or_path
        check_checkpoint_path(src)
        try:
            config_dict, kwargs = super().get_config_dict(src, **kwargs)
        except OSError as e:
            if isinstance(src, (str, os.PathLike)) and not os.path.exists(src):
                raise OSError(f"{os.fspath(src)} is not a local directory, and loading it as a Hub model id failed "
                              f"({e})") from e
            raise
        model_type = config_dict.get("model_type")
        if model_type in FLA_MODEL_TYPES:
            raise ValueError(fla_checkpoint_message(model_type, src))
        if model_type is not None and cls.class_prefix is not None and model_type != cls.model_type:
            from .. import CONFIGS  # here: models/__init__.py imports this module
            ours = {c.model_type: c for c in CONFIGS.values()}
            hint = (f"it is a {ours[model_type].class_prefix} checkpoint: load it with "
                    f"{ours[model_type].class_prefix}ForCausalLM or AutoModelForCausalLM" if model_type in ours
                    else "it is not a linattn_models checkpoint")
            raise ValueError(f"{src}: config.json has model_type {model_type!r}, but {cls.__name__} expects "
                             f"model_type {cls.model_type!r} ({hint})")
        return config_dict, kwargs

    @classmethod
    def auto_map_classes(cls):
        p = cls.class_prefix
        return {"AutoConfig": f"{p}Config", "AutoModel": f"{p}Model", "AutoModelForCausalLM": f"{p}ForCausalLM",
                "AutoModelForSequenceClassification": f"{p}ForSequenceClassification"}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save config.json with an auto_map to a one-line shim module (written next to it)."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        names = self.auto_map_classes()
        had = "auto_map" in self.__dict__
        previous = getattr(self, "auto_map", None)
        self.auto_map = {auto: f"{SHIM_MODULE}.{name}" for auto, name in names.items()}
        try:
            out = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if had:
                self.auto_map = previous
            else:
                del self.auto_map
        with open(os.path.join(save_directory, f"{SHIM_MODULE}.py"), "w", encoding="utf-8") as f:
            f.write(f"from linattn_models import {', '.join(names.values())}  # noqa: F401\n")
        return out


def check_checkpoint_path(path):
    """FileNotFoundError for a local-looking path that does not exist (absolute, ./ ../ ~, or with more than one
    '/', so not a Hub id 'name' / 'org/name'), instead of transformers' 'Repo id must be in the form ...'."""
    if not isinstance(path, (str, os.PathLike)):
        return
    p = os.fspath(path)
    if isinstance(p, bytes) or os.path.exists(p):
        return
    if os.path.isabs(p) or p.startswith((".", "~")) or p.count("/") > 1 or "\\" in p:
        raise FileNotFoundError(f"{p} does not exist: from_pretrained expects a directory written by "
                                f"save_pretrained (or a Hub model id 'name' / 'org/name')")


def _positive_int(x):
    return isinstance(x, int) and not isinstance(x, bool) and x > 0
