"""Who builds the shards in a distributed run, and how the ranks agree on the outcome.

One writer per file system while the other ranks wait: global rank 0 builds first; then each node's
local rank 0 that still cannot see a shard (a node-local cache_dir) builds the same one itself (same
fingerprint, deterministic content) while its node's other ranks wait. A building rank reports every
failure, not only bad data: a rank that raised before the collective would leave the others waiting in
it forever (an OSError such as a full disk, or a bug).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from data_prep.errors import DataError


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if distributed() else 0


def local_rank() -> int:
    """This rank's index on its node, from LOCAL_RANK (torchrun and deepspeed set it). Unset, the global
    rank: with nothing known about nodes, global rank 0 stays the only writer."""
    return int(os.environ.get("LOCAL_RANK", rank()))


def builds(rank: int, local_rank: int, node_pass: bool, manifest_exists: bool) -> bool:
    """Whether this rank builds a shard now: in the first pass global rank 0 if the shard is missing; in
    the node pass (after rank 0 is done) a node's local rank 0 whose file system still lacks it."""
    if manifest_exists:
        return False
    return local_rank == 0 if node_pass else rank == 0


def outcome(error: BaseException | None, rank: int) -> dict | None:
    """What a rank tells the others after a build: None when it succeeded, else who failed and why."""
    if error is None:
        return None
    reason = str(error) if isinstance(error, DataError) else f"{type(error).__name__}: {error}"
    return {"rank": rank, "data_error": isinstance(error, DataError), "reason": reason}


def peer_failure(outcomes: list[dict | None]) -> Exception | None:
    """The error a rank raises for another rank's failed build (the lowest failed rank's), or None.

    Bad data stays a DataError (entry points print it without a traceback); anything else is a RuntimeError."""
    for o in outcomes:
        if o is not None:
            kind = DataError if o["data_error"] else RuntimeError
            return kind(f"data preparation failed on rank {o['rank']}: {o['reason']}")
    return None


# How long the other ranks wait for a build inside a training launch. The process group's own timeout (10
# minutes under DeepSpeed) would end a run whose corpus takes hours to pack; prepare_data.py avoids the wait.
BUILD_WAIT = timedelta(hours=48)


def waiting_group():
    """A gloo group for waiting out one rank's long work, such as builds (None outside a distributed run);
    create it on every rank before that work starts, since creating a group is itself a collective."""
    if not distributed():
        return None
    return torch.distributed.new_group(backend="gloo", timeout=BUILD_WAIT)


def settle(error: BaseException | None, group=None) -> None:
    """After a build, on every rank: all ranks exchange outcomes (over `group`, from `waiting_group`), so each
    one returns only if every build succeeded. A rank whose build failed re-raises its own exception; the
    others raise `peer_failure`."""
    mine = outcome(error, rank())
    outcomes = [mine]
    if distributed():
        outcomes = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(outcomes, mine, group=group)
    if error is not None:
        raise error
    failure = peer_failure(outcomes)
    if failure is not None:
        raise failure
