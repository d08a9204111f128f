"""The one laziness mechanism of the package: names a package exports but imports on first access.

Why: the modeling code imports transformers.modeling_utils, hence torch._dynamo and triton (2-5 s). `import
linattn_models` stays light, registering the Auto classes through stand-ins (models/__init__.py), so a script that
only needs a config or the ops pays none of that, and Triton's interpreter (TRITON_INTERPRET, read once when triton
defines a kernel) can still be switched on after `import linattn_models`.
"""
import importlib


def lazy_exports(package, names, before=None):
    """(__getattr__, __dir__) for a package module: `names` maps an exported name to the module (relative to
    `package`) that defines it, imported on first access; a name mapped to its own submodule (".tokenizer" for
    "tokenizer") gives that submodule. `before`: called once before such an import (the model
    registry puts the real classes into the Auto mappings)."""

    def __getattr__(name):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before is not None:
            before()
        module = importlib.import_module(names[name], package)
        return module if names[name] == "." + name else getattr(module, name)

    def __dir__():
        import sys
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
