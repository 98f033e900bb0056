"""Export a checkpoint to a Hugging Face folder: `python launch/export.py --checkpoint DIR --out HF_DIR`.

`python launch/export.py released --model DIR --out HF_DIR` converts a released Control-LLM folder (the
reference code's config.json) to ours: same weights, our config.json and modeling files.
"""

import argparse
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (puts the repo root first on sys.path)


def released(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="export.py released", description="released Control-LLM folder -> ours")
    p.add_argument("--model", required=True, type=Path, help="a folder with the reference's config.json")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--base-model", help="base hub id (default: expansion.expanded_from)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    from train.expansion.released import ReleasedFormatError, convert_released

    try:
        out = convert_released(args.model, args.out, args.base_model, overwrite=args.overwrite)
    except (ReleasedFormatError, OSError, ValueError) as e:  # ValueError: a config.json that is not JSON
        print(f"continualm: error: {e}", file=sys.stderr)
        return 2
    print(f"converted {args.model} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["released"]:
        return released(argv[1:])
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="a step-XXXXXXXX folder, or a run (its latest)"
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        help="LoRA: also write the merged full model (default: the run's peft.merge_on_export)",
    )
    args = p.parse_args(argv)

    from train.checkpoint import export_hf, latest_complete
    from train.errors import USER_ERRORS, UserError

    try:
        root = (
            args.checkpoint / "checkpoints" if (args.checkpoint / "checkpoints").is_dir() else args.checkpoint
        )
        ckpt = latest_complete(root) if root.name == "checkpoints" else root
        if ckpt is None:
            raise UserError(f"no complete checkpoint in {args.checkpoint}")
        print(f"exported {ckpt} to {export_hf(ckpt, args.out, args.overwrite, args.merge)}")
    except USER_ERRORS as e:
        print(f"continualm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
