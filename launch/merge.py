"""Merge models by weight arithmetic: `merge.py --config configs/merge/X.yaml [--set k=v]` or a flag form."""

import sys

import _bootstrap  # noqa: F401  (puts the repo root first on sys.path)

from train.merge_cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
