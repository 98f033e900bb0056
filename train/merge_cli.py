"""The merge command line (`launch/merge.py`): `--config configs/merge/X.yaml [--set k=v]`, or a flag form
(chat_vector, expo, expansion)."""

import argparse
import logging
import sys
from pathlib import Path

from train.merge import MergeError, load_config, merge


def flags_to_raw(args: argparse.Namespace) -> dict:
    """The config dict a flag-form command stands for."""
    if args.method == "chat_vector":
        vector = {"chat": args.chat, "base": args.base, "ratio": args.ratio}
        return {"method": "chat_vector", "models": {"cpt": args.cpt, "vectors": [vector]}, "output": args.out}
    return {
        "method": "expo",
        "models": {"dpo": args.dpo, "sft": args.sft},
        "alpha": args.alpha,
        "output": args.out,
    }


def fold_expansion(args: argparse.Namespace) -> int:
    """Merge-back of an expanded model (how w is chosen: train/expansion/merge_back.py, docs/merging.md)."""
    from train.expansion import merge_back

    metrics = args.metrics or args.model.parent / "metrics.jsonl"
    try:
        out = merge_back(
            args.model, args.out, args.weight, args.alpha_data, metrics, args.alpha_max_tokens, args.overwrite
        )
        print(out)
    except (ValueError, OSError) as err:  # bad paths and rows: one line, exit 2
        print(f"merge error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="merge YAML (configs/merge/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    sub = parser.add_subparsers(dest="method")
    cv = sub.add_parser("chat_vector", help="cpt + ratio * (chat - base)")
    for flag in ("--cpt", "--chat", "--base", "--out"):
        cv.add_argument(flag, required=True)
    cv.add_argument("--ratio", type=float, default=1.0)
    ex = sub.add_parser("expo", help="dpo + alpha * (dpo - sft)")
    for flag in ("--dpo", "--sft", "--out"):
        ex.add_argument(flag, required=True)
    ex.add_argument("--alpha", type=float, default=0.3)
    fold = sub.add_parser(
        "expansion", help="fold Control-LLM pairs into a plain Llama: (1-w) W_pre + w W_exp"
    )
    fold.add_argument("--model", required=True, type=Path, help="an exported Control-LLM folder")
    fold.add_argument("--out", required=True, type=Path)
    fold.add_argument(
        "--weight", type=float, help="w for every pair (default: lerp's sigmoid(theta) per pair)"
    )
    fold.add_argument(
        "--alpha-data",
        type=Path,
        help="dlerp/dlerpin: JSONL rows with 'text'; w per pair = mean alpha over their tokens (the reference)",
    )
    fold.add_argument("--alpha-max-tokens", type=int, default=2048, help="tokens kept per --alpha-data row")
    fold.add_argument(
        "--metrics",
        type=Path,
        help="dlerp/dlerpin without --alpha-data: alphas logged (mean over the logged record's steps) at the export's "
        "step in this metrics.jsonl (default: <model>/../metrics.jsonl)",
    )
    fold.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    # expansion has no merge config, so no --set: argparse refuses it rather than ignoring it.
    for p in (cv, ex):
        p.add_argument("--set", dest="sub_set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if (args.config is None) == (args.method is None):
        parser.error("give either --config or a method subcommand (chat_vector, expo, expansion)")
    if args.method == "expansion" and args.set:
        parser.error("--set does not apply to expansion (it has no merge config); use its flags")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.method == "expansion":
        return fold_expansion(args)
    try:
        source = args.config or flags_to_raw(args)
        print(merge(load_config(source, args.set + getattr(args, "sub_set", []))))
    except MergeError as err:
        print(f"merge error: {err}", file=sys.stderr)
        return 2
    return 0
