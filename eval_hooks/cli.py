"""The eval command line (`launch/eval.py`): score a model on benchmark suites, recompute a card's aggregates,
plot aggregates over a run, write chat answers or judge them.

python launch/eval.py --model HF_DIR --suite control_llm_zh --data-dir D [--limit N] --out results.json
python launch/eval.py scoreboard --card control_llm --scores S.json
python launch/eval.py plot --run DIR [--out PNG]
python launch/eval.py answers --model HF_DIR --questions FILE --out answers.jsonl      (MT-Bench / AlpacaEval)
python launch/eval.py judge --questions FILE --answers A --judge-url URL --judge-model NAME --out J.json
"""

import argparse
import sys
from pathlib import Path

import train.expansion  # noqa: F401  (registers controlllm_llama, so Control-LLM exports load)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command = argv[0] if argv and argv[0] in ("scoreboard", "plot", "answers", "judge") else "run"
    if command == "scoreboard":
        parser.add_argument("--card", required=True)
        parser.add_argument("--scores", required=True, help="{column: score} or a results JSON of this tool")
    elif command == "plot":
        parser.add_argument("--run", required=True)
        parser.add_argument("--out")
    elif command == "answers":
        parser.add_argument("--model", required=True, help="Hugging Face model folder")
        parser.add_argument(
            "--questions", required=True, help="MT-Bench (turns) or AlpacaEval (instruction) file"
        )
        parser.add_argument("--out", required=True)
        parser.add_argument("--max-new-tokens", type=positive_int, default=1024)
        parser.add_argument(
            "--model-id", default="", help="name written into the answers (default: folder name)"
        )
    elif command == "judge":
        parser.add_argument("--questions", required=True)
        parser.add_argument("--answers", required=True)
        parser.add_argument(
            "--judge-url", required=True, help="OpenAI-compatible base URL, e.g. https://host/v1"
        )
        parser.add_argument("--judge-model", required=True)
        parser.add_argument("--reference", help="AlpacaEval: reference answers to compare against")
        parser.add_argument(
            "--api-key-env", default="OPENAI_API_KEY", help="environment variable with the key"
        )
        parser.add_argument("--out", required=True)
    else:
        parser.add_argument("--model", required=True, help="Hugging Face model folder")
        parser.add_argument("--suite", required=True, action="append", help="suite or task (repeatable)")
        parser.add_argument("--data-dir", required=True)
        parser.add_argument("--out", required=True)
        parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
        parser.add_argument("--limit", type=positive_int)
        parser.add_argument("--batch-size", type=positive_int, default=8)
        parser.add_argument("--max-gen-tokens", type=positive_int)
    args = parser.parse_args(argv[1:] if command != "run" else argv)
    from train.errors import USER_ERRORS

    one_line = (*USER_ERRORS, OSError, KeyError, ValueError)  # bad paths, names, files: one line, exit 2
    if command == "run":
        from eval_hooks.lockstep import OutOfStep, PeerFailed

        one_line = (*one_line, PeerFailed, OutOfStep)  # the rank that failed prints the cause
    try:
        run(command, args)
    except one_line as e:
        print(f"continualm: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    return 0


def run(command: str, args: argparse.Namespace) -> None:
    if command == "scoreboard":
        from eval_hooks import scoreboard

        board = scoreboard.load_board(args.card, args.scores)
        print(scoreboard.to_json(board))
        print(scoreboard.markdown_table(args.card, {Path(args.scores).stem: board}))
    elif command == "plot":
        from eval_hooks.plot import plot

        print(plot(args.run, args.out))
    elif command == "answers":
        from eval_hooks.answers import answers_for_hf_dir

        print(answers_for_hf_dir(args.model, args.questions, args.out, args.max_new_tokens, args.model_id))
    elif command == "judge":
        import json

        from eval_hooks.answers import judge

        verdict = judge(
            args.questions, args.answers, args.judge_url, args.judge_model, args.reference, args.api_key_env
        )
        Path(args.out).write_text(json.dumps(verdict, indent=2, ensure_ascii=False), encoding="utf-8")
        print({k: v for k, v in verdict.items() if k != "judgments"})
    else:
        from eval_hooks.runner import evaluate_hf_dir

        out = Path(args.out)
        if out.is_dir():  # checked before the model loads and the suites run, not after
            raise ValueError(f"--out {out} is a folder; give a file name such as {out}/results.json")
        if out.exists() and not args.overwrite:
            raise ValueError(f"--out {out} exists; pass --overwrite to replace it, or choose another file")

        evaluate_hf_dir(
            args.model, args.suite, args.data_dir, args.out, args.limit, args.batch_size, args.max_gen_tokens
        )
