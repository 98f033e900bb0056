"""Test helper run under torchrun (2 ranks): check_shared_output_dir with a shared output_dir, with one
folder per rank (node-local disks, as two nodes see one path), and with ranks that would resume from different
checkpoints. Writes ROOT/rank<r>.txt, one line per case: the case, then "ok" or the refusal (files, not
stdout, where two ranks' lines could interleave)."""

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
results = []
for name, (out, folder) in cases.items():
    try:
        check_shared_output_dir(SimpleNamespace(output_dir=str(out)), folder)
        results.append(f"{name} rank {rank}: ok")
    except UserError as e:
        results.append(f"{name} rank {rank}: {e}")
    leftovers = [p.name for p in out.glob(".shared-check-*")]
    assert not leftovers or rank != 0, leftovers
(root / f"rank{rank}.txt").write_text("\n".join(results) + "\n")
dist.shutdown()
