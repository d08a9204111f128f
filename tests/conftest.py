"""Import the package from this checkout's src/, whatever copy pip installed in editable mode.

Without a GPU, switch Triton's interpreter on before anything imports triton: Triton reads TRITON_INTERPRET
once (transformers/torch may import triton early), and kernels defined before that run compiled, which fails
on CPU. The ops still default to the torch backend on CPU; tests opt into backend="triton".
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
