"""Export a checkpoint to a Hugging Face folder: `python launch/export.py --checkpoint DIR --out HF_DIR`."""

import argparse
import sys
from pathlib import Path

import _bootstrap  # noqa: F401  (puts the repo root first on sys.path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="a step-XXXXXXXX folder, or a run's checkpoints/"
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()

    from train.checkpoint import export_hf, latest_complete
    from train.errors import USER_ERRORS

    try:
        ckpt = latest_complete(args.checkpoint) if args.checkpoint.name == "checkpoints" else args.checkpoint
        print(f"exported {ckpt} to {export_hf(ckpt, args.out, overwrite=args.overwrite)}")
    except USER_ERRORS as e:
        print(f"continualm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
