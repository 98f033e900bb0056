"""Score a model on benchmark suites, recompute a card's aggregates, or plot aggregates over a run.

python launch/eval.py --model HF_DIR --suite control_llm_zh --data-dir D [--limit N] --out results.json
python launch/eval.py scoreboard --card control_llm --scores S.json
python launch/eval.py plot --run DIR [--out PNG]
python launch/eval.py answers --model HF_DIR --questions FILE --out answers.jsonl      (MT-Bench / AlpacaEval)
python launch/eval.py judge --questions FILE --answers A --judge-url URL --judge-model NAME --out J.json
"""

import sys

import _bootstrap  # noqa: F401  (puts the repo root first on sys.path)

from eval_hooks.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
