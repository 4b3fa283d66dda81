#!/usr/bin/env python
"""Seed-compatible entry point: `python training/train_sac.py --config F [--resume CKPT] [--set k=v]`.

A thin wrapper over `dynsac train`; everything it does is in the `dynsac` package.
"""

import argparse
import sys
from pathlib import Path

try:
    import dynsac  # noqa: F401
except ImportError:  # running from a source checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dynsac.cli import add_train_arguments, run_guarded, run_train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train SAC with a dynamics map (wrapper over `dynsac train`).")
    add_train_arguments(parser)
    arguments = parser.parse_args()
    sys.exit(run_guarded(lambda: run_train(arguments)))
