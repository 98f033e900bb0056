"""Score a model on benchmark suites, recompute a card's aggregates, or plot aggregates over a run.

python launch/eval.py --model HF_DIR --suite control_llm_zh --data-dir D [--limit N] --out results.json
python launch/eval.py scoreboard --card control_llm --scores S.json
python launch/eval.py plot --run DIR [--out PNG]
"""

import argparse
import sys
from pathlib import Path

# launch/ is first on sys.path when a script here runs; make the repo's packages win.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command = argv[0] if argv and argv[0] in ("scoreboard", "plot") else "run"
    if command == "scoreboard":
        parser.add_argument("--card", required=True)
        parser.add_argument("--scores", required=True, help="{column: score} or a results JSON of this tool")
    elif command == "plot":
        parser.add_argument("--run", required=True)
        parser.add_argument("--out")
    else:
        parser.add_argument("--model", required=True, help="Hugging Face model folder")
        parser.add_argument("--suite", required=True, action="append", help="suite or task (repeatable)")
        parser.add_argument("--data-dir", required=True)
        parser.add_argument("--out", required=True)
        parser.add_argument("--limit", type=int)
        parser.add_argument("--batch-size", type=int, default=8)
        parser.add_argument("--max-gen-tokens", type=int)
    args = parser.parse_args(argv[1:] if command != "run" else argv)

    if command == "scoreboard":
        from eval_hooks import scoreboard

        board = scoreboard.score(args.card, scoreboard.load_columns(args.card, args.scores))
        print(scoreboard.to_json(board))
        print(scoreboard.markdown_table(args.card, {Path(args.scores).stem: board}))
    elif command == "plot":
        from eval_hooks.plot import plot

        print(plot(args.run, args.out))
    else:
        from eval_hooks.runner import evaluate_hf_dir

        evaluate_hf_dir(
            args.model, args.suite, args.data_dir, args.out, args.limit, args.batch_size, args.max_gen_tokens
        )


if __name__ == "__main__":
    main(sys.argv[1:])
