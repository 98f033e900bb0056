"""Test-only fault injection, so kill/resume tests stop a run at an exact point.

CONTINUALM_FAULT='<point>@<step>' or '<point>@<step>:<rank>' makes the matching rank(s) send
themselves a signal at that point: `sigkill` / `sigterm` after the step, `kill_in_save` (SIGKILL)
after the checkpoint shards are written but before the checkpoint is made visible; `user_error` raises a
UserError after the step instead (an error only some ranks see, as a node-local file can cause).
"""

from __future__ import annotations

import os
import signal

SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "kill_in_save": signal.SIGKILL}


def maybe_fault(point: str, step: int, rank: int) -> None:
    spec = os.environ.get("CONTINUALM_FAULT")
    if not spec:
        return
    where, _, only_rank = spec.partition(":")
    name, _, at = where.partition("@")
    if name == point and int(at) == step and (not only_rank or int(only_rank) == rank):
        if name == "user_error":
            from train.errors import UserError

            raise UserError(f"injected user_error at step {step} on rank {rank}")
        os.kill(os.getpid(), SIGNALS[name])
