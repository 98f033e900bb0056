"""Test helper run under torchrun: one recipe child three times in one process (uninterrupted; stopped
by SIGTERM to rank 0 after step 2; resumed with `--resume auto`), so an exact-resume check costs one
launch. Outputs go to OUT/uninterrupted and OUT/resumed."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.config import load_config  # noqa: E402
from train.loop import setup_logging, train  # noqa: E402

config, out, cache = sys.argv[1:4]
setup_logging()


def run(name: str, resume: str | None = None) -> None:
    overrides = [f"output_dir={out}/{name}", f"data.cache_dir={cache}", "train.max_steps=4"]
    train(load_config(config, overrides), resume=resume)


run("uninterrupted")
os.environ["CONTINUALM_FAULT"] = "sigterm@2:0"
run("resumed")
del os.environ["CONTINUALM_FAULT"]
run("resumed", resume="auto")
