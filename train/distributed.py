"""Process-group set-up and the few collectives the loop needs (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

from data_prep.writers import waiting_group


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# Rank 0 alone may work for long while the others wait: fsyncing a checkpoint to slow storage, the final
# export of a 70B model. The process group's own timeout (10 minutes under DeepSpeed) would end the run, so
# they wait on the group data preparation waits out its builds on.
_LONG_WAIT = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init() -> None:
    """Join the process group set up by deepspeed / torchrun, or make a world of one for `python`."""
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # plain `python launch/train.py`
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not torch.cuda.is_available():
        # DeepSpeed would compile its shared-memory allreduce op (~45 s) on first use; gloo is enough on CPU.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    global _LONG_WAIT
    if dist.get_world_size() > 1:  # made now, on every rank: creating a group is itself a collective
        _LONG_WAIT = waiting_group()


def wait_for_main() -> None:
    """A barrier without the process group's timeout, for waiting out rank 0's long work."""
    if _LONG_WAIT is not None:
        dist.barrier(group=_LONG_WAIT)
    else:
        barrier()


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    if dist.get_backend() == "nccl" and t.device.type == "cpu":  # nccl reduces device tensors only
        on_device = t.to(device())
        dist.all_reduce(on_device, op=op)
        return t.copy_(on_device)
    dist.all_reduce(t, op=op)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (CPU tensors too, whatever the backend)."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Max over ranks, in place (CPU tensors too, whatever the backend)."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown(clean: bool = True) -> None:
    """Leave the process group: after a clean run in step with the peers (a rank that exits while peers still
    talk to it can abort them); after an error at once, since the peers may be anywhere else (a barrier would
    hang them both) and the launcher stops them when this rank exits with its error."""
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
