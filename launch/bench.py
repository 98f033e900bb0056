"""Benchmarks: `python launch/bench.py MODE [options]`; `python launch/bench.py MODE --help` for a mode's options.

Modes: data (tokenize + pack throughput against a datasets.map baseline), train (training throughput and MFU
against the HF Trainer + DeepSpeed peer), eval (questions/s and generated tokens/s of the in-training eval
hook). Results go to docs/BENCHMARKS.md with the command, date and machine.
"""

import importlib
import sys

import _bootstrap  # noqa: F401  (puts the repo root first on sys.path)

MODES = {"data": "data_prep.benchmark", "train": "train.benchmark", "eval": "train.eval_benchmark"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(f"usage: launch/bench.py {{{','.join(MODES)}}} [options]\n\n{__doc__}", file=sys.stderr)
        return 2
    return importlib.import_module(MODES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
