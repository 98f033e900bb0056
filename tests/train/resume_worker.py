"""Test helper run under torchrun: the real entry point (launch/train.py) three times in one process, so an
exact-resume check of a recipe costs one launch: uninterrupted to OUT/uninterrupted; stopped by SIGTERM to
rank 0 after step 2, then `--resume auto`, in OUT/resumed. Arguments after CONFIG OUT CACHE are `--set`
overrides for all three runs."""

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "launch"))  # for launch/train.py's `import _bootstrap`
config, out, cache = sys.argv[1:4]
overrides = [a for item in sys.argv[4:] for a in ("--set", item)]


def run(name: str, *extra: str) -> None:
    sys.argv = ["launch/train.py", "--config", config, "--set", f"output_dir={out}/{name}"]
    sys.argv += ["--set", f"data.cache_dir={cache}", "--set", "train.max_steps=4", *overrides, *extra]
    code = runpy.run_path(str(ROOT / "launch/train.py"))["main"]()
    if code:
        raise SystemExit(code)


run("uninterrupted")
os.environ["CONTINUALM_FAULT"] = "sigterm@2:0"
run("resumed")
del os.environ["CONTINUALM_FAULT"]
run("resumed", "--resume", "auto")

from train.distributed import shutdown  # noqa: E402  (launch/train.py's bootstrap has set sys.path by now)

shutdown()
