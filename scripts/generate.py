#!/usr/bin/env python3
"""Thin wrapper: same as the console command `linattn-generate` (see linattn_models/cli/generate.py, or --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # works from a checkout without install

from linattn_models.cli.generate import cli  # noqa: E402

if __name__ == "__main__":
    cli()
