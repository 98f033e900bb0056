"""How the ranks of a distributed run agree on the outcome of building the shards.

The building rank reports every failure, not only bad data: a rank that raised before the collective
would leave the others waiting in it forever (an OSError such as a full disk, or a bug).
"""

from __future__ import annotations

import torch

from data_prep.errors import DataError


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if distributed() else 0


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


def settle(error: BaseException | None) -> None:
    """After a build, on every rank: all ranks exchange outcomes, so each one returns only if every build
    succeeded. A rank whose build failed re-raises its own exception; the others raise `peer_failure`."""
    mine = outcome(error, rank())
    outcomes = [mine]
    if distributed():
        outcomes = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(outcomes, mine)
    if error is not None:
        raise error
    failure = peer_failure(outcomes)
    if failure is not None:
        raise failure
