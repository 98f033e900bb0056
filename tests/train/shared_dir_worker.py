"""Test helper run under torchrun (2 ranks): check_shared_output_dir with a shared output_dir, with one
folder per rank (node-local disks, as two nodes see one path), and with ranks that would resume from different
checkpoints. Prints one line per case and rank: the case, then "ok" or the refusal."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train import distributed as dist  # noqa: E402
from train.checkpoint import check_shared_output_dir  # noqa: E402
from train.errors import UserError  # noqa: E402

root = Path(sys.argv[1])
dist.init()
rank = dist.rank()
cases = {
    "shared": (root / "shared", None),
    "local": (root / f"node{rank}", None),
    "diverging": (root / "shared", root / f"step-{rank}"),
}
for name, (out, folder) in cases.items():
    try:
        check_shared_output_dir(SimpleNamespace(output_dir=str(out)), folder)
        print(f"{name} rank {rank}: ok", flush=True)
    except UserError as e:
        print(f"{name} rank {rank}: {e}", flush=True)
    leftovers = [p.name for p in out.glob(".shared-check-*")]
    assert not leftovers or rank != 0, leftovers
dist.shutdown()
