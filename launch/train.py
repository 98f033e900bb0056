"""Train from a recipe: `deepspeed launch/train.py --config C [--set k=v ...] [--dry-run] [--resume auto]`.

Also runs under `torchrun` and as a plain `python launch/train.py` (one rank).
"""

import argparse
import sys

import _bootstrap  # noqa: F401  (puts the repo root first on sys.path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="recipe YAML (may `extends:` another)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument(
        "--dry-run", action="store_true", help="print config, parameter counts, DeepSpeed JSON; exit"
    )
    p.add_argument("--resume", metavar="auto|DIR", help="'auto': the last complete checkpoint in output_dir")
    p.add_argument("--allow-config-change", action="store_true", help="resume although training keys changed")
    p.add_argument(
        "--allow-data-change",
        action="store_true",
        help="resume although the prepared data differs from the checkpoint's",
    )
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args = p.parse_args()

    from train.config import load_config
    from train.errors import USER_ERRORS

    try:
        cfg = load_config(args.config, args.set)  # before torch / DeepSpeed load, so typos fail in a second
        from train.loop import dry_run, setup_logging, train

        setup_logging()
        if args.dry_run:
            print(dry_run(cfg))
            return 0
        train(cfg, args.resume, args.allow_config_change, args.allow_data_change)
    except USER_ERRORS as e:
        print(f"continualm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    if "train.distributed" in sys.modules:  # leave the process group before exiting (else a rank can abort)
        sys.modules["train.distributed"].shutdown(clean=code == 0)
    sys.exit(code)
