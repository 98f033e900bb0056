"""Tokenize and pack a recipe's data into cached shards: `python launch/prepare_data.py --config C`.

Run once before training (e.g. on one node of a shared file system); training then reuses the
shards, and rebuilds only a source whose fingerprint (data, adapter, tokenizer, template, packing) changed.
"""

import argparse
import json
import sys

import _bootstrap  # noqa: F401  (puts the repo root first on sys.path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="recipe YAML (may `extends:` another)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = p.parse_args()

    from data_prep.shards import prepare
    from train.config import load_config
    from train.errors import USER_ERRORS
    from train.loop import setup_logging
    from train.model import build_tokenizer

    try:
        cfg = load_config(args.config, args.set)
        setup_logging()
        data = prepare(cfg.data, build_tokenizer(cfg.model))
    except USER_ERRORS as e:
        print(f"continualm: error: {e}", file=sys.stderr)
        return 2
    for label, shard in zip(data.source_labels, data.shards, strict=True):
        print(json.dumps({"source": label, "folder": str(shard.folder), "rows": shard.manifest["rows"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
