#!/usr/bin/env python3
"""Convert a flash-linear-attention (fla 0.6.0) checkpoint into ours: same as `python -m linattn_models.convert`.

    python scripts/convert_fla.py SRC_DIR DST_DIR [--dtype bf16]

Exit status 2 (with the message) when the checkpoint holds something we cannot map exactly."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works from a checkout without install

from linattn_models.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
